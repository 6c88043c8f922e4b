"""Nearest-neighbour search over document embeddings with faiss: exact by default, HNSW, IVF or IVF-PQ when asked.

The model's similarity function decides the index metric: ``cosine`` normalises both sides and searches by inner
product, ``dot`` searches by inner product as is, ``euclidean`` by L2 distance (scores are negated distances, so
higher is better everywhere). Documents are added in chunks read from the (memory-mapped) embedding matrix, so the
only full copy in memory is the index itself.

Index kinds (``SearchConfig.index``), all built by :func:`faiss.index_factory`:

- ``flat`` (``Flat``): exact; the reference, and the right choice up to a few hundred thousand documents.
- ``hnsw`` (``HNSW{m},Flat``): graph; fast and accurate, memory = vectors + graph; ``hnsw_ef_search`` trades
  recall for speed.
- ``ivf`` (``IVF{nlist},Flat``): inverted lists over k-means cells; ``ivf_nprobe`` cells visited per query.
- ``ivfpq`` (``IVF{nlist},PQ{m}x{nbits}``): inverted lists of product-quantised codes, ``m`` bytes per vector at
  8 bits (the smallest index); with ``ivfpq_refine > 0``, ``IVF{nlist},PQ{m}x{nbits},RFlat`` re-ranks the PQ
  candidates by exact similarity.

``benchmarks/results/ann_recall.md`` measures recall@100 against exact search and the latency of each kind on the
largest local corpus. Search-time settings (``hnsw_ef_search``, ``ivf_nprobe``, ``ivfpq_refine``) can be changed on
a built index with :func:`set_search_parameters`, without rebuilding it.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any, Literal

import faiss
import numpy as np

__all__ = [
    "SearchConfig",
    "build_index",
    "search",
    "set_search_parameters",
    "parse_search_option",
    "validate_search_options",
    "IndexKind",
    "INDEX_KINDS",
]

IndexKind = Literal["flat", "hnsw", "ivf", "ivfpq"]
INDEX_KINDS: tuple[str, ...] = typing.get_args(IndexKind)
_METRICS = {"cosine": faiss.METRIC_INNER_PRODUCT, "dot": faiss.METRIC_INNER_PRODUCT, "euclidean": faiss.METRIC_L2}
# faiss' k-means warns below 39 training points per centroid; PQ trains 2**nbits centroids per sub-quantiser.
_MIN_POINTS_PER_CENTROID = 39
_TRAIN_POINTS_PER_CENTROID = 256  # faiss' own max_points_per_centroid: more would be sub-sampled anyway


@dataclass
class SearchConfig:
    """How to search.

    Args:
        index: ``flat`` (exact, the default and the reference), ``hnsw`` (graph, approximate), ``ivf`` (inverted
            lists, approximate; trained on the documents) or ``ivfpq`` (inverted lists of product-quantised codes:
            the smallest index; trained on the documents).
        similarity: ``cosine``, ``dot`` or ``euclidean``; usually the model's ``similarity_fn_name``.
        hnsw_m: HNSW neighbours per node.
        hnsw_ef_search: HNSW search breadth (recall vs speed); raised to ``top_k`` if smaller.
        ivf_nlist: number of IVF lists (``ivf`` and ``ivfpq``); ``None`` picks ~4·sqrt(n), at most n/39.
        ivf_nprobe: IVF lists visited per query (``ivf`` and ``ivfpq``).
        ivfpq_m: PQ sub-quantisers, i.e. bytes per vector at 8 bits; must divide the dimension. ``None`` picks
            dimension / 4 (96 for 384-d MiniLM), or the nearest divisor of the dimension below it.
        ivfpq_nbits: bits per sub-quantiser code; the corpus needs at least 39 · 2**nbits documents to train it.
        ivfpq_refine: re-rank ``ivfpq_refine × top_k`` PQ candidates by exact similarity (faiss ``IndexRefineFlat``;
            keeps the full vectors in memory as well, so it buys recall, not memory); ``0`` disables it. Without
            it, recall@100 vs exact stayed below 0.87 on TREC-DL passages (``benchmarks/results/ann_recall.md``).
        add_chunk_size: documents converted and added per step (bounds the extra memory).

    Example::

        config = SearchConfig(index="ivfpq", ivf_nprobe=32, ivfpq_m=48, ivfpq_refine=4)
        scores, indices = search(build_index(documents, config), queries, top_k=100)
    """

    index: IndexKind = "flat"
    similarity: str = "cosine"
    hnsw_m: int = 32
    hnsw_ef_search: int = 128
    ivf_nlist: int | None = None
    ivf_nprobe: int = 16
    ivfpq_m: int | None = None
    ivfpq_nbits: int = 8
    ivfpq_refine: int = 0
    add_chunk_size: int = 65536

    def __post_init__(self) -> None:
        if self.index not in INDEX_KINDS:
            raise ValueError(f"SearchConfig.index={self.index!r}; choose one of {', '.join(map(repr, INDEX_KINDS))}.")
        if self.similarity not in _METRICS:
            raise ValueError(
                f"SearchConfig.similarity={self.similarity!r} is not supported by the faiss search; "
                f"choose one of {', '.join(_METRICS)}."
            )
        for name in ("hnsw_m", "hnsw_ef_search", "ivf_nlist", "ivf_nprobe", "ivfpq_m", "add_chunk_size"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"SearchConfig.{name}={value!r}; expected a positive integer.")
        if not isinstance(self.ivfpq_nbits, int) or not 1 <= self.ivfpq_nbits <= 16:
            raise ValueError(f"SearchConfig.ivfpq_nbits={self.ivfpq_nbits!r}; expected an integer in 1..16.")
        if not isinstance(self.ivfpq_refine, int) or self.ivfpq_refine < 0:
            raise ValueError(
                f"SearchConfig.ivfpq_refine={self.ivfpq_refine!r}; expected 0 (off) or a positive integer."
            )


# Fields given by their own options (``--index``, the model's similarity), not as search options.
_NOT_OPTIONS = ("index", "similarity")


def _option_types() -> dict[str, Any]:
    hints = typing.get_type_hints(SearchConfig)
    return {f.name: hints[f.name] for f in dataclasses.fields(SearchConfig) if f.name not in _NOT_OPTIONS}


def validate_search_options(options: dict[str, Any]) -> None:
    """Raise ``ValueError`` naming any key of ``options`` that is not a :class:`SearchConfig` search option."""
    known = _option_types()
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ValueError(
            f"unknown search option(s) {', '.join(unknown)}; choose from {', '.join(known)} "
            f"(the index kind and the similarity have their own settings)."
        )


def parse_search_option(text: str) -> tuple[str, Any]:
    """``"key=value"`` → ``(key, typed value)``, checked against the :class:`SearchConfig` fields.

    Integers are parsed as such; ``none`` (or ``auto``) sets an optional field back to its automatic choice.

    Example::

        >>> parse_search_option("ivf_nprobe=32")
        ('ivf_nprobe', 32)
        >>> parse_search_option("ivf_nlist=auto")
        ('ivf_nlist', None)
    """
    key, sep, raw = text.partition("=")
    key, raw = key.strip(), raw.strip()
    if not sep or not key or not raw:
        raise ValueError(f"search option {text!r} is not KEY=VALUE (e.g. ivf_nprobe=32).")
    validate_search_options({key: None})
    kind = _option_types()[key]
    optional = type(None) in typing.get_args(kind)
    if raw.lower() in ("none", "auto"):
        if not optional:
            raise ValueError(f"search option {key} needs a value; it has no automatic setting.")
        return key, None
    try:
        return key, int(raw)
    except ValueError:
        raise ValueError(f"search option {key} expects an integer, got {raw!r}.") from None


def _prepare(vectors: np.ndarray, similarity: str) -> np.ndarray:
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if similarity == "cosine":
        vectors = vectors.copy()
        faiss.normalize_L2(vectors)
    return vectors


def _pq_subquantisers(config: SearchConfig, dim: int) -> int:
    if config.ivfpq_m is None:
        return max(m for m in range(1, max(1, dim // 4) + 1) if dim % m == 0)
    if dim % config.ivfpq_m:
        divisors = [m for m in range(1, dim + 1) if dim % m == 0]
        raise ValueError(
            f"SearchConfig.ivfpq_m={config.ivfpq_m} must divide the embedding dimension {dim}; "
            f"choose one of {divisors}."
        )
    return config.ivfpq_m


def _factory_string(config: SearchConfig, count: int, dim: int) -> str:
    if config.index == "flat":
        return "Flat"
    if config.index == "hnsw":
        return f"HNSW{config.hnsw_m},Flat"
    nlist = config.ivf_nlist or max(1, min(count // _MIN_POINTS_PER_CENTROID, int(4 * np.sqrt(count))))
    if config.index == "ivf":
        return f"IVF{nlist},Flat"
    m = _pq_subquantisers(config, dim)
    needed = _MIN_POINTS_PER_CENTROID * 2**config.ivfpq_nbits
    if count < needed:
        raise ValueError(
            f"index='ivfpq' with ivfpq_nbits={config.ivfpq_nbits} needs at least {needed} documents "
            f"(39 × 2**{config.ivfpq_nbits}) to train its sub-quantisers; this corpus has {count}. Lower ivfpq_nbits, "
            f"or use index='flat' (exact search is cheap at this size) or 'hnsw'."
        )
    # "np": no polysemous training (only used by Hamming-filtered search; ~10× the PQ training time).
    return f"IVF{nlist},PQ{m}x{config.ivfpq_nbits}np" + (",RFlat" if config.ivfpq_refine else "")


def set_search_parameters(index: faiss.Index, config: SearchConfig) -> faiss.Index:
    """Apply ``config``'s search-time settings to a built index (no rebuild), through faiss' ``ParameterSpace``.

    ``hnsw_ef_search`` for HNSW, ``ivf_nprobe`` (capped at the number of lists) for IVF and IVF-PQ, and
    ``ivfpq_refine`` as the re-ranking factor of an index built with re-ranking. Returns ``index``.

    Example::

        index = build_index(documents, SearchConfig(index="hnsw"))
        for ef in (16, 64, 256):
            set_search_parameters(index, SearchConfig(index="hnsw", hnsw_ef_search=ef))
            scores, indices = search(index, queries, 100)
    """
    space = faiss.ParameterSpace()
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        space.set_index_parameter(index, "nprobe", min(config.ivf_nprobe, ivf.nlist))
    if isinstance(index, faiss.IndexHNSW):
        space.set_index_parameter(index, "efSearch", config.hnsw_ef_search)
    if isinstance(index, faiss.IndexRefine) and config.ivfpq_refine:
        space.set_index_parameter(index, "k_factor_rf", config.ivfpq_refine)
    return index


def build_index(documents: np.ndarray, config: SearchConfig | None = None) -> faiss.Index:
    """A faiss index over ``documents`` (``n × d``, may be memory-mapped), with ``config``'s search settings.

    Trained kinds (``ivf``, ``ivfpq``) train on a bounded random sample (256 points per centroid at most, the
    most faiss' k-means would use), so training memory does not grow with the corpus.

    Raises:
        ValueError: an empty matrix, ``ivfpq_m`` not dividing the dimension, or a corpus too small to train PQ.

    Example::

        index = build_index(np.load("documents.npy", mmap_mode="r"), SearchConfig(index="ivfpq", ivfpq_m=48))
    """
    config = config or SearchConfig()
    if documents.ndim != 2 or len(documents) == 0:
        raise ValueError(f"build_index needs a non-empty n × d matrix, got shape {documents.shape}.")
    count, dim = documents.shape
    index = faiss.index_factory(dim, _factory_string(config, count, dim), _METRICS[config.similarity])
    if not index.is_trained:
        ivf = faiss.extract_index_ivf(index)
        centroids = max(ivf.nlist, 2**config.ivfpq_nbits if config.index == "ivfpq" else 0)
        size = min(count, centroids * _TRAIN_POINTS_PER_CENTROID)
        sample = np.sort(np.random.default_rng(0).choice(count, size=size, replace=False))
        index.train(_prepare(documents[sample], config.similarity))
    for start in range(0, count, config.add_chunk_size):
        index.add(_prepare(documents[start : start + config.add_chunk_size], config.similarity))
    return set_search_parameters(index, config)


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
