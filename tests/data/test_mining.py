import time

import numpy as np
import pytest
from sentence_transformers import SentenceTransformer

from asym_st import QueryTowerConfig, build_asymmetric_model
from asym_st.data import EmbeddingCache
from asym_st.data.beir import load_beir
from asym_st.data.mining import (
    CANDIDATE_COLUMNS,
    MiningConfig,
    load_candidates,
    mine_candidates,
    mine_from_dataset,
    positives_from_qrels,
    save_candidates,
)
from tests.conftest import shared_path

CORPUS = {
    "d1": "the cat is a small animal",
    "d2": "paris is the capital city of france",
    "d3": "a protein in the cell",
    "d4": "the dog and the cat",
    "d5": "covid vaccine study result",
    "d6": "dense retrieval with a query tower",
    "d7": "gene expression in a cell",
    "d8": "the capital of france",
}
QUERIES = {"q1": "what is the capital of france", "q2": "cat and dog", "q3": "cell protein gene"}
POSITIVES = {"q1": ["d2"], "q2": ["d4", "d1"], "q3": ["d3", "missing-doc"]}


@pytest.fixture()
def teacher(tiny_teacher_path):
    return SentenceTransformer(str(tiny_teacher_path))


def _full_ranking(model, query):
    q = model.encode_query([QUERIES[query]], convert_to_tensor=True)
    d = model.encode_document(list(CORPUS.values()), convert_to_tensor=True)
    scores = model.similarity(q, d)[0].numpy()
    order = np.argsort(-scores, kind="stable")
    return [list(CORPUS)[i] for i in order], scores[order]


def test_top_k_without_positives_keeps_ranks_and_scores(teacher, tmp_path):
    cache = EmbeddingCache(tmp_path / "cache")
    mined = mine_candidates(teacher, QUERIES, CORPUS, POSITIVES, MiningConfig(top_k=3), cache)
    assert tuple(mined.column_names) == CANDIDATE_COLUMNS
    assert mined["query_id"] == ["q1", "q2", "q3"]
    for row in mined:
        ranking, scores = _full_ranking(teacher, row["query_id"])
        positives = set(POSITIVES[row["query_id"]])
        expected = [(rank, doc) for rank, doc in enumerate(ranking, start=1) if doc not in positives][:3]
        assert row["candidate_ids"] == [doc for _, doc in expected]
        assert row["candidate_ranks"] == [rank for rank, _ in expected]
        np.testing.assert_allclose(row["candidate_scores"], [scores[r - 1] for r, _ in expected], atol=1e-5)
        assert not positives & set(row["candidate_ids"])
        assert row["candidate_texts"] == [CORPUS[d] for d in row["candidate_ids"]]
        assert row["query"] == QUERIES[row["query_id"]]
    # positives not in the corpus are dropped from positive_ids (with a warning)
    assert mined[2]["positive_ids"] == ["d3"] and mined[2]["positive_texts"] == [CORPUS["d3"]]


def test_asymmetric_retriever_routes_and_embedding_cache_reuse(tiny_teacher_path, tmp_path):
    model = build_asymmetric_model(tiny_teacher_path, QueryTowerConfig(layers=[0]))
    cache = EmbeddingCache(tmp_path / "cache")
    mined = mine_candidates(model, QUERIES, CORPUS, POSITIVES, MiningConfig(top_k=2, include_texts=False), cache)
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 2  # documents + queries
    ranking, _ = _full_ranking(model, "q1")
    assert mined[0]["candidate_ids"] == [d for d in ranking if d != "d2"][:2]
    assert mined[0]["candidate_texts"] == [] and mined[0]["positive_texts"] == []
    # a second run reads the embeddings back (no new cache entries)
    mine_candidates(model, QUERIES, CORPUS, POSITIVES, MiningConfig(top_k=2), cache)
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 2


def test_top_k_larger_than_corpus(teacher, tmp_path):
    mined = mine_candidates(teacher, QUERIES, CORPUS, POSITIVES, MiningConfig(top_k=50), EmbeddingCache(tmp_path))
    assert [len(ids) for ids in mined["candidate_ids"]] == [7, 6, 7]
    assert all(ranks == sorted(ranks) for ranks in mined["candidate_ranks"])


def test_no_positives_for_a_query(teacher, tmp_path):
    mined = mine_candidates(teacher, QUERIES, CORPUS, None, MiningConfig(top_k=8), EmbeddingCache(tmp_path))
    for row in mined:
        assert row["positive_ids"] == [] and len(row["candidate_ids"]) == 8
        assert row["candidate_ranks"] == list(range(1, 9))


def test_save_and_load_round_trip(teacher, tmp_path):
    mined = mine_candidates(teacher, QUERIES, CORPUS, POSITIVES, MiningConfig(top_k=2), EmbeddingCache(tmp_path / "c"))
    save_candidates(mined, tmp_path / "mined")
    loaded = load_candidates(tmp_path / "mined")
    assert loaded[:] == mined[:]
    with pytest.raises(FileExistsError):
        save_candidates(mined, tmp_path / "mined")
    with pytest.raises(FileNotFoundError, match="no such candidate folder"):
        load_candidates(tmp_path / "nowhere")
    mined.remove_columns("candidate_ranks").save_to_disk(str(tmp_path / "old"))
    with pytest.raises(ValueError, match="candidate_ranks"):
        load_candidates(tmp_path / "old")


def test_bad_inputs(teacher, tmp_path):
    cache = EmbeddingCache(tmp_path)
    with pytest.raises(ValueError, match="No queries"):
        mine_candidates(teacher, {}, CORPUS, cache=cache)
    with pytest.raises(ValueError, match="corpus is empty"):
        mine_candidates(teacher, QUERIES, {}, cache=cache)
    with pytest.raises(ValueError, match="top_k must be a positive integer"):
        MiningConfig(top_k=0)


def test_positives_from_qrels_threshold():
    qrels = {"q": {"a": 2, "b": 1, "c": 0}}
    assert positives_from_qrels(qrels) == {"q": ["a", "b"]}
    assert positives_from_qrels(qrels, min_relevance=2) == {"q": ["a"]}


@pytest.mark.real
def test_scifact_subset_with_minilm(minilm_name, tmp_path):
    data = load_beir(shared_path("data", "beir", "scifact"), split="train").subsample(max_queries=20, max_documents=150)
    model = SentenceTransformer(minilm_name, device="cpu")
    model.max_seq_length = 128  # keeps the test well under a minute on 2 slow cores
    start = time.perf_counter()
    mined = mine_from_dataset(model, data, MiningConfig(top_k=10, show_progress_bar=False), cache=EmbeddingCache())
    elapsed = time.perf_counter() - start
    assert len(mined) == 20 and all(len(ids) == 10 for ids in mined["candidate_ids"])
    for row in mined:
        assert not set(row["positive_ids"]) & set(row["candidate_ids"])
    # a real retriever ranks a judged positive first for most SciFact queries: the first candidate's rank is then 2+
    found_first = np.mean([row["candidate_ranks"][0] > 1 for row in mined])
    assert found_first >= 0.6, found_first
    assert elapsed < 120
