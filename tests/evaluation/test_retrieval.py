"""evaluate_retrieval on tiny models: routes, cache reuse across query towers, cache invalidation, options."""

from __future__ import annotations

import numpy as np
import pytest
from sentence_transformers import SentenceTransformer

from asym_st.data import EmbeddingCache, load_beir
from asym_st.evaluation import RetrievalEvalConfig, evaluate_retrieval
from asym_st.evaluation.metrics import compute_metrics
from tests.evaluation.conftest import write_beir


class CallCounter:
    """Counts the texts a model method encodes (wraps the bound method on the instance)."""

    def __init__(self, model: SentenceTransformer, method: str) -> None:
        self.texts = 0
        original = getattr(model, method)

        def counted(sentences, *args, **kwargs):
            self.texts += len(sentences) if isinstance(sentences, list) else 1
            return original(sentences, *args, **kwargs)

        setattr(model, method, counted)


def _config(tmp_path, **kwargs) -> RetrievalEvalConfig:
    return RetrievalEvalConfig(cache=EmbeddingCache(tmp_path / "cache"), show_progress_bar=False, **kwargs)


def test_metrics_equal_brute_force_search(tiny_students, tiny_beir, tmp_path):
    model = tiny_students[0]
    dataset = load_beir(tiny_beir)
    result = evaluate_retrieval(model, dataset, _config(tmp_path))
    # Independent path: brute-force cosine with numpy, same pytrec_eval scorer.
    docs = model.encode_document(list(dataset.corpus.values()), normalize_embeddings=True)
    queries = model.encode_query(list(dataset.queries.values()), normalize_embeddings=True)
    scores = queries @ docs.T
    run = {q: {d: float(scores[i, j]) for j, d in enumerate(dataset.corpus)} for i, q in enumerate(dataset.queries)}
    expected, _ = compute_metrics(dataset.qrels, run)
    assert result.metrics == pytest.approx(expected, abs=1e-5)
    assert set(result.metrics) == {"ndcg_at_10", "recall_at_100", "mrr_at_10", "map"}
    assert result.num_queries == 4 and result.num_documents == 8
    assert set(result.per_query) == set(dataset.queries)
    data = result.to_dict()
    assert data["evaluator"] == "asym-st" and "per_query" not in data and "run" not in data
    assert all(0.0 <= v <= 1.0 for v in data["metrics"].values())


def test_queries_use_query_tower_and_documents_document_tower(tiny_students, tiny_beir, tmp_path):
    model = tiny_students[0]
    queries = CallCounter(model, "encode_query")
    documents = CallCounter(model, "encode_document")
    try:
        evaluate_retrieval(model, load_beir(tiny_beir), _config(tmp_path))
    finally:
        del model.encode_query, model.encode_document  # restore the class methods
    assert queries.texts >= 4 and documents.texts >= 8


def test_second_query_tower_reuses_cached_documents(tiny_students, tiny_beir, tmp_path):
    first, second = tiny_students
    dataset = load_beir(tiny_beir)
    evaluate_retrieval(first, dataset, _config(tmp_path))
    documents = CallCounter(second, "encode_document")
    queries = CallCounter(second, "encode_query")
    try:
        evaluate_retrieval(second, dataset, _config(tmp_path))
    finally:
        del second.encode_document, second.encode_query
    assert documents.texts == 0  # same frozen document tower, same corpus: read back from the cache
    assert queries.texts >= 4  # a different query tower is encoded


def test_corrupt_document_cache_is_rebuilt(tiny_students, tiny_beir, tmp_path):
    model = tiny_students[0]
    dataset = load_beir(tiny_beir)
    config = _config(tmp_path)
    before = evaluate_retrieval(model, dataset, config).metrics
    for array in config.cache.root.glob("*.npy"):
        data = np.load(array)
        np.save(array, np.zeros_like(data))  # same shape and dtype, wrong content: only the checksum catches it
    documents = CallCounter(model, "encode_document")
    try:
        after = evaluate_retrieval(model, dataset, config).metrics
    finally:
        del model.encode_document
    assert documents.texts >= 8
    assert after == pytest.approx(before)


