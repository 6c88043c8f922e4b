"""Nearest-neighbour search over document embeddings with faiss: exact by default, HNSW or IVF when asked.

The model's similarity function decides the index metric: ``cosine`` normalises both sides and searches by inner
product, ``dot`` searches by inner product as is, ``euclidean`` by L2 distance (scores are negated distances, so
higher is better everywhere). Documents are added in chunks read from the (memory-mapped) embedding matrix, so the
only full copy in memory is the index itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import faiss
import numpy as np

__all__ = ["SearchConfig", "build_index", "search", "IndexKind"]

IndexKind = Literal["flat", "hnsw", "ivf"]
_METRICS = {"cosine": faiss.METRIC_INNER_PRODUCT, "dot": faiss.METRIC_INNER_PRODUCT, "euclidean": faiss.METRIC_L2}


@dataclass
class SearchConfig:
    """How to search.

    Args:
        index: ``flat`` (exact, the default and the reference), ``hnsw`` (graph, approximate) or ``ivf``
            (inverted lists, approximate; trained on the documents).
        similarity: ``cosine``, ``dot`` or ``euclidean``; usually the model's ``similarity_fn_name``.
        hnsw_m: HNSW neighbours per node.
        hnsw_ef_search: HNSW search breadth (recall vs speed); raised to ``top_k`` if smaller.
        ivf_nlist: number of IVF lists; ``None`` picks ~4·sqrt(n).
        ivf_nprobe: IVF lists visited per query.
        add_chunk_size: documents converted and added per step (bounds the extra memory).
    """

    index: IndexKind = "flat"
    similarity: str = "cosine"
    hnsw_m: int = 32
    hnsw_ef_search: int = 128
    ivf_nlist: int | None = None
    ivf_nprobe: int = 16
    add_chunk_size: int = 65536

    def __post_init__(self) -> None:
        if self.index not in ("flat", "hnsw", "ivf"):
            raise ValueError(f"SearchConfig.index={self.index!r}; choose 'flat', 'hnsw' or 'ivf'.")
        if self.similarity not in _METRICS:
            raise ValueError(
                f"SearchConfig.similarity={self.similarity!r} is not supported by the faiss search; "
                f"choose one of {', '.join(_METRICS)}."
            )


def _prepare(vectors: np.ndarray, similarity: str) -> np.ndarray:
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if similarity == "cosine":
        vectors = vectors.copy()
        faiss.normalize_L2(vectors)
    return vectors


def build_index(documents: np.ndarray, config: SearchConfig | None = None) -> faiss.Index:
    """A faiss index over ``documents`` (``n × d``, may be memory-mapped)."""
    config = config or SearchConfig()
    if documents.ndim != 2 or len(documents) == 0:
        raise ValueError(f"build_index needs a non-empty n × d matrix, got shape {documents.shape}.")
    count, dim = documents.shape
    metric = _METRICS[config.similarity]
    if config.index == "flat":
        index = faiss.IndexFlat(dim, metric)
    elif config.index == "hnsw":
        index = faiss.IndexHNSWFlat(dim, config.hnsw_m, metric)
        index.hnsw.efSearch = config.hnsw_ef_search
    else:
        nlist = config.ivf_nlist or max(1, min(count // 39, int(4 * np.sqrt(count))))
        index = faiss.IndexIVFFlat(faiss.IndexFlat(dim, metric), dim, nlist, metric)
        # faiss wants >= 39 training points per list; a sample bounds memory and time on large corpora.
        sample = np.random.default_rng(0).choice(count, size=min(count, nlist * 256), replace=False)
        index.train(_prepare(documents[np.sort(sample)], config.similarity))
        index.nprobe = min(config.ivf_nprobe, nlist)
    for start in range(0, count, config.add_chunk_size):
        index.add(_prepare(documents[start : start + config.add_chunk_size], config.similarity))
    return index


def search(
    index: faiss.Index, queries: np.ndarray, top_k: int, similarity: str = "cosine"
) -> tuple[np.ndarray, np.ndarray]:
    """``(scores, indices)``, each ``num_queries × k`` with ``k = min(top_k, index.ntotal)``; higher is better.

    Approximate indexes may return fewer than ``k`` hits for a query; those slots hold index ``-1``.
    """
    k = min(top_k, index.ntotal)
    if isinstance(index, faiss.IndexHNSW):
        index.hnsw.efSearch = max(index.hnsw.efSearch, k)
    scores, indices = index.search(_prepare(queries, similarity), k)
    if index.metric_type == faiss.METRIC_L2:
        scores = -scores  # distances: smaller is better; negate so that callers always sort descending
    return scores, indices
