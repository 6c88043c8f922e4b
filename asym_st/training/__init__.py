"""Training: method pipelines (QED, EmbedDistill, DAFT, TAS-Balanced, MD2PR) composed of losses, samplers, data."""

from asym_st.training.collapse import CollapseCallback, CollapseDetector, CollapseDiagnostics, embedding_diagnostics
from asym_st.training.cross_encoder_teacher import (
    CrossEncoderTeacherConfig,
    CrossEncoderTeacherResult,
    RerankResult,
    rerank_evaluation,
    train_cross_encoder,
)
from asym_st.training.daft import DAFTResult, train_daft
from asym_st.training.daft_config import DAFTConfig
from asym_st.training.embed_distill import EmbedDistillResult, embed_distill
from asym_st.training.embed_distill_config import EmbedDistillConfig
from asym_st.training.md2pr import MD2PRResult, md2pr
from asym_st.training.md2pr_config import MD2PRConfig
from asym_st.training.qed import QEDResult, distill_query_tower
from asym_st.training.qed_config import ConfigError, QEDConfig
from asym_st.training.tas_balanced import TASBalancedResult, tas_balanced
from asym_st.training.tas_balanced_config import TASBalancedConfig
from asym_st.training.teacher_signal import TeacherSignal, teacher_signal
from asym_st.training.trainer_setup import load_eval_dataset

__all__ = [
    "CollapseCallback",
    "CollapseDetector",
    "CollapseDiagnostics",
    "ConfigError",
    "CrossEncoderTeacherConfig",
    "CrossEncoderTeacherResult",
    "DAFTConfig",
    "DAFTResult",
    "EmbedDistillConfig",
    "EmbedDistillResult",
    "MD2PRConfig",
    "MD2PRResult",
    "QEDConfig",
    "QEDResult",
    "RerankResult",
    "TASBalancedConfig",
    "TASBalancedResult",
    "TeacherSignal",
    "distill_query_tower",
    "embed_distill",
    "embedding_diagnostics",
    "load_eval_dataset",
    "md2pr",
    "rerank_evaluation",
    "tas_balanced",
    "teacher_signal",
    "train_cross_encoder",
    "train_daft",
]