def test_corpus_change_invalidates_cache(tiny_students, tmp_path):
    model = tiny_students[0]
    config = _config(tmp_path)
    evaluate_retrieval(model, load_beir(write_beir(tmp_path / "a")), config)
    changed = write_beir(
        tmp_path / "b",
        documents={
            "d1": ("Paris", "paris"),
            "d3": ("x", "y"),
            "d4": ("", "z"),
            "d5": ("", "w"),
            "d6": ("", "v"),
            "d8": ("", "u"),
        },
    )
    documents = CallCounter(model, "encode_document")
    try:
        evaluate_retrieval(model, load_beir(changed), config)
    finally:
        del model.encode_document
    assert documents.texts >= 6


def test_relevance_level_and_identical_ids(tiny_students, tmp_path):
    model = tiny_students[0]
    dataset = load_beir(write_beir(tmp_path / "graded"))
    strict = evaluate_retrieval(model, dataset, _config(tmp_path, relevance_level=2))
    lenient = evaluate_retrieval(model, dataset, _config(tmp_path))
    # With level 2 only q2's d4 counts, so the three other queries score 0 on the binary metrics.
    assert strict.per_query["q1"]["mrr_at_10"] == 0.0 and lenient.per_query["q1"]["mrr_at_10"] > 0.0
    assert strict.per_query["q1"]["ndcg_at_10"] == lenient.per_query["q1"]["ndcg_at_10"]
    same_ids = write_beir(tmp_path / "same_ids", qrels=[("d1", "d3", 1)], queries={"d1": "paris capital"})
    same = load_beir(same_ids)
    kept = evaluate_retrieval(model, same, _config(tmp_path, top_k=8))
    ignored = evaluate_retrieval(model, same, _config(tmp_path, ignore_identical_ids=True, top_k=8))
    assert "d1" in kept.run["d1"] and len(kept.run["d1"]) == 8
    assert "d1" not in ignored.run["d1"] and len(ignored.run["d1"]) == 7


def test_approximate_index_and_no_cache(tiny_students, tiny_beir, tmp_path):
    model = tiny_students[0]
    dataset = load_beir(tiny_beir)
    exact = evaluate_retrieval(model, dataset, _config(tmp_path))
    hnsw = evaluate_retrieval(model, dataset, _config(tmp_path, index="hnsw"))
    assert hnsw.metrics == pytest.approx(exact.metrics, abs=1e-6)  # 8 documents: HNSW is exact here
    uncached = evaluate_retrieval(
        model, dataset, RetrievalEvalConfig(use_cache=False, show_progress_bar=False, cache=None)
    )
    assert uncached.metrics == pytest.approx(exact.metrics, abs=1e-5)


def test_source_string_and_plain_model(tiny_teacher_path, tiny_beir, tmp_path):
    result = evaluate_retrieval(str(tiny_teacher_path), str(tiny_beir), _config(tmp_path))
    assert result.model == str(tiny_teacher_path)
    assert result.source == str(tiny_beir) and result.split == "test"


def test_uncached_queries_leave_no_cache_entry_and_score_the_same(tiny_students, tiny_beir, tmp_path):
    first, _ = tiny_students
    dataset = load_beir(tiny_beir)
    cached = evaluate_retrieval(first, dataset, _config(tmp_path / "a"))
    entries = {path.name for path in (tmp_path / "a" / "cache").glob("*.npy")}
    assert len(entries) == 2  # documents + queries
    uncached = evaluate_retrieval(first, dataset, _config(tmp_path / "b", cache_queries=False))
    assert len(list((tmp_path / "b" / "cache").glob("*.npy"))) == 1  # documents only
    assert uncached.metrics == pytest.approx(cached.metrics)
