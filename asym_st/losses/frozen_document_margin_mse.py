"""Dual-teacher Margin-MSE (TAS-Balanced) for a query tower served against a frozen, pre-encoded document index."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.base.losses.merged_forward import embed_columns
from torch import Tensor, nn

from asym_st.losses.dual_teacher_margin_mse import DualTeacherMarginMSELoss, inbatch_margin_mse
from asym_st.modeling.towers import QUERY_ROUTE, is_asymmetric

__all__ = ["FrozenDocumentMarginMSELoss", "LABEL_FIELDS"]

#: What each of the 4 label values of a row is.
LABEL_FIELDS = ("margin", "query_index", "positive_index", "negative_index")


class FrozenDocumentMarginMSELoss(nn.Module):
    def __init__(
        self,
        model: SentenceTransformer,
        document_embeddings: np.ndarray | Tensor,
        teacher_query_embeddings: np.ndarray | Tensor | None = None,
        teacher_document_embeddings: np.ndarray | Tensor | None = None,
        alpha: float = 0.75,
    ) -> None:
        """
        TAS-Balanced's dual supervision, ``L = L_pair + alpha * L_inbatch``, when only the **query tower** trains and
        the document tower is frozen, so that every passage embedding is the index's own and can be read from the
        embedding cache instead of being re-encoded at every step. Same objective as
        :class:`~asym_st.losses.DualTeacherMarginMSELoss` with a frozen document tower, without its passage forward
        passes, which dominate a step when the query tower has 2 layers and the passages are 10× longer than the
        queries. The passages' embeddings are also exactly the deployed index's (no dropout, full length).

        - ``L_pair``: Margin-MSE (Hofstätter et al., 2020) of the student's margin ``q·p+ - q·p-`` against the
          pairwise teacher's margin (the label).
        - ``L_inbatch``: Margin-MSE over the in-batch negatives (every passage of the other rows) against a second
          teacher whose query and passage embeddings are given (``teacher_query_embeddings`` and
          ``teacher_document_embeddings``, precomputed; scored by dot product, so pass normalised embeddings for a
          cosine teacher). Without ``teacher_query_embeddings`` the term is off (plain Margin-MSE).

        Scores are dot products, as in sentence-transformers' ``MarginMSELoss`` (the student's query tower and the
        index are normalised for cosine models, where dot equals cosine). Sentence-transformers' ``MarginMSELoss``
        cannot be reused as is here because it encodes the passage columns; the in-batch term is the same function
        as :class:`~asym_st.losses.DualTeacherMarginMSELoss`'s.

        Args:
            model: the student (an asymmetric model: set ``router_mapping={"query": "query"}``).
            document_embeddings: ``num_documents × dim``, the frozen document tower's embeddings of the passages
                that the labels index.
            teacher_query_embeddings: ``num_queries × dim_t``, the in-batch teacher's embeddings of the queries
                that the labels index; ``None`` turns ``L_inbatch`` off.
            teacher_document_embeddings: ``num_documents × dim_t``, the in-batch teacher's passage embeddings
                (default: ``document_embeddings``, i.e. the in-batch teacher is the document tower's model).
            alpha: weight of ``L_inbatch`` (the paper: 0.75).

        References:
            - Hofstätter et al., "Efficiently Teaching an Effective Dense Retriever with Balanced Topic Aware
              Sampling", SIGIR 2021: https://arxiv.org/abs/2104.06967

        Requirements:
            1. a frozen document tower whose embeddings of the training passages are known (the index)
            2. one ``query`` text column; batches of several rows for the in-batch term

        Inputs:
            +-------+--------------------------------------------------------------------------------------------+
            | Texts | Labels                                                                                     |
            +=======+============================================================================================+
            | query | ``[margin, query_index, positive_index, negative_index]`` per row (see ``LABEL_FIELDS``) |
            +-------+--------------------------------------------------------------------------------------------+

        The indices are row numbers into ``teacher_query_embeddings`` and ``document_embeddings``; store the label
        column as float64 so that they stay exact.

        Example:
            ::

                from datasets import Dataset
                from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments

                from asym_st.data.cache import EmbeddingCache
                from asym_st.losses.frozen_document_margin_mse import FrozenDocumentMarginMSELoss

                cache = EmbeddingCache()
                documents = cache.encode(teacher, passages, route="document")  # the index
                teacher_queries = cache.encode(teacher, queries, route="query")
                train = Dataset.from_dict({
                    "query": [queries[0], queries[1]],
                    "label": [[0.12, 0, 3, 7], [0.05, 1, 4, 9]],  # margin, query, positive, negative rows
                })
                loss = FrozenDocumentMarginMSELoss(student, documents, teacher_queries, alpha=0.75)
                args = SentenceTransformerTrainingArguments("out", router_mapping={"query": "query"})
                SentenceTransformerTrainer(model=student, args=args, train_dataset=train, loss=loss).train()
        """
        super().__init__()
        if alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {alpha}.")
        self.model = model
        self.alpha = alpha
        documents = _as_matrix(document_embeddings, "document_embeddings")
        # Buffers move with the loss's device but are not saved with the model (persistent=False).
        self.register_buffer("documents", documents, persistent=False)
        self.register_buffer("teacher_queries", None, persistent=False)
        self.register_buffer("teacher_documents", None, persistent=False)
        if teacher_query_embeddings is not None:
            teacher_queries = _as_matrix(teacher_query_embeddings, "teacher_query_embeddings")
            teacher_documents = (
                documents
                if teacher_document_embeddings is None
                else _as_matrix(teacher_document_embeddings, "teacher_document_embeddings")
            )
            if teacher_documents.shape[0] != documents.shape[0]:
                raise ValueError(
                    f"teacher_document_embeddings has {teacher_documents.shape[0]} rows but document_embeddings "
                    f"{documents.shape[0]}: both must list the same passages in the same order."
                )
            if teacher_queries.shape[1] != teacher_documents.shape[1]:
                raise ValueError(
                    f"The in-batch teacher's query embeddings are {teacher_queries.shape[1]}-dimensional but its "
                    f"passage embeddings {teacher_documents.shape[1]}-dimensional."
                )
            self.teacher_queries, self.teacher_documents = teacher_queries, teacher_documents

    def forward(self, sentence_features: Iterable[dict[str, Tensor]], labels: Tensor) -> dict[str, Tensor]:
        sentence_features = list(sentence_features)
        if len(sentence_features) != 1:
            raise ValueError(
                f"FrozenDocumentMarginMSELoss takes one text column (the query), got {len(sentence_features)}: "
                "passages come from document_embeddings, indexed by the label."
            )
        if is_asymmetric(self.model) and sentence_features[0].get("task") != QUERY_ROUTE:
            raise ValueError("Route the query column to the 'query' tower: router_mapping={'query': 'query'}.")
        margins, query_rows, positive_rows, negative_rows = self._unpack(labels)
        queries = embed_columns(self.model, sentence_features)[0]
        documents = self.documents.to(queries)
        positives, negatives = documents[positive_rows], documents[negative_rows]
        student_margins = (queries * positives).sum(-1) - (queries * negatives).sum(-1)
        losses = {"pair_margin_mse": nn.functional.mse_loss(student_margins, margins.to(queries))}
        if self.teacher_queries is not None and self.alpha > 0:
            losses["inbatch_margin_mse"] = self.alpha * self._inbatch(queries, query_rows, positive_rows, negative_rows)
        return losses

    def _unpack(self, labels: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        if labels.ndim != 2 or labels.shape[1] != len(LABEL_FIELDS):
            raise ValueError(f"Labels must be batch × 4 ({', '.join(LABEL_FIELDS)}), got shape {tuple(labels.shape)}.")
        rows = labels[:, 1:].round().long()
        limits = (
            len(self.teacher_queries) if self.teacher_queries is not None else None,
            len(self.documents),
            len(self.documents),
        )
        for column, (name, limit) in enumerate(zip(LABEL_FIELDS[1:], limits, strict=True)):
            values = rows[:, column]
            if values.min() < 0 or (limit is not None and values.max() >= limit):
                raise IndexError(f"Label {name} {values.max().item()} is outside 0..{limit - 1 if limit else '∞'}.")
        return labels[:, 0], rows[:, 0], rows[:, 1], rows[:, 2]

    def _inbatch(self, queries: Tensor, query_rows: Tensor, positive_rows: Tensor, negative_rows: Tensor) -> Tensor:
        if queries.shape[0] < 2:
            return queries.sum() * 0.0  # no in-batch negatives; keeps the graph connected
        passage_rows = torch.cat([positive_rows, negative_rows])  # passage j belongs to row j % batch
        student_scores = queries @ self.documents.to(queries)[passage_rows].T
        with torch.no_grad():
            teacher_queries = self.teacher_queries.to(queries)[query_rows]
            teacher_scores = teacher_queries @ self.teacher_documents.to(queries)[passage_rows].T
        return inbatch_margin_mse(student_scores, teacher_scores)

    def get_config_dict(self) -> dict[str, Any]:
        return {
            "alpha": self.alpha,
            "similarity_fct": "dot",
            "inbatch_teacher": self.teacher_queries is not None,
            "num_documents": int(self.documents.shape[0]),
        }

    @property
    def citation(self) -> str:
        return DualTeacherMarginMSELoss.citation.fget(self)  # type: ignore[attr-defined]


def _as_matrix(values: np.ndarray | Tensor, name: str) -> Tensor:
    matrix = torch.as_tensor(np.asarray(values, dtype=np.float32) if not torch.is_tensor(values) else values)
    if matrix.ndim != 2 or matrix.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty num_rows × dim matrix, got shape {tuple(matrix.shape)}.")
    return matrix.float()
