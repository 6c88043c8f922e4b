"""MD2PR's sentence-level distillation: KL between the teacher's and the student's softmax over a query's candidates,
with candidates masked out (empty slots, false negatives)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.base.losses.merged_forward import merge_feature_batches
from sentence_transformers.sentence_transformer.losses import DistillKLDivLoss
from sentence_transformers.sentence_transformer.losses.distill_kl_div import check_teacher_targets
from sentence_transformers.util import pairwise_dot_score
from torch import Tensor

from asym_st.modeling.towers import DOCUMENT_ROUTE, QUERY_ROUTE, is_asymmetric, tower_modules

__all__ = ["MD2PRSentenceLoss", "CandidateFilter", "document_tower_frozen", "forward_columns"]

#: ``(positive_scores [batch], negative_scores [batch × n]) -> keep mask [batch × n]``, e.g. a
#: :class:`~asym_st.sampling.false_negatives.DynamicFalseNegativeFilter`.
CandidateFilter = Callable[[Tensor, Tensor], Tensor]


class MD2PRSentenceLoss(DistillKLDivLoss):
    def __init__(
        self,
        model: SentenceTransformer,
        similarity_fct: Callable[[Tensor, Tensor], Tensor] = pairwise_dot_score,
        temperature: float = 1.0,
        student_temperature: float | None = None,
        teacher_temperature: float | None = None,
        weight: float = 1.0,
        candidate_filter: CandidateFilter | None = None,
        frozen_documents: bool | None = None,
    ) -> None:
        """
        MD2PR's sentence-level distillation (Li et al., 2023): for each query, the KL divergence between the
        teacher's (a cross-encoder's) softmax over the query's candidates (its positive and mined negatives) and the
        student's softmax over the same candidates, with temperatures:

        ``L_sent = τ_s² / B · Σ_b Σ_{j ∈ K_b} p_t(j) · (log p_t(j) - log p_s(j))``, where
        ``p_t = softmax_{j ∈ K_b}(t_bj / τ_t)`` (``t``: the teacher's scores, the labels),
        ``p_s = softmax_{j ∈ K_b}(s(q_b, c_bj) / τ_s)`` (``s``: ``similarity_fct`` of the student's embeddings) and
        ``K_b`` the row's kept candidates.

        This is sentence-transformers' :class:`~sentence_transformers.sentence_transformer.losses.DistillKLDivLoss`
        (same temperatures, ``τ_s²`` scaling, batch-mean reduction and teacher-scale check; its computation is called
        as is when nothing is masked). What this class adds, and why:

        1. **a candidate mask** ``K_b``: a non-finite label marks an empty slot (a query with fewer mined negatives
           than columns), and ``candidate_filter`` (MD2PR's dynamic false-negative filter,
           :class:`~asym_st.sampling.false_negatives.DynamicFalseNegativeFilter`) drops negatives the teacher scores
           like positives. Masked candidates leave both softmaxes; ``DistillKLDivLoss`` has no mask, and a
           ``-inf`` teacher score alone would still leave the candidate in the student's softmax. The positive
           (first candidate) is never dropped.
        2. **frozen document tower**: when the student's document tower has no trainable parameter (the index stays
           valid), the candidate columns are embedded under ``torch.no_grad()`` with that tower in eval mode (no
           dropout: the embeddings are the frozen teacher's), in one merged forward pass.
        3. **a weight and a named term**: it returns ``{"sentence_kl": weight · L_sent}``, so that the Trainer logs
           the term next to MD2PR's word-level term
           (:class:`~asym_st.losses.token_interaction.TokenInteractionLoss`).

        Args:
            model: the student (asymmetric: route the query column to ``query``, candidates to ``document``).
            similarity_fct: the student's pairwise score (default dot product = cosine for normalised towers).
            temperature: ``τ`` of both sides (``DistillKLDivLoss``'s).
            student_temperature: ``τ_s`` override. The loss is scaled by ``τ_s²``: a small one (e.g. 0.05, to let a
                cosine student express sharp distributions) shrinks the loss by as much.
            teacher_temperature: ``τ_t`` override. At the optimum ``s / τ_s = t / τ_t`` (+ a constant per row), so
                only the ratio matters for what is learnt: with a cosine student in [-1, 1] and cross-encoder logits
                spanning ~10 units, ``τ_s = 1, τ_t = 20`` fits cosine gaps of half the logit gaps at full loss scale.
            weight: multiplies the loss (MD2PR's sentence-level weight).
            candidate_filter: ``(positive_scores, negative_scores) -> keep mask`` applied to every batch.
            frozen_documents: embed the candidates without gradients; ``None`` detects it (an asymmetric model whose
                document tower has no trainable parameter).

        References:
            - Li, Hai and Tang, "MD2PR: A Multi-level Distillation based Dense Passage Retrieval Model", 2023:
              https://arxiv.org/abs/2312.16821
            - Lin, Yang and Lin, "Distilling Dense Representations for Ranking using Tightly-Coupled Teachers"
              (``DistillKLDivLoss``): https://arxiv.org/abs/2010.11386

        Requirements:
            1. (query, positive, negative_1, ..., negative_n) rows, n >= 1
            2. the teacher's scores of every candidate as the label (non-finite: an empty slot)

        Inputs:
            +------------------------------------------------+-------------------------------------------------------+
            | Texts                                          | Labels                                                |
            +================================================+=======================================================+
            | (query, positive, negative_1, ..., negative_n) | [T(query, positive), T(query, negative_i), ...]       |
            +------------------------------------------------+-------------------------------------------------------+

        Example:
            ::

                from datasets import Dataset
                from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments

                from asym_st.losses import MD2PRSentenceLoss
                from asym_st.sampling import DynamicFalseNegativeFilter, FalseNegativeFilterConfig

                train = Dataset.from_dict({
                    "query": ["what is the capital of france?"],
                    "positive": ["Paris is the capital of France."],
                    "negative_1": ["Lyon is a city in France."],
                    "negative_2": ["Paris, the capital of France, ..."],  # a false negative
                    "label": [[8.1, 1.2, 7.9]],  # cross-encoder logits
                })
                keep = DynamicFalseNegativeFilter(FalseNegativeFilterConfig(quantile=0.5), positive_scores=[8.1])
                loss = MD2PRSentenceLoss(student, teacher_temperature=20.0, candidate_filter=keep)
                args = SentenceTransformerTrainingArguments(
                    "out", router_mapping={"query": "query", "positive": "document", "negative_1": "document",
                                           "negative_2": "document"},
                )
                SentenceTransformerTrainer(model=student, args=args, train_dataset=train, loss=loss).train()
        """
        super().__init__(
            model,
            similarity_fct=similarity_fct,
            temperature=temperature,
            student_temperature=student_temperature,
            teacher_temperature=teacher_temperature,
        )
        if weight < 0:
            raise ValueError(f"weight must be >= 0, got {weight}.")
        self.weight = weight
        self.candidate_filter = candidate_filter
        self.frozen_documents = document_tower_frozen(model) if frozen_documents is None else frozen_documents

    def forward(self, sentence_features: Iterable[dict[str, Tensor]], labels: Tensor) -> dict[str, Tensor]:
        outputs = forward_columns(self.model, sentence_features, self.frozen_documents)
        return self.loss_from_embeddings([output["sentence_embedding"] for output in outputs], labels)

    def loss_from_embeddings(self, embeddings: list[Tensor], labels: Tensor) -> dict[str, Tensor]:
        """``{"sentence_kl": weight · L_sent}`` from the query and candidate embeddings (``batch × n`` labels)."""
        labels = labels.to(embeddings[0].dtype)
        mask = self.candidate_mask(labels)
        if bool(mask.all()):
            value = self.compute_loss_from_embeddings(embeddings, labels)  # DistillKLDivLoss's, unchanged
        else:
            value = self._masked_loss(embeddings, labels, mask)
        return {"sentence_kl": self.weight * value}

    def candidate_mask(self, labels: Tensor) -> Tensor:
        """``batch × n`` booleans: finite teacher score, and not dropped by ``candidate_filter`` (positive kept)."""
        if labels.ndim != 2 or labels.shape[1] < 2:
            raise ValueError(f"Labels must be batch × candidates (positive first), got shape {tuple(labels.shape)}.")
        if not bool(torch.isfinite(labels[:, 0]).all()):
            raise ValueError("Every row needs a finite teacher score for its positive (the first candidate).")
        mask = torch.isfinite(labels)
        if self.candidate_filter is not None:
            keep = torch.as_tensor(self.candidate_filter(labels[:, 0].detach(), labels[:, 1:].detach()))
            mask[:, 1:] &= keep.to(device=mask.device, dtype=torch.bool)
        return mask

    def _masked_loss(self, embeddings: list[Tensor], labels: Tensor, mask: Tensor) -> Tensor:
        queries = embeddings[0]
        if labels.shape != (queries.shape[0], len(embeddings) - 1):
            raise ValueError(
                f"{type(self).__name__} expects teacher scores of shape (batch_size, N) = "
                f"({queries.shape[0]}, {len(embeddings) - 1}), got {tuple(labels.shape)}."
            )
        student = torch.stack([self.similarity_fct(queries, other) for other in embeddings[1:]], dim=1)
        student_log_probs = torch.log_softmax((student / self.student_temperature).masked_fill(~mask, -torch.inf), 1)
        teacher_logits = (labels.detach() / self.teacher_temperature).masked_fill(~mask, -torch.inf)
        teacher_probs = torch.softmax(teacher_logits, dim=1)
        full_rows = mask.all(dim=1)
        if not self._checked_teacher_scale and bool(full_rows.any()):  # masked zeros are not underflow: skip them
            self._checked_teacher_scale = True
            check_teacher_targets(
                teacher_probs[full_rows], labels[full_rows], self.teacher_temperature, type(self).__name__
            )
        # Masked entries have p_t = 0 and contribute nothing; zero their logs so that no 0 · ∞ appears.
        log_ratio = torch.log(teacher_probs).masked_fill(~mask, 0.0) - student_log_probs.masked_fill(~mask, 0.0)
        loss = (teacher_probs * log_ratio).sum() / queries.shape[0]  # KLDivLoss(reduction="batchmean")
        return loss * (self.student_temperature**2)

    def get_config_dict(self) -> dict[str, Any]:
        return {
            **super().get_config_dict(),
            "weight": self.weight,
            "false_negative_filter": self.candidate_filter is not None,
            "frozen_documents": self.frozen_documents,
        }

    @property
    def citation(self) -> str:
        return MD2PR_CITATION


MD2PR_CITATION = """
@misc{li2023md2pr,
    title={MD2PR: A Multi-level Distillation based Dense Passage Retrieval Model},
    author={Haifeng Li and Mo Hai and Dong Tang},
    year={2023},
    eprint={2312.16821},
    archivePrefix={arXiv},
    primaryClass={cs.IR},
}
"""


# ----------------------------------------------------------------------------------------------- shared forward


def document_tower_frozen(model: SentenceTransformer) -> bool:
    """True for an asymmetric model whose document tower has no trainable parameter."""
    if not is_asymmetric(model):
        return False
    return not any(p.requires_grad for module in tower_modules(model, DOCUMENT_ROUTE) for p in module.parameters())


@contextmanager
def _frozen_document_tower(model: SentenceTransformer) -> Iterator[None]:
    """No gradients, and the document tower in eval mode (restored afterwards: the Trainer sets train mode)."""
    modules = [m for module in tower_modules(model, DOCUMENT_ROUTE) for m in module.modules()]
    states = [(m, m.training) for m in modules]
    for m in modules:
        m.train(False)
    try:
        with torch.no_grad():
            yield
    finally:
        for m, training in states:
            m.train(training)


def _split_merged(output: dict[str, Any], columns: int) -> list[dict[str, Any]]:
    rows = output["sentence_embedding"].shape[0]
    if rows % columns:
        raise ValueError(f"A merged forward of {columns} columns returned {rows} rows.")
    size = rows // columns
    pieces: list[dict[str, Any]] = [{} for _ in range(columns)]
    for key, value in output.items():
        for index, piece in enumerate(pieces):
            is_rows = isinstance(value, Tensor) and value.ndim >= 1 and value.shape[0] == rows
            piece[key] = value[index * size : (index + 1) * size] if is_rows else value
    return pieces


def forward_columns(
    model: SentenceTransformer, sentence_features: Iterable[dict[str, Any]], frozen_documents: bool = False
) -> list[dict[str, Any]]:
    """The student's forward outputs (``sentence_embedding``, ``token_embeddings``, ``attention_mask``,
    ``input_ids``) of the query column and of every candidate column.

    The query column runs alone (with gradients); the candidate columns run in one merged forward pass when they
    preprocess alike (as sentence-transformers' ``embed_columns`` does), without gradients and with the document
    tower in eval mode when ``frozen_documents``.
    """
    features = list(sentence_features)
    if len(features) < 2:
        raise ValueError(f"Expected a query column and at least one candidate column, got {len(features)} column(s).")
    if is_asymmetric(model) and features[0].get("task") != QUERY_ROUTE:
        raise ValueError(
            "The student is asymmetric but the query column is not routed to its 'query' tower. Set "
            "router_mapping={'query': 'query', 'positive': 'document', 'negative_1': 'document', ...} (your column "
            "names) in the training arguments."
        )
    outputs = [model(features[0])]
    candidates = features[1:]
    with ExitStack() as stack:
        if frozen_documents:
            stack.enter_context(_frozen_document_tower(model))
        merged = merge_feature_batches(candidates) if len(candidates) > 1 else None
        if merged is None:
            outputs += [model(column) for column in candidates]
        else:
            outputs += _split_merged(model(merged), len(candidates))
    return outputs
