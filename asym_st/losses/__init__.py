"""Losses, one per file, in sentence-transformers style (paper reference, columns, example in each docstring)."""

from asym_st.losses.dual_teacher_margin_mse import DualTeacherMarginMSELoss
from asym_st.losses.embed_distill import AsymmetricEmbedDistillLoss, ProjectionShapeError
from asym_st.losses.frozen_document_margin_mse import FrozenDocumentMarginMSELoss
from asym_st.losses.md2pr_sentence import MD2PRSentenceLoss
from asym_st.losses.token_interaction import TokenInteractionLoss

__all__ = [
    "AsymmetricEmbedDistillLoss",
    "DualTeacherMarginMSELoss",
    "FrozenDocumentMarginMSELoss",
    "MD2PRSentenceLoss",
    "ProjectionShapeError",
    "TokenInteractionLoss",
]
