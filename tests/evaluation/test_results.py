"""save_results / load_results: the shared eval/ schema, written atomically, nothing invented when missing."""

from __future__ import annotations

import json

import pytest

from asym_st.evaluation.latency import LatencyResult, latency_report
from asym_st.evaluation.results import load_results, result_file_stem, save_results
from asym_st.evaluation.retrieval import RetrievalResult


def _result(dataset="scifact", split="test", ndcg=0.5) -> RetrievalResult:
    metrics = {"ndcg_at_10": ndcg, "recall_at_100": 0.9, "mrr_at_10": 0.4, "map": 0.3}
    return RetrievalResult(
        model="m",
        dataset=dataset,
        split=split,
        source="/data/" + dataset,
        metrics=metrics,
        num_queries=2,
        num_documents=10,
        timings={"total_s": 1.0},
        per_query={"q1": metrics, "q2": metrics},
    )


def _latency(model, ms, batch) -> LatencyResult:
    return LatencyResult(
        model, "query", batch, ms * batch, ms * batch * 1.2, 0.1, ms * batch - 0.1, ms, 1000 / ms, 10, 3
    )


def test_empty_model_folder_loads_as_nothing(tmp_path):
    assert load_results(tmp_path) == {
        "retrieval": [],
        "retention": None,
        "latency": None,
        "tradeoff": None,
        "training_config": None,
        "tradeoff_png": None,
        "mteb": [],
    }


def test_round_trip(tmp_path):
    (tmp_path / "training_config.json").write_text(json.dumps({"method": "qed"}))
    latency = latency_report(
        [_latency("q", 2.0, 1), _latency("q", 0.5, 32)], [_latency("t", 6.0, 1), _latency("t", 1.0, 32)]
    )
    assert latency["speedup"] == {"1": 3.0, "32": 2.0}
    written = save_results(
        tmp_path,
        retrieval=[_result(), _result("org/nf corpus", "dev")],
        retention={"teacher": "t", "student": "s", "rows": []},
        latency=latency,
        tradeoff={"rows": [{"layers": 1, "retention": 0.5, "speedup": 4.0}]},
        tradeoff_png=b"\x89PNG fake",
        mteb=[{"task_name": "SciFact", "scores": {}}],
    )
    assert (tmp_path / "eval" / "retrieval" / "scifact__test.per_query.json").is_file()
    assert (tmp_path / "eval" / "retrieval" / f"{result_file_stem('org/nf corpus', 'dev')}.json").is_file()
    assert len(written["retrieval"]) == 4
    loaded = load_results(tmp_path)
    assert [r["dataset"] for r in loaded["retrieval"]] == ["org/nf corpus", "scifact"]
    assert loaded["retrieval"][1]["metrics"]["ndcg_at_10"] == 0.5
    assert "per_query" not in loaded["retrieval"][1]
    assert loaded["latency"]["speedup"]["1"] == 3.0 and len(loaded["latency"]["results"]) == 4
    assert loaded["tradeoff"]["rows"][0]["layers"] == 1
    assert loaded["tradeoff_png"].endswith("tradeoff.png")
    assert loaded["training_config"] == {"method": "qed"}
    assert loaded["mteb"][0]["task_name"] == "SciFact"
    assert not list(tmp_path.rglob("*.tmp"))  # nothing half-written left behind


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        save_results(tmp_path / "missing", retrieval=_result())
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "retention.json").write_text("{broken")
    with pytest.raises(ValueError, match="retention.json"):
        load_results(tmp_path)


def test_mteb_scored_result_does_not_overwrite_asym_st_result(tmp_path):
    mteb_scored = _result(ndcg=0.6)
    mteb_scored.evaluator = "mteb 2.26.24"
    save_results(tmp_path, retrieval=[_result(ndcg=0.5), mteb_scored])
    stored = {r["evaluator"]: r["metrics"]["ndcg_at_10"] for r in load_results(tmp_path)["retrieval"]}
    assert stored == {"asym-st": 0.5, "mteb 2.26.24": 0.6}
