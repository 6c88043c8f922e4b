"""Training: method pipelines (QED, DAFT stages, ...) as thin compositions of losses, samplers and data."""

from asym_st.training.collapse import CollapseCallback, CollapseDetector, CollapseDiagnostics, embedding_diagnostics
from asym_st.training.daft import DAFTResult, train_daft
from asym_st.training.daft_config import DAFTConfig
from asym_st.training.embed_distill import EmbedDistillResult, embed_distill
from asym_st.training.embed_distill_config import EmbedDistillConfig
from asym_st.training.qed import QEDResult, distill_query_tower, load_eval_dataset
from asym_st.training.qed_config import ConfigError, QEDConfig

__all__ = [
    "CollapseCallback",
    "CollapseDetector",
    "CollapseDiagnostics",
    "ConfigError",
    "DAFTConfig",
    "DAFTResult",
    "EmbedDistillConfig",
    "EmbedDistillResult",
    "QEDConfig",
    "QEDResult",
    "distill_query_tower",
    "embed_distill",
    "embedding_diagnostics",
    "load_eval_dataset",
    "train_daft",
]
