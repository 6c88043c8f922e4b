"""Hard-negative mining: the top-k documents per training query from a retriever, known positives dropped.

The output is a :class:`datasets.Dataset` with **one row per query** (the columns are :data:`CANDIDATE_COLUMNS`):
``query_id``, ``query``, ``positive_ids``, ``positive_texts``, ``candidate_ids``, ``candidate_texts``,
``candidate_ranks`` (1-based rank in the retriever's full list, positives included, so rank gaps show where
positives were) and ``candidate_scores`` (the retriever's similarity). Candidates are best-ranked first. Recipes
that need hard negatives (TAS-Balanced, MD2PR) read this one format; :func:`save_candidates` /
:func:`load_candidates` store it atomically.

Why not :func:`sentence_transformers.util.mine_hard_negatives`: it works on texts, not ids. It de-duplicates the
corpus by text and returns negative texts, so document ids (needed to join qrels and MS MARCO-style score files)
are lost; it identifies positives by text equality instead of by qrels; it returns no ranks; and it embeds the
corpus itself instead of through the shared :class:`~asym_st.data.cache.EmbeddingCache`, which the evaluation and
distillation code already filled for the same teacher. Retrieval here is faiss via
:mod:`asym_st.evaluation.search` (exact inner product / L2, following the model's similarity function).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from datasets import Dataset, Features, Sequence, Value, load_from_disk
from sentence_transformers import SentenceTransformer
from tqdm.auto import tqdm

from asym_st.data.beir import RetrievalDataset
from asym_st.data.cache import EmbeddingCache
from asym_st.evaluation.search import SearchConfig, build_index, search
from asym_st.utils.io import atomic_directory

__all__ = [
    "CANDIDATE_COLUMNS",
    "MiningConfig",
    "load_candidates",
    "mine_candidates",
    "mine_from_dataset",
    "positives_from_qrels",
    "save_candidates",
]

logger = logging.getLogger(__name__)

CANDIDATE_FEATURES = Features(
    {
        "query_id": Value("string"),
        "query": Value("string"),
        "positive_ids": Sequence(Value("string")),
        "positive_texts": Sequence(Value("string")),
        "candidate_ids": Sequence(Value("string")),
        "candidate_texts": Sequence(Value("string")),
        "candidate_ranks": Sequence(Value("int32")),
        "candidate_scores": Sequence(Value("float32")),
    }
)
#: The columns of a mined candidate dataset, in order.
CANDIDATE_COLUMNS = tuple(CANDIDATE_FEATURES)


@dataclass
class MiningConfig:
    """How to mine.

    Args:
        top_k: candidates kept per query *after* dropping its positives.
        batch_size: encoding batch size (query and document towers).
        search_batch_size: queries per faiss search call (bounds the score matrix in memory).
        query_route: the retriever's route for queries (``"query"``; use ``"document"`` to mine with the
            teacher side of an asymmetric model).
        document_route: the retriever's route for documents.
        include_texts: store ``positive_texts`` / ``candidate_texts`` (empty lists when off: ``top_k`` copies of
            passages per query can be large; ids always stay).
        show_progress_bar: progress bars while encoding and searching.
    """

    top_k: int = 100
    batch_size: int = 32
    search_batch_size: int = 1024
    query_route: str = "query"
    document_route: str = "document"
    include_texts: bool = True
    show_progress_bar: bool = True

    def __post_init__(self) -> None:
        for name in ("top_k", "batch_size", "search_batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"MiningConfig.{name} must be a positive integer, got {value!r}.")


def positives_from_qrels(qrels: Mapping[str, Mapping[str, int]], min_relevance: int = 1) -> dict[str, list[str]]:
    """Documents judged at least ``min_relevance`` for each query (BEIR: ``1``; TREC DL passage: ``2``)."""
    return {
        query_id: [doc_id for doc_id, grade in judged.items() if grade >= min_relevance]
        for query_id, judged in qrels.items()
    }


def mine_candidates(
    retriever: SentenceTransformer,
    queries: Mapping[str, str],
    corpus: Mapping[str, str],
    positives: Mapping[str, Iterable[str]] | None = None,
    config: MiningConfig | None = None,
    cache: EmbeddingCache | None = None,
) -> Dataset:
    """Retrieve the top-k documents of every query and drop its known positives.

    Args:
        retriever: a sentence-transformers model (the teacher, or an asymmetric model; see the routes in
            ``config``). Its ``similarity_fn_name`` picks the faiss metric.
        queries: query id → text (the order is kept in the output).
        corpus: document id → text.
        positives: query id → relevant document ids (e.g. :func:`positives_from_qrels`); dropped from the
            candidates and listed in ``positive_ids``. Ids missing from the corpus are ignored with a warning.
        config: ``top_k`` and encoding / search settings.
        cache: where embeddings are read from or written to (default: the shared cache folder).

    Returns:
        A :class:`datasets.Dataset` with :data:`CANDIDATE_COLUMNS`, one row per query.

    Example::

        data = load_beir("nfcorpus", "train")
        candidates = mine_candidates(teacher, data.queries, data.corpus, positives_from_qrels(data.qrels))
        save_candidates(candidates, "nfcorpus-train-top100")
    """
    config = config or MiningConfig()
    if not queries:
        raise ValueError("No queries to mine for.")
    if not corpus:
        raise ValueError("The corpus is empty: nothing to retrieve.")
    positives = _known_positives(positives or {}, queries, corpus)
    cache = cache or EmbeddingCache()
    query_ids, doc_ids = list(queries), list(corpus)
    doc_embeddings = cache.encode(
        retriever,
        [corpus[doc_id] for doc_id in doc_ids],
        route=config.document_route,
        batch_size=config.batch_size,
        show_progress_bar=config.show_progress_bar,
        description="mining: encoding documents",
    )
    query_embeddings = cache.encode(
        retriever,
        [queries[query_id] for query_id in query_ids],
        route=config.query_route,
        batch_size=config.batch_size,
        show_progress_bar=config.show_progress_bar,
        description="mining: encoding queries",
    )
    search_config = SearchConfig(similarity=_similarity(retriever))
    index = build_index(doc_embeddings, search_config)
    # Retrieve enough that top_k remain after the positives are dropped.
    depth = config.top_k + max((len(found) for found in positives.values()), default=0)
    rows = {name: [] for name in CANDIDATE_COLUMNS}
    progress = tqdm(total=len(query_ids), desc="mining: searching", disable=not config.show_progress_bar)
    for start in range(0, len(query_ids), config.search_batch_size):
        chunk = query_ids[start : start + config.search_batch_size]
        scores, indices = search(index, query_embeddings[start : start + len(chunk)], depth, search_config.similarity)
        for query_id, query_scores, query_indices in zip(chunk, scores, indices, strict=True):
            _append_row(
                rows,
                query_id,
                queries,
                corpus,
                doc_ids,
                positives.get(query_id, []),
                query_scores,
                query_indices,
                config,
            )
        progress.update(len(chunk))
    progress.close()
    dataset = Dataset.from_dict(rows, features=CANDIDATE_FEATURES)
    _log_summary(dataset, config.top_k)
    return dataset


def mine_from_dataset(
    retriever: SentenceTransformer,
    dataset: RetrievalDataset,
    config: MiningConfig | None = None,
    min_relevance: int = 1,
    cache: EmbeddingCache | None = None,
) -> Dataset:
    """:func:`mine_candidates` over a loaded BEIR split (its queries, corpus and qrels)."""
    positives = positives_from_qrels(dataset.qrels, min_relevance)
    return mine_candidates(retriever, dataset.queries, dataset.corpus, positives, config, cache)


def _similarity(model: SentenceTransformer) -> str:
    name = str(model.similarity_fn_name or "cosine")
    name = {"dot_product": "dot", "dot_score": "dot", "cos_sim": "cosine"}.get(name, name)
    if name not in ("cosine", "dot", "euclidean"):
        raise ValueError(f"Mining supports cosine, dot and euclidean retrievers; this one uses {name!r}.")
    return name


def _known_positives(
    positives: Mapping[str, Iterable[str]], queries: Mapping[str, str], corpus: Mapping[str, str]
) -> dict[str, list[str]]:
    known, unknown = {}, 0
    for query_id, doc_ids in positives.items():
        if query_id not in queries:
            continue
        doc_ids = list(dict.fromkeys(doc_ids))
        known[query_id] = [doc_id for doc_id in doc_ids if doc_id in corpus]
        unknown += len(doc_ids) - len(known[query_id])
    if unknown:
        logger.warning("Mining: %d positive document id(s) are not in the corpus and were ignored.", unknown)
    return known


def _append_row(rows, query_id, queries, corpus, doc_ids, positive_ids, scores, indices, config) -> None:
    positive_set = set(positive_ids)
    candidate_ids, ranks, kept_scores = [], [], []
    for rank, (index, score) in enumerate(zip(indices, scores, strict=True), start=1):
        if index < 0:  # fewer hits than asked (tiny corpus)
            break
        doc_id = doc_ids[index]
        if doc_id in positive_set:
            continue
        candidate_ids.append(doc_id)
        ranks.append(rank)
        kept_scores.append(float(score))
        if len(candidate_ids) == config.top_k:
            break
    rows["query_id"].append(query_id)
    rows["query"].append(queries[query_id])
    rows["positive_ids"].append(list(positive_ids))
    rows["positive_texts"].append([corpus[d] for d in positive_ids] if config.include_texts else [])
    rows["candidate_ids"].append(candidate_ids)
    rows["candidate_texts"].append([corpus[d] for d in candidate_ids] if config.include_texts else [])
    rows["candidate_ranks"].append(ranks)
    rows["candidate_scores"].append(kept_scores)


def _log_summary(dataset: Dataset, top_k: int) -> None:
    counts = np.array([len(ids) for ids in dataset["candidate_ids"]])
    logger.info(
        "Mined %d queries: %.1f candidates per query on average (top_k=%d); %d with none, %d with fewer than top_k.",
        len(counts),
        counts.mean() if len(counts) else 0.0,
        top_k,
        int((counts == 0).sum()),
        int((counts < top_k).sum()),
    )


# ----------------------------------------------------------------------------------------------- storage


def save_candidates(dataset: Dataset, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Save a candidate dataset with ``save_to_disk``, atomically (the folder appears complete or not at all)."""
    _check_columns(dataset, "the dataset to save")
    with atomic_directory(path, overwrite=overwrite) as tmp:
        dataset.save_to_disk(str(tmp))
    return Path(path)


def load_candidates(path: str | os.PathLike) -> Dataset:
    """Load a candidate dataset saved by :func:`save_candidates`, checking its columns."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such candidate folder (write one with save_candidates).")
    try:
        dataset = load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as error:
        raise ValueError(f"{path}: not a saved datasets.Dataset ({error}).") from error
    if not isinstance(dataset, Dataset):
        raise ValueError(f"{path}: holds a {type(dataset).__name__}, expected one Dataset of candidates.")
    _check_columns(dataset, str(path))
    return dataset


def _check_columns(dataset: Dataset, where: str) -> None:
    missing = [name for name in CANDIDATE_COLUMNS if name not in dataset.column_names]
    if missing:
        raise ValueError(f"{where}: missing candidate column(s) {missing} (has {dataset.column_names}).")
