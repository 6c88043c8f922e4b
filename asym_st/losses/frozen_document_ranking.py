"""In-batch-negatives ranking against precomputed embeddings of a frozen document tower."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.util import all_gather, cos_sim
from torch import Tensor, nn

__all__ = ["FrozenDocumentRankingLoss"]

_SAME_DOCUMENT_TOLERANCE = 1e-5


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


class FrozenDocumentRankingLoss(nn.Module):
    def __init__(self, model: SentenceTransformer, scale: float = 20.0, gather_across_devices: bool = False) -> None:
        """``MultipleNegativesRankingLoss`` for a query tower trained against a *frozen* document tower, whose
        embeddings of the positives are precomputed (e.g. read from the embedding cache) instead of being
        re-encoded at every step.

        For a batch of (query, positive) pairs, each query should score its own positive above every other
        positive in the batch: cross-entropy over ``scale · cos(q_i, d_j)``. With a frozen document tower this is
        the same objective as sentence-transformers'
        :class:`~sentence_transformers.sentence_transformer.losses.MultipleNegativesRankingLoss`, minus the
        document forward pass, which dominates the cost when the query tower is tiny (a static encoder is
        thousands of times cheaper than the document transformer). The document embeddings are the index's own
        (no dropout), which is what the query tower is served against. Two pairs that share a positive document
        are not counted as each other's negatives.

        Args:
            model: the model whose ``query`` route is trained (an asymmetric model; set
                ``router_mapping={"query": "query"}``).
            scale: the similarity scale (inverse temperature); 20 as in sentence-transformers.
            gather_across_devices: under DDP, score each query against the positives of *every* rank's batch (the
                global batch's in-batch negatives, as ``MultipleNegativesRankingLoss(gather_across_devices=True)``).
                The positives are labels without gradient, so a plain all-gather suffices; ranks must have equal
                batch sizes (the distributed sampler pads them). No effect in one process.

        References:
            - Henderson et al., 2017. Efficient Natural Language Response Suggestion for Smart Reply.
              https://arxiv.org/abs/1705.00652
            - Leonhardt et al., 2022. Distribution-Aligned Fine-Tuning for Efficient Neural Retrieval (DAFT's
              second stage). https://arxiv.org/abs/2211.04942

        Inputs:
            +---------------+----------------------------------------------------------------+
            | Texts         | Labels                                                         |
            +===============+================================================================+
            | query         | the positive documents' embeddings ``(batch_size, dim)``      |
            +---------------+----------------------------------------------------------------+

        Example:
            ::

                from datasets import Dataset
                from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
                from asym_st.losses.frozen_document_ranking import FrozenDocumentRankingLoss

                positives = model.encode_document(positive_texts)  # or EmbeddingCache().encode(..., "document")
                train = Dataset.from_dict({"query": queries, "label": positives.tolist()})
                args = SentenceTransformerTrainingArguments("out", router_mapping={"query": "query"})
                trainer = SentenceTransformerTrainer(model, args, train_dataset=train,
                                                     loss=FrozenDocumentRankingLoss(model))
                trainer.train()
        """
        super().__init__()
        self.model = model
        self.scale = scale
        self.gather_across_devices = gather_across_devices
        self.cross_entropy = nn.CrossEntropyLoss()

    def forward(self, sentence_features: Iterable[dict[str, Tensor]], labels: Tensor) -> Tensor:
        features = list(sentence_features)
        if len(features) != 1:
            raise ValueError(
                f"FrozenDocumentRankingLoss expects one text column (the queries), got {len(features)}; the positive "
                "documents come as precomputed embeddings in the 'label' column."
            )
        if labels is None or labels.ndim != 2:
            raise ValueError("The 'label' column must hold the positive documents' embeddings, (batch_size, dim).")
        queries = self.model(features[0])["sentence_embedding"]
        if queries.shape[-1] != labels.shape[-1]:
            raise ValueError(
                f"The query tower outputs {queries.shape[-1]} dimensions but the document embeddings have "
                f"{labels.shape[-1]}; give the query tower a projection to the document tower's width."
            )
        documents = labels.to(queries.dtype)
        candidates, offset = documents, 0
        if self.gather_across_devices and _distributed():
            candidates = all_gather(documents)  # every rank's positives, in rank order
            offset = torch.distributed.get_rank() * len(documents)
        scores = cos_sim(queries, candidates) * self.scale
        targets = torch.arange(len(scores), device=scores.device) + offset
        # Pairs sharing a positive document: that document is not a negative for the other query. Equal texts
        # encoded in different batches can differ in the last bits, hence a tolerance rather than equality.
        same = cos_sim(documents, candidates) > 1 - _SAME_DOCUMENT_TOLERANCE
        same[torch.arange(len(scores), device=scores.device), targets] = False
        scores = scores.masked_fill(same, torch.finfo(scores.dtype).min)
        return self.cross_entropy(scores, targets)

    def get_config_dict(self) -> dict[str, Any]:
        return {"scale": self.scale, "gather_across_devices": self.gather_across_devices}

    @property
    def citation(self) -> str:
        return """@misc{henderson2017efficient,
    title={Efficient Natural Language Response Suggestion for Smart Reply},
    author={Matthew Henderson and Rami Al-Rfou and Brian Strope and Yun-hsuan Sung and Laszlo Lukacs and Ruiqi Guo and Sanjiv Kumar and Balint Miklos and Ray Kurzweil},
    year={2017},
    eprint={1705.00652},
    archivePrefix={arXiv},
    primaryClass={cs.CL}
}"""
