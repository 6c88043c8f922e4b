"""Training: method pipelines (QED, DAFT stages, ...) as thin compositions of losses, samplers and data."""
