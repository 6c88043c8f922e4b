"""The metrics path against hand-checked tiny qrels (values worked out by hand in the comments)."""

from __future__ import annotations

import math

import pytest

from asym_st.evaluation.metrics import compute_metrics, truncate_run

QRELS = {"q1": {"d1": 1, "d2": 2}, "q2": {"d11": 1}, "q3": {"d1": 1}}
RUN = {
    "q1": {"d3": 3.0, "d1": 2.0, "d2": 1.0},
    "q2": {f"d{i}": 100.0 - i for i in range(1, 15)},  # the relevant d11 is at rank 11
    # q3 retrieved nothing: it must still count (as zeros) in the means.
}


def test_hand_checked_values():
    means, per_query = compute_metrics(QRELS, RUN)
    q1 = per_query["q1"]
    # DCG = 1/log2(3) + 2/log2(4); IDCG = 2/log2(2) + 1/log2(3)
    dcg, idcg = 1 / math.log2(3) + 2 / math.log2(4), 2 + 1 / math.log2(3)
    assert q1["ndcg_at_10"] == pytest.approx(dcg / idcg)
    assert q1["mrr_at_10"] == pytest.approx(1 / 2)
    assert q1["map"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert q1["recall_at_100"] == pytest.approx(1.0)
    q2 = per_query["q2"]
    assert q2["mrr_at_10"] == 0.0  # rank 11 is outside MRR@10 ...
    assert q2["recall_at_100"] == pytest.approx(1.0)  # ... but inside Recall@100
    assert q2["map"] == pytest.approx(1 / 11)
    assert per_query["q3"] == {"ndcg_at_10": 0.0, "recall_at_100": 0.0, "mrr_at_10": 0.0, "map": 0.0}
    assert means["mrr_at_10"] == pytest.approx((0.5 + 0 + 0) / 3)
    assert means["recall_at_100"] == pytest.approx(2 / 3)


def test_relevance_level_applies_to_binary_metrics_only():
    _, per_query = compute_metrics({"q1": {"d1": 1, "d2": 2}}, {"q1": RUN["q1"]}, relevance_level=2)
    q1 = per_query["q1"]
    assert q1["mrr_at_10"] == pytest.approx(1 / 3)  # only d2 (grade 2) is relevant, at rank 3
    assert q1["map"] == pytest.approx(1 / 3)
    dcg, idcg = 1 / math.log2(3) + 2 / math.log2(4), 2 + 1 / math.log2(3)
    assert q1["ndcg_at_10"] == pytest.approx(dcg / idcg)  # graded, unchanged


def test_truncate_run_orders_like_trec_eval():
    top = truncate_run({"q": {"a": 1.0, "b": 1.0, "c": 2.0}}, 2)
    assert list(top["q"]) == ["c", "b"]  # ties broken by document id, descending


def test_matches_mteb_scorer():
    from mteb._evaluators.retrieval_metrics import calculate_retrieval_scores

    qrels = {"q1": {"d1": 1, "d2": 2}, "q2": {"d11": 1}}
    run = {"q1": RUN["q1"], "q2": RUN["q2"]}
    means, _ = compute_metrics(qrels, run)
    mteb_scores = calculate_retrieval_scores(run, qrels, [10, 100])
    assert means["ndcg_at_10"] == pytest.approx(mteb_scores.ndcg["NDCG@10"], abs=1e-5)
    assert means["mrr_at_10"] == pytest.approx(mteb_scores.mrr["MRR@10"], abs=1e-5)


def test_empty_qrels_refused():
    with pytest.raises(ValueError, match="qrels are empty"):
        compute_metrics({}, RUN)
