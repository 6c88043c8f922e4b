"""Retrieval evaluation of any sentence-transformers model, asymmetric or not, on a BEIR-style collection.

Queries go through ``encode_query`` and documents through ``encode_document`` (for an asymmetric model: the small
query tower and the teacher), both through the on-disk :class:`~asym_st.data.cache.EmbeddingCache`, which streams
the corpus in chunks (bounded memory, a progress bar) and keys the vectors by the tower's fingerprint and the
texts' hash. Evaluating a second query tower that shares the frozen document tower therefore only encodes the
queries. Search is faiss (exact by default), metrics are pytrec_eval's (:mod:`asym_st.evaluation.metrics`).
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from sentence_transformers import SentenceTransformer

from asym_st.data.beir import RetrievalDataset
from asym_st.data.cache import EmbeddingCache
from asym_st.evaluation.metrics import METRIC_NAMES, compute_metrics
from asym_st.evaluation.search import IndexKind, SearchConfig, build_index, search, validate_search_options

__all__ = ["RetrievalEvalConfig", "RetrievalResult", "evaluate_retrieval", "model_name", "load_model"]

logger = logging.getLogger(__name__)


@dataclass
class RetrievalEvalConfig:
    """Settings of a retrieval evaluation.

    Args:
        batch_size: encoding batch size (queries and documents).
        top_k: documents retrieved per query (Recall@100 and MAP are computed over them).
        index: faiss index, ``flat`` (exact, default), ``hnsw``, ``ivf`` or ``ivfpq`` (approximate, for large
            corpora; recall vs exact and latency in ``benchmarks/results/ann_recall.md``).
        relevance_level: smallest grade counted as relevant by the binary metrics (TREC-DL: 2); nDCG is graded.
        cache: the embedding cache; ``None`` uses the shared default cache (``$ASYM_ST_CACHE/embeddings``).
        use_cache: ``False`` encodes into a temporary cache that is deleted afterwards (still streamed).
        cache_queries: ``False`` encodes the queries directly and stores nothing (documents are still cached): for
            a query tower that changes between evaluations, e.g. a dev evaluation during training, where every
            evaluation would otherwise leave one more cache entry behind.
        show_progress_bar: progress bars while encoding.
        similarity: ``cosine``, ``dot`` or ``euclidean``; ``None`` uses the model's ``similarity_fn_name``.
        ignore_identical_ids: drop a document whose id equals the query's id from its results (mteb's option,
            for collections like ArguAna or Quora where queries are also documents).
        chunk_size: texts encoded between two writes to the memory-mapped cache file.
        search_options: extra :class:`~asym_st.evaluation.search.SearchConfig` fields (``hnsw_ef_search``,
            ``ivf_nprobe``, ``ivfpq_m``, ``ivfpq_refine``, ...); unknown names raise ``ValueError``.
    """

    batch_size: int = 32
    top_k: int = 100
    index: IndexKind = "flat"
    relevance_level: int = 1
    cache: EmbeddingCache | None = None
    use_cache: bool = True
    cache_queries: bool = True
    show_progress_bar: bool = True
    similarity: str | None = None
    ignore_identical_ids: bool = False
    chunk_size: int = 256
    search_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        validate_search_options(self.search_options)

    def summary(self) -> dict[str, Any]:
        """The settings that change the numbers (recorded with every result)."""
        return {
            "batch_size": self.batch_size,
            "top_k": self.top_k,
            "index": self.index,
            "relevance_level": self.relevance_level,
            "ignore_identical_ids": self.ignore_identical_ids,
            **self.search_options,
        }


@dataclass
class RetrievalResult:
    """The outcome of one evaluation; :meth:`to_dict` is the ``eval/retrieval/<dataset>__<split>.json`` schema."""

    model: str
    dataset: str
    split: str
    source: str
    metrics: dict[str, float]
    num_queries: int
    num_documents: int
    evaluator: str = "asym-st"
    timings: dict[str, float] = field(default_factory=dict)
    date: str = field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    config: dict[str, Any] = field(default_factory=dict)
    report: dict[str, int] = field(default_factory=dict)
    per_query: dict[str, dict[str, float]] = field(default_factory=dict, repr=False)
    run: dict[str, dict[str, float]] = field(default_factory=dict, repr=False)

    def to_dict(self, include_per_query: bool = False) -> dict[str, Any]:
        data = asdict(self)
        data.pop("run")
        if not include_per_query:
            data.pop("per_query")
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RetrievalResult:
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})

    def summary_line(self) -> str:
        metrics = "  ".join(f"{k}={self.metrics[k] * 100:.2f}" for k in METRIC_NAMES if k in self.metrics)
        return f"{self.model} on {self.dataset}/{self.split} ({self.num_queries} queries): {metrics}"


def model_name(model: SentenceTransformer | str | os.PathLike) -> str:
    """A readable name: the path or Hub id it was loaded from, else its base model, else its class."""
    if isinstance(model, (str, os.PathLike)):
        return os.fspath(model)
    for candidate in (
        getattr(model, "_asym_st_source", None),
        getattr(model.model_card_data, "model_id", None),
        getattr(model.model_card_data, "base_model", None),
    ):
        if candidate:
            return str(candidate)
    return type(model).__name__


def load_model(model: SentenceTransformer | str | os.PathLike, device: str | None = None) -> SentenceTransformer:
    """A model object from a path or Hub id: asym-st folders keep their record, others load as plain ST models."""
    if isinstance(model, SentenceTransformer):
        return model
    from asym_st.modeling import RECORD_FILE_NAME, load_asymmetric_model, load_sentence_transformer

    path = os.fspath(model)
    if os.path.isfile(os.path.join(path, RECORD_FILE_NAME)):
        return load_asymmetric_model(path, device=device)
    loaded = load_sentence_transformer(path, device=device)
    loaded._asym_st_source = path
    return loaded


def _model_similarity(model: SentenceTransformer) -> str:
    name = getattr(model, "similarity_fn_name", None) or "cosine"
    return str(getattr(name, "value", name))


def _run_from_hits(
    scores: np.ndarray, indices: np.ndarray, query_ids: list[str], doc_ids: list[str], ignore_identical: bool
) -> dict[str, dict[str, float]]:
    run: dict[str, dict[str, float]] = {}
    for row, query_id in enumerate(query_ids):
        hits = {}
        for score, index in zip(scores[row], indices[row], strict=True):
            if index < 0:  # approximate indexes pad missing hits with -1
                continue
            doc_id = doc_ids[index]
            if ignore_identical and doc_id == query_id:
                continue
            hits[doc_id] = float(score)
        run[query_id] = hits
    return run


def evaluate_retrieval(
    model: SentenceTransformer | str | os.PathLike,
    dataset: RetrievalDataset | str | os.PathLike,
    config: RetrievalEvalConfig | None = None,
    name: str | None = None,
) -> RetrievalResult:
    """Evaluate ``model`` on ``dataset``: nDCG@10, Recall@100, MRR@10 and MAP (pytrec_eval) over faiss search.

    Args:
        model: a ``SentenceTransformer`` (asymmetric or not), or its folder / Hub id.
        dataset: a :class:`~asym_st.data.beir.RetrievalDataset`, or any source
            :func:`~asym_st.data.sources.load_retrieval_source` reads (split ``test``).
        config: :class:`RetrievalEvalConfig`.
        name: the model's name in the result (default: where it was loaded from).

    Example::

        from asym_st.evaluation import evaluate_retrieval, load_retrieval_source
        scifact = load_retrieval_source("../shared/data/beir/scifact", split="test")
        result = evaluate_retrieval("minilm-2l", scifact)
        print(result.metrics["ndcg_at_10"], result.timings)
    """
    config = config or RetrievalEvalConfig()
    if not isinstance(dataset, RetrievalDataset):
        from asym_st.data.sources import load_retrieval_source

        dataset = load_retrieval_source(os.fspath(dataset))
    if not dataset.queries:
        raise ValueError(f"{dataset.name}/{dataset.split}: no judged queries to evaluate.")
    started = time.perf_counter()
    st_model = load_model(model)
    timings: dict[str, float] = {"load_model_s": time.perf_counter() - started}
    temporary_root = None
    cache = config.cache
    if not config.use_cache:
        temporary_root = tempfile.mkdtemp(prefix="asym_st_eval_cache_")
        cache = EmbeddingCache(temporary_root)
    cache = cache or EmbeddingCache()
    similarity = config.similarity or _model_similarity(st_model)
    search_config = SearchConfig(index=config.index, similarity=similarity, **config.search_options)
    try:
        doc_ids, query_ids = dataset.corpus_ids, dataset.query_ids
        tick = time.perf_counter()
        documents = cache.encode(
            st_model,
            [dataset.corpus[d] for d in doc_ids],
            route="document",
            batch_size=config.batch_size,
            chunk_size=config.chunk_size,
            show_progress_bar=config.show_progress_bar,
            description=f"{dataset.name} documents",
        )
        timings["encode_documents_s"] = time.perf_counter() - tick
        tick = time.perf_counter()
        query_texts = [dataset.queries[q] for q in query_ids]
        if config.cache_queries:
            queries = cache.encode(
                st_model,
                query_texts,
                route="query",
                batch_size=config.batch_size,
                chunk_size=config.chunk_size,
                show_progress_bar=config.show_progress_bar,
                description=f"{dataset.name} queries",
            )
        else:
            queries = st_model.encode_query(
                query_texts, batch_size=config.batch_size, show_progress_bar=False, convert_to_numpy=True
            ).astype(np.float32)
        timings["encode_queries_s"] = time.perf_counter() - tick
        tick = time.perf_counter()
        index = build_index(documents, search_config)
        timings["build_index_s"] = time.perf_counter() - tick
        tick = time.perf_counter()
        # One extra hit so that dropping an identical id still leaves top_k documents.
        top_k = config.top_k + (1 if config.ignore_identical_ids else 0)
        scores, indices = search(index, queries, top_k, similarity)
        run = _run_from_hits(scores, indices, query_ids, doc_ids, config.ignore_identical_ids)
        if config.ignore_identical_ids:
            run = {q: dict(list(hits.items())[: config.top_k]) for q, hits in run.items()}
        timings["search_s"] = time.perf_counter() - tick
    finally:
        if temporary_root:
            shutil.rmtree(temporary_root, ignore_errors=True)
    tick = time.perf_counter()
    metrics, per_query = compute_metrics(dataset.qrels, run, relevance_level=config.relevance_level)
    timings["metrics_s"] = time.perf_counter() - tick
    timings["total_s"] = time.perf_counter() - started
    result = RetrievalResult(
        model=name or model_name(model if isinstance(model, (str, os.PathLike)) else st_model),
        dataset=dataset.name,
        split=dataset.split,
        source=dataset.source,
        metrics=metrics,
        num_queries=len(dataset.qrels),
        num_documents=len(dataset.corpus),
        timings={k: round(v, 4) for k, v in timings.items()},
        config=dict(config.summary(), similarity=similarity),
        report=dict(dataset.report),
        per_query=per_query,
        run=run,
    )
    logger.info(result.summary_line())
    return result
