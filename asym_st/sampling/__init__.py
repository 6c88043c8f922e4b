"""Batch samplers and pair selection (topic-aware, balanced margin, false-negative filter)."""
