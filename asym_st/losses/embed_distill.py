"""EmbedDistill: embedding matching (queries, optionally documents) plus score matching, in one weighted loss."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Literal

import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.base.losses.merged_forward import embed_columns
from sentence_transformers.sentence_transformer.losses import DistillKLDivLoss, EmbedDistillLoss, MarginMSELoss
from sentence_transformers.sentence_transformer.modules import Dense
from sentence_transformers.util import SimilarityFunction, similarity_fct_name
from torch import Tensor, nn

from asym_st.losses.embedding_alignment import RouteMappingError
from asym_st.modeling.towers import DOCUMENT_ROUTE, QUERY_ROUTE, is_asymmetric

__all__ = ["AsymmetricEmbedDistillLoss", "ProjectionShapeError"]

SCORE_LOSSES = ("kl", "margin_mse")


class ProjectionShapeError(ValueError):
    """Student, projection and teacher widths that do not line up; the message names all three."""


class AsymmetricEmbedDistillLoss(EmbedDistillLoss):
    def __init__(
        self,
        model: SentenceTransformer,
        query_weight: float = 1.0,
        document_weight: float = 0.0,
        score_weight: float = 1.0,
        score_loss: Literal["kl", "margin_mse"] = "kl",
        distance_metric: Literal["l2", "mse", "cosine"] = "l2",
        projection_dim: int | None = None,
        temperature: float = 0.05,
        similarity_fct: Callable[[Tensor, Tensor], Tensor] | None = None,
    ) -> None:
        """
        EmbedDistill (Kim et al., 2023) for asymmetric students:
        ``L = query_weight · L_query + document_weight · L_document + score_weight · L_score``.

        - ``L_query``: embedding matching of queries, ``dist(P(student(q)), teacher(q))``; ``dist`` is L2 (the
          paper), MSE (QED) or cosine distance, and ``P`` an optional learned projection (identity by default).
        - ``L_document``: embedding matching of documents, ``dist(P(student(d)), teacher(d))``, for students whose
          document tower trains. With the default asymmetric student the document tower *is* the frozen teacher,
          so this term is zero by construction and is left out.
        - ``L_score``: score matching over each query's candidate documents: the student's scores ``s(q, d_k)``
          against the teacher's ``t(q, d_k)``, as a KL divergence of the softmax distributions at ``temperature``
          (``"kl"``, the paper's choice) or as Margin-MSE relative to the first candidate (``"margin_mse"``).

        Which student embeddings the scores use:

        - **frozen teacher document tower** (no document columns): the candidates are the teacher's document
          embeddings from the label, which *are* the student's document embeddings (the document tower is the
          teacher), so no passage is encoded during training. The student query is projected first (``P``), since
          it must live in the teacher's space to search the teacher's index;
        - **trained document tower** (document columns given): ``s(student(q), student(d_k))`` in the student's
          own space, the scores it will retrieve with.

        The three terms are returned as a dict, which the sentence-transformers Trainer sums into the loss and logs
        separately (``query_embedding``, ``document_embedding``, ``score``; each already weighted).

        What is added to sentence-transformers' losses, and why:

        - :class:`~sentence_transformers.sentence_transformer.losses.EmbedDistillLoss` (this class's parent) gives
          the distances, the projection and its save/load; it matches embeddings only. Here score matching is
          added, the embedding terms of queries and documents get separate weights, and score matching can use
          the *label's* teacher document embeddings instead of encoding passages, which is what makes an
          asymmetric student with a frozen document tower cheap to train.
        - The score terms are sentence-transformers'
          :class:`~sentence_transformers.sentence_transformer.losses.DistillKLDivLoss` and
          :class:`~sentence_transformers.sentence_transformer.losses.MarginMSELoss`, called on embeddings, with
          the teacher's scores computed from the label's embeddings with the same similarity function.
          ``DistillKLDivLoss`` multiplies by ``temperature²`` (Hinton et al.'s factor for temperatures above 1);
          with cosine scores and ``temperature=0.05`` that would shrink the term 400×, so it is divided back out
          and ``score_weight`` means the same at every temperature.
        - Checks that asymmetric training needs: queries must reach the ``query`` route and documents the
          ``document`` route (:class:`~asym_st.losses.embedding_alignment.RouteMappingError` otherwise), and
          every width mismatch between student, projection and teacher raises a :class:`ProjectionShapeError`
          naming the three widths instead of a matrix-multiplication error.
        - :meth:`projection_module` turns the learned projection into a ``Dense`` module, to append to the query
          tower: with a frozen teacher document tower, the projected query is the one that searches the index.

        Args:
            model: the student (an asymmetric model from :func:`asym_st.build_asymmetric_model`, or any
                ``SentenceTransformer``).
            query_weight: weight of ``L_query``.
            document_weight: weight of ``L_document`` (needs document columns).
            score_weight: weight of ``L_score`` (needs candidate embeddings in the label, at least 2 candidates).
            score_loss: ``"kl"`` or ``"margin_mse"``.
            distance_metric: ``"l2"`` (EmbedDistill), ``"mse"`` (QED) or ``"cosine"``. MSE is a mean over
                coordinates, i.e. the squared L2 distance divided by the width (1/384 of it for MiniLM): next to a
                score term, prefer L2 (or raise ``query_weight``), or the embedding term carries almost no weight.
            projection_dim: the teacher's width, for a learnable ``Linear(student_dim, projection_dim)``.
            temperature: softmax temperature of the KL score matching (teacher and student alike). For cosine
                scores in [-1, 1], ``0.05`` gives distributions as peaked as the in-batch softmax of
                ``MultipleNegativesRankingLoss``'s default scale 20.
            similarity_fct: pairwise score function; default: the model's ``similarity_fn_name`` (cosine for
                most sentence-transformers models).

        References:
            - Kim et al., 2023. EmbedDistill: A Geometric Knowledge Distillation for Information Retrieval.
              https://arxiv.org/abs/2301.12005
            - Wang & Lyu, 2023. Query Encoder Distillation via Embedding Alignment (QED): the ``query_weight``-only
              setting with the MSE distance. https://arxiv.org/abs/2306.11550

        Requirements:
            1. precomputed teacher embeddings as the label: the query's, then those of its ``K`` candidate
               documents (e.g. the teacher's top-``K`` for the query, from the cached corpus embeddings);
            2. for an asymmetric student: ``router_mapping={"query": "query"}`` (plus ``"document_i": "document"``
               for document columns) in the training arguments.

        Inputs:
            +------------------------------------------+---------------------------------------------------------+
            | Texts                                    | Labels                                                  |
            +==========================================+=========================================================+
            | query                                    | teacher query embeddings ``(batch, dim)``               |
            |                                          | (query embedding matching only)                         |
            +------------------------------------------+---------------------------------------------------------+
            | query                                    | ``(batch, 1 + K, dim)``: teacher query embedding, then  |
            |                                          | the teacher embeddings of the K candidates              |
            +------------------------------------------+---------------------------------------------------------+
            | query, document_1, ..., document_K       | ``(batch, 1 + K, dim)`` as above; the documents are the |
            |                                          | candidates' texts (trained document tower)              |
            +------------------------------------------+---------------------------------------------------------+

        Relations:
            - ``score_weight=0, distance_metric="mse"`` is :class:`~asym_st.losses.EmbeddingAlignmentLoss` (QED).
            - With a cross-encoder teacher's scores and no embedding matching, use
              :class:`~asym_st.losses.DualTeacherMarginMSELoss`.

        Example:
            ::

                import numpy as np
                from datasets import Dataset
                from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
                from asym_st import build_asymmetric_model, extract_tower
                from asym_st.losses import AsymmetricEmbedDistillLoss

                model = build_asymmetric_model("sentence-transformers/all-MiniLM-L6-v2")  # query layers [0, 5]
                teacher = extract_tower(model, "document")
                corpus = ["Paris is the capital of France.", "Ribosomes make proteins.", "Dogs are mammals."]
                queries = ["capital of france", "how are proteins made"]
                docs, q = teacher.encode_document(corpus), teacher.encode_query(queries)
                top = np.argsort(-(q @ docs.T), axis=1)[:, :2]  # each query's 2 best candidates
                labels = np.concatenate([q[:, None], docs[top]], axis=1)  # (2, 1 + 2, 384)
                train = Dataset.from_dict({"query": queries, "label": labels.tolist()})
                args = SentenceTransformerTrainingArguments("out", router_mapping={"query": "query"})
                loss = AsymmetricEmbedDistillLoss(model, query_weight=1.0, score_weight=1.0)
                SentenceTransformerTrainer(model, args, train_dataset=train, loss=loss).train()
        """
        super().__init__(model, distance_metric=distance_metric, projection_dim=projection_dim)
        for name, value in (("query_weight", query_weight), ("document_weight", document_weight)):
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}.")
        if score_weight < 0:
            raise ValueError(f"score_weight must be >= 0, got {score_weight}.")
        if query_weight == document_weight == score_weight == 0:
            raise ValueError("All weights are 0: set query_weight, document_weight or score_weight.")
        if score_loss not in SCORE_LOSSES:
            raise ValueError(f"score_loss={score_loss!r}; choose one of {', '.join(SCORE_LOSSES)}.")
        if not 0 < temperature < float("inf"):
            raise ValueError(f"temperature must be a positive finite number, got {temperature}.")
        self.query_weight = query_weight
        self.document_weight = document_weight
        self.score_weight = score_weight
        self.score_loss = score_loss
        self.temperature = temperature
        self.similarity_fct = similarity_fct or SimilarityFunction.to_similarity_pairwise_fn(
            str(model.similarity_fn_name or "cosine")
        )
        if score_loss == "kl":
            self.score_fct = DistillKLDivLoss(model, similarity_fct=self.similarity_fct, temperature=temperature)
        else:
            self.score_fct = MarginMSELoss(model, similarity_fct=self.similarity_fct)

    # ------------------------------------------------------------------------------------------- forward

    def forward(self, sentence_features: Iterable[dict[str, Tensor]], labels: Tensor | None) -> dict[str, Tensor]:
        sentence_features = list(sentence_features)
        if labels is None:
            raise ValueError(
                "AsymmetricEmbedDistillLoss needs the teacher's embeddings as labels: (batch, dim) or "
                "(batch, 1 + K, dim) with K candidate documents."
            )
        self._check_routes(sentence_features)
        embeddings = embed_columns(self.model, sentence_features)
        return self.compute_components(embeddings, labels)

    def compute_components(self, embeddings: list[Tensor], labels: Tensor) -> dict[str, Tensor]:
        """The weighted loss terms from student embeddings (query first, then documents) and teacher labels.

        Args:
            embeddings: ``[query (batch, student_dim)]`` or ``[query, document_1, ..., document_K]``.
            labels: teacher embeddings, ``(batch, dim)`` or ``(batch, 1 + K, dim)`` (see the class docstring).

        Returns:
            ``{"query_embedding": ..., "document_embedding": ..., "score": ...}`` for the terms whose weight is
            positive, each multiplied by its weight.
        """
        labels = labels.detach()
        teacher_query, teacher_documents = self._split_labels(labels, len(embeddings) - 1)
        queries, documents = embeddings[0], embeddings[1:]
        for position, embedding in enumerate(embeddings):
            self._check_widths(embedding, labels.shape[-1], "query" if position == 0 else f"document {position}")
        losses: dict[str, Tensor] = {}
        if self.query_weight > 0:
            losses["query_embedding"] = self.query_weight * self.compute_loss_from_embeddings(
                [queries], [teacher_query]
            )
        if self.document_weight > 0:
            losses["document_embedding"] = self.document_weight * self.compute_loss_from_embeddings(
                documents, [teacher_documents[:, k] for k in range(len(documents))]
            )
        if self.score_weight > 0:
            losses["score"] = self.score_weight * self._score_loss(queries, documents, teacher_query, teacher_documents)
        return losses

    def _split_labels(self, labels: Tensor, num_documents: int) -> tuple[Tensor, Tensor | None]:
        if labels.dim() == 2:
            if num_documents or self.document_weight > 0 or self.score_weight > 0:
                raise ValueError(
                    f"Labels of shape {tuple(labels.shape)} hold the teacher's query embeddings only, but "
                    f"{self._terms_needing_candidates()} needs the candidates' embeddings too: pass labels of "
                    "shape (batch, 1 + K, dim) (teacher query embedding, then K candidate document embeddings)."
                )
            return labels, None
        if labels.dim() != 3:
            raise ValueError(f"Expected labels (batch, dim) or (batch, 1 + K, dim); got shape {tuple(labels.shape)}.")
        num_candidates = labels.shape[1] - 1
        if num_documents and num_documents != num_candidates:
            raise ValueError(
                f"{num_documents} document column(s) but labels hold {num_candidates} candidate embedding(s) "
                f"(shape {tuple(labels.shape)}); give one document column per candidate, in the label's order."
            )
        if self.document_weight > 0 and not num_documents:
            raise ValueError(
                "document_weight > 0 needs the candidates' texts as document columns (the student's document "
                "tower must embed them); with a frozen teacher document tower set document_weight=0."
            )
        if self.score_weight > 0 and num_candidates < 2:
            raise ValueError(
                f"Score matching needs at least 2 candidates per query (a softmax or margin over one candidate is "
                f"constant); labels hold {num_candidates}."
            )
        return labels[:, 0], labels[:, 1:]

    def _terms_needing_candidates(self) -> str:
        terms = [name for name, weight in (("score", self.score_weight), ("document", self.document_weight)) if weight]
        return " and ".join(f"{term} matching" for term in terms) or "a document column"

    def _score_loss(
        self, queries: Tensor, documents: list[Tensor], teacher_query: Tensor, teacher_documents: Tensor
    ) -> Tensor:
        num_candidates = teacher_documents.shape[1]
        teacher_candidates = [teacher_documents[:, k] for k in range(num_candidates)]
        teacher_scores = torch.stack(
            [self.similarity_fct(teacher_query, candidate) for candidate in teacher_candidates], dim=1
        )
        if documents:  # a student document tower: score in the student's own space, as it will retrieve
            student = [queries, *documents]
        else:  # the frozen teacher document tower: the candidates are the teacher's embeddings, used as they are
            projected = self.projection(queries) if self.projection is not None else queries
            student = [projected, *(c.to(projected) for c in teacher_candidates)]
        loss = self.score_fct.compute_loss_from_embeddings(student, teacher_scores.to(queries))
        if self.score_loss == "kl":
            loss = loss / self.temperature**2  # undo DistillKLDivLoss's T² factor (see the class docstring)
        return loss

    # ------------------------------------------------------------------------------------------- checks

    def _check_routes(self, sentence_features: list[dict[str, Any]]) -> None:
        if not is_asymmetric(self.model):
            return
        for position, features in enumerate(sentence_features):
            expected = QUERY_ROUTE if position == 0 else DOCUMENT_ROUTE
            if features.get("task") != expected:
                raise RouteMappingError(
                    f"Text column {position} was encoded with route {features.get('task')!r}, but EmbedDistill "
                    f"expects the {expected!r} route there (the first column is the query, the others documents). "
                    "Set router_mapping={'query': 'query', 'document_1': 'document', ...} (your column names) in "
                    "SentenceTransformerTrainingArguments."
                )

    def _check_widths(self, student: Tensor, teacher_width: int, what: str) -> None:
        student_width = student.shape[-1]
        if self.projection is not None:
            if student_width != self.projection.in_features or self.projection.out_features != teacher_width:
                raise ProjectionShapeError(
                    f"The projection maps {self.projection.in_features} → {self.projection.out_features} dimensions, "
                    f"but the student's {what} embeddings are {student_width}-dimensional and the teacher's "
                    f"{teacher_width}-dimensional. Set projection_dim={teacher_width} for a student of width "
                    f"{student_width}."
                )
        elif student_width != teacher_width:
            raise ProjectionShapeError(
                f"The student's {what} embeddings are {student_width}-dimensional but the teacher's are "
                f"{teacher_width}-dimensional; set projection_dim={teacher_width} (a learned projection), or add a "
                "Dense projection to the student's tower."
            )

    # ------------------------------------------------------------------------------------------- export

    def projection_module(self) -> Dense:
        """The learned projection as a sentence-transformers ``Dense`` module (no activation), to append to the
        query tower, e.g. ``assemble_asymmetric_model([*tower_modules(model, "query"), loss.projection_module()],
        tower_modules(model, "document"))``. Without it, a student trained against a frozen teacher document tower
        through the projection would search the index with unprojected queries."""
        if self.projection is None:
            raise ValueError("No projection to export: the loss was built without projection_dim.")
        weight, bias = self.projection.weight.detach().cpu().clone(), self.projection.bias.detach().cpu().clone()
        return Dense(
            self.projection.in_features,
            self.projection.out_features,
            activation_function=nn.Identity(),
            init_weight=weight,
            init_bias=bias,
        )

    def get_config_dict(self) -> dict[str, Any]:
        return {
            **super().get_config_dict(),
            "query_weight": self.query_weight,
            "document_weight": self.document_weight,
            "score_weight": self.score_weight,
            "score_loss": self.score_loss,
            "temperature": self.temperature,
            "similarity_fct": similarity_fct_name(self.similarity_fct),
        }
