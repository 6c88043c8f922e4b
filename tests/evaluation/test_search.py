"""faiss search: exact results by hand, approximate indexes agree on a small set, metrics follow similarity, options."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from asym_st.evaluation.retrieval import RetrievalEvalConfig
from asym_st.evaluation.search import (
    SearchConfig,
    build_index,
    parse_search_option,
    search,
    set_search_parameters,
    validate_search_options,
)


def test_flat_cosine_ranks_by_angle_not_length():
    documents = np.array([[10.0, 0.0], [0.7, 0.7], [0.0, 1.0]], dtype=np.float32)
    query = np.array([[0.6, 0.8]], dtype=np.float32)
    scores, indices = search(build_index(documents, SearchConfig(similarity="cosine")), query, 3, "cosine")
    assert indices[0].tolist() == [1, 2, 0]
    assert scores[0][0] == pytest.approx((0.6 * 0.7 + 0.8 * 0.7) / (0.7 * np.sqrt(2)), rel=1e-5)


def test_dot_keeps_lengths_and_euclidean_scores_are_negated_distances():
    documents = np.array([[10.0, 0.0], [0.7, 0.7], [0.0, 1.0]], dtype=np.float32)
    query = np.array([[0.6, 0.8]], dtype=np.float32)
    _, dot_indices = search(build_index(documents, SearchConfig(similarity="dot")), query, 3, "dot")
    assert dot_indices[0][0] == 0  # the long vector wins under dot product
    l2_scores, l2_indices = search(build_index(documents, SearchConfig(similarity="euclidean")), query, 1, "euclidean")
    assert l2_indices[0][0] == 1
    assert l2_scores[0][0] == pytest.approx(-((0.1**2) + (0.1**2)), rel=1e-4)  # faiss returns squared L2


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_approximate_indexes_find_exact_neighbours_on_small_data(kind):
    rng = np.random.default_rng(0)
    documents = rng.normal(size=(2000, 16)).astype(np.float32)
    queries = documents[:20] + 0.01 * rng.normal(size=(20, 16)).astype(np.float32)
    config = SearchConfig(index=kind, ivf_nprobe=64)
    _, indices = search(build_index(documents, config), queries, 5, "cosine")
    assert (indices[:, 0] == np.arange(20)).mean() >= 0.95


def test_top_k_larger_than_corpus_and_bad_settings():
    documents = np.eye(3, dtype=np.float32)
    _, indices = search(build_index(documents), documents, 100)
    assert indices.shape == (3, 3)
    with pytest.raises(ValueError, match="index"):
        SearchConfig(index="annoy")
    with pytest.raises(ValueError, match="manhattan"):
        SearchConfig(similarity="manhattan")


@pytest.fixture(autouse=True)
def _one_faiss_thread():
    # faiss' OpenMP threads spin-wait: on a busy 2-core machine, training with 2 threads runs ~10x slower than 1.
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(threads)


def _clustered(count: int, dim: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(64, dim))
    return (centres[rng.integers(0, 64, size=count)] + 0.3 * rng.normal(size=(count, dim))).astype(np.float32)


def _overlap(approximate: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(e)) / len(e) for a, e in zip(approximate, exact, strict=True)]))


def test_ivfpq_returns_mostly_the_exact_neighbours_and_refinement_closes_the_gap():
    documents = _clustered(3000, 32)  # 6-bit codes: 39 · 2**6 = 2,496 documents suffice to train them
    queries = _clustered(50, 32, seed=1)
    _, exact = search(build_index(documents), queries, 20)
    config = SearchConfig(index="ivfpq", ivfpq_m=16, ivfpq_nbits=6, ivf_nprobe=32)
    index = build_index(documents, config)
    assert isinstance(index, faiss.IndexIVFPQ) and (index.pq.M, index.pq.nbits, index.nprobe) == (16, 6, 32)
    assert not index.do_polysemous_training
    _, pq = search(index, queries, 20)
    assert _overlap(pq, exact) >= 0.75
    refined = build_index(
        documents, SearchConfig(index="ivfpq", ivfpq_m=16, ivfpq_nbits=6, ivf_nprobe=32, ivfpq_refine=4)
    )
    assert isinstance(refined, faiss.IndexRefine) and refined.k_factor == 4
    scores, indices = search(refined, queries, 20)
    assert _overlap(indices, exact) >= 0.95
    assert np.all(np.diff(scores, axis=1) <= 1e-6)  # re-ranked by exact similarity: sorted, higher is better


def test_ivfpq_defaults_bad_m_and_small_corpus():
    documents = _clustered(700, 24)
    index = build_index(documents, SearchConfig(index="ivfpq", ivfpq_nbits=4))  # 39 · 16 = 624 documents suffice
    assert index.pq.M == 6 and index.pq.nbits == 4  # default m: dimension / 4
    with pytest.raises(ValueError, match=r"ivfpq_m=5 must divide the embedding dimension 24.*\[1, 2, 3, 4, 6"):
        build_index(documents, SearchConfig(index="ivfpq", ivfpq_m=5, ivfpq_nbits=4))
    with pytest.raises(ValueError, match=r"needs at least 9984 documents.*has 700.*ivfpq_nbits"):
        build_index(documents, SearchConfig(index="ivfpq"))
    with pytest.raises(ValueError, match="ivfpq_nbits"):
        SearchConfig(ivfpq_nbits=0)
    with pytest.raises(ValueError, match="ivfpq_refine"):
        SearchConfig(ivfpq_refine=-1)


def test_search_parameters_change_on_a_built_index():
    documents = _clustered(2000, 16)
    ivf = build_index(documents, SearchConfig(index="ivf", ivf_nlist=20, ivf_nprobe=4))
    assert ivf.nprobe == 4
    assert set_search_parameters(ivf, SearchConfig(index="ivf", ivf_nprobe=500)).nprobe == 20  # capped at nlist
    hnsw = build_index(documents, SearchConfig(index="hnsw", hnsw_ef_search=40))
    assert hnsw.hnsw.efSearch == 40
    assert set_search_parameters(hnsw, SearchConfig(index="hnsw", hnsw_ef_search=300)).hnsw.efSearch == 300


def test_search_options_parse_validate_and_round_trip():
    options = dict(
        parse_search_option(text)
        for text in ("ivf_nprobe=32", " ivfpq_m = 48 ", "ivf_nlist=auto", "ivfpq_refine=4", "hnsw_ef_search=256")
    )
    assert options == {"ivf_nprobe": 32, "ivfpq_m": 48, "ivf_nlist": None, "ivfpq_refine": 4, "hnsw_ef_search": 256}
    config = SearchConfig(index="ivfpq", **options)
    assert {key: getattr(config, key) for key in options} == options
    assert dict(parse_search_option(f"{key}={value}") for key, value in options.items()) == options
    assert RetrievalEvalConfig(index="ivfpq", search_options=options).summary()["ivfpq_m"] == 48
    with pytest.raises(ValueError, match="not KEY=VALUE"):
        parse_search_option("ivf_nprobe")
    with pytest.raises(ValueError, match=r"unknown search option\(s\) nprobe; choose from hnsw_m, "):
        parse_search_option("nprobe=3")
    with pytest.raises(ValueError, match="unknown search option.*index"):
        parse_search_option("index=hnsw")  # has its own setting
    with pytest.raises(ValueError, match="ivf_nprobe expects an integer, got 'many'"):
        parse_search_option("ivf_nprobe=many")
    with pytest.raises(ValueError, match="ivf_nprobe needs a value"):
        parse_search_option("ivf_nprobe=none")
    with pytest.raises(ValueError, match="unknown search option.*hnsw_ef"):
        validate_search_options({"hnsw_ef": 10})
    with pytest.raises(ValueError, match="unknown search option.*efSearch"):
        RetrievalEvalConfig(search_options={"efSearch": 10})
