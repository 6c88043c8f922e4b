"""faiss search: exact results by hand, approximate indexes agree on a small set, metrics follow similarity."""

from __future__ import annotations

import numpy as np
import pytest

from asym_st.evaluation.search import SearchConfig, build_index, search


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
