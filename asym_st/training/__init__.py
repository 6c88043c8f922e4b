"""Training: method pipelines (QED, EmbedDistill, DAFT, TAS-Balanced) as thin compositions of losses, samplers and data."""

from asym_st.training.collapse import CollapseCallback, CollapseDetector, CollapseDiagnostics, embedding_diagnostics
from asym_st.training.daft import DAFTResult, train_daft
from asym_st.training.daft_config import DAFTConfig
from asym_st.training.embed_distill import EmbedDistillResult, embed_distill
from asym_st.training.embed_distill_config import EmbedDistillConfig
from asym_st.training.qed import QEDResult, distill_query_tower
from asym_st.training.qed_config import ConfigError, QEDConfig
from asym_st.training.tas_balanced import TASBalancedResult, tas_balanced
from asym_st.training.tas_balanced_config import TASBalancedConfig
from asym_st.training.trainer_setup import load_eval_dataset

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
    "TASBalancedConfig",
    "TASBalancedResult",
    "distill_query_tower",
    "embed_distill",
    "embedding_diagnostics",
    "load_eval_dataset",
    "tas_balanced",
    "train_daft",
]
