"""Embedding alignment: the query tower's embedding of a query should be the teacher's embedding of it."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.losses import EmbedDistillLoss
from torch import Tensor

__all__ = ["EmbeddingAlignmentLoss", "RouteMappingError"]


class RouteMappingError(ValueError):
    """A text column reached the loss through the wrong route (usually: ``router_mapping`` is missing)."""


class EmbeddingAlignmentLoss(EmbedDistillLoss):
    def __init__(
        self,
        model: SentenceTransformer,
        distance_metric: Literal["mse", "l2", "cosine"] = "mse",
        projection_dim: int | None = None,
        expected_route: str | None = "query",
    ) -> None:
        """Aligns the student's query embeddings with precomputed teacher query embeddings.

        This is QED's objective: the query tower (the teacher truncated to a few layers) is trained on unlabelled
        queries so that ``student(q) ≈ teacher(q)``, while the document tower, the teacher itself, stays frozen
        and the existing document index stays valid. EmbedDistill's embedding-matching term is the same loss
        with the L2 or cosine distance.

        It is sentence-transformers' :class:`~sentence_transformers.sentence_transformer.losses.EmbedDistillLoss`
        (which already computes MSE / L2 / cosine and an optional projection) plus two checks that
        asymmetric training needs and that a silent failure would hide:

        * every text column must arrive through ``expected_route``. A column mapped to the document route
          (``router_mapping={"query": "document"}``, easy to get wrong when reusing a contrastive config) would
          train the frozen document tower, i.e. run and change nothing; this is refused;
        * the teacher embeddings must have the student's width (or the projection's); the error names both.

        Args:
            model: the asymmetric student (a ``SentenceTransformer`` whose Router has a ``query`` route).
            distance_metric: ``"mse"`` (QED, default), ``"l2"`` (EmbedDistill) or ``"cosine"``.
            projection_dim: a learnable linear map from the student's width to the teacher's (different widths).
            expected_route: the route every column must take; ``None`` disables the check (symmetric students).

        References:
            - Wang & Lyu, 2023. Query Encoder Distillation via Embedding Alignment is a Strong Baseline Method to
              Boost Dense Retriever Online Efficiency. SustaiNLP @ ACL. https://arxiv.org/abs/2306.11550
            - Kim et al., 2023. EmbedDistill: A Geometric Knowledge Distillation for Information Retrieval.
              https://arxiv.org/abs/2301.12005

        Inputs:
            +---------------+--------------------------------------------------------------+
            | Texts         | Labels                                                       |
            +===============+==============================================================+
            | query         | teacher query embeddings ``(batch_size, teacher_dim)``       |
            +---------------+--------------------------------------------------------------+

        Example:
            ::

                from datasets import Dataset
                from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
                from asym_st import build_asymmetric_model, extract_tower
                from asym_st.losses import EmbeddingAlignmentLoss

                model = build_asymmetric_model("sentence-transformers/all-MiniLM-L6-v2")  # query layers [0, 5]
                teacher = extract_tower(model, "document")
                queries = ["what is a dense retriever", "capital of france"]
                train = Dataset.from_dict({"query": queries, "label": teacher.encode_query(queries).tolist()})
                args = SentenceTransformerTrainingArguments("out", router_mapping={"query": "query"}, learning_rate=1e-4)
                trainer = SentenceTransformerTrainer(model, args, train_dataset=train, loss=EmbeddingAlignmentLoss(model))
                trainer.train()
        """
        super().__init__(model, distance_metric=distance_metric, projection_dim=projection_dim)
        self.expected_route = expected_route

    def forward(self, sentence_features: Iterable[dict[str, Tensor]], labels: Tensor | None) -> Tensor:
        sentence_features = list(sentence_features)
        if self.expected_route is not None:
            for position, features in enumerate(sentence_features):
                route = features.get("task")
                if route != self.expected_route:
                    raise RouteMappingError(
                        f"Text column {position} was encoded with route {route!r}, but the alignment loss trains the "
                        f"{self.expected_route!r} route. Set router_mapping={{'<column>': '{self.expected_route}'}} "
                        "in SentenceTransformerTrainingArguments."
                    )
        if labels is not None:
            self._check_width(labels)
        return super().forward(sentence_features, labels)

    def _check_width(self, labels: Tensor) -> None:
        width = self.projection_dim or self.model.get_embedding_dimension()
        if width is not None and labels.shape[-1] != width:
            raise ValueError(
                f"Teacher embeddings are {labels.shape[-1]}-dimensional but the student produces {width}; "
                "use the teacher that built the targets, or set projection_dim to the teacher's width."
            )

    @property
    def citation(self) -> str:
        return """@inproceedings{wang2023query,
    title={Query Encoder Distillation via Embedding Alignment is a Strong Baseline Method to Boost Dense Retriever Online Efficiency},
    author={Wang, Yuxuan and Lyu, Hong},
    booktitle={Proceedings of The Fourth Workshop on Simple and Efficient Natural Language Processing (SustaiNLP)},
    year={2023},
    url={https://arxiv.org/abs/2306.11550}
}"""
