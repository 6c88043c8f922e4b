"""Retention report: ratios, the paired test, the shared document cache, JSON/markdown output."""

from __future__ import annotations

import pytest

from asym_st.data import EmbeddingCache, load_beir
from asym_st.evaluation import RetrievalEvalConfig, paired_test, retention_report
from asym_st.evaluation.retention import retention_row
from asym_st.evaluation.retrieval import RetrievalResult


def test_paired_test_detects_a_consistent_drop_and_not_noise():
    teacher = [0.8, 0.7, 0.9, 0.6, 0.75, 0.85, 0.65, 0.7]
    worse = [t - 0.2 + 0.01 * i for i, t in enumerate(teacher)]
    assert paired_test(teacher, worse, "ttest_rel") < 0.001
    assert paired_test(teacher, worse, "wilcoxon") < 0.05
    assert paired_test(teacher, teacher) == 1.0
    with pytest.raises(ValueError, match="Unknown paired test"):
        paired_test(teacher, worse, "mannwhitney")


def _result(name, scores):
    per_query = {q: {"ndcg_at_10": s, "recall_at_100": s, "mrr_at_10": s, "map": s} for q, s in scores.items()}
    means = {m: sum(r[m] for r in per_query.values()) / len(per_query) for m in next(iter(per_query.values()))}
    return RetrievalResult(name, "d", "test", "", means, len(scores), 5, per_query=per_query)


def test_retention_row_ratio():
    row = retention_row(_result("t", {"a": 0.8, "b": 0.4}), _result("s", {"a": 0.6, "b": 0.3}))
    assert row.retention_ndcg_at_10 == pytest.approx(0.75)
    assert row.num_queries == 2 and row.test == "ttest_rel"
    zero = retention_row(_result("t", {"a": 0.0, "b": 0.0}), _result("s", {"a": 0.0, "b": 0.0}))
    assert zero.retention_ndcg_at_10 is None and zero.p_value == 1.0
    with pytest.raises(ValueError, match="different queries"):
        retention_row(_result("t", {"a": 0.8, "b": 0.4}), _result("s", {"a": 0.6}))


def test_report_on_tiny_models(tiny_teacher_path, tiny_students, tiny_beir, tmp_path):
    config = RetrievalEvalConfig(cache=EmbeddingCache(tmp_path / "cache"), show_progress_bar=False)
    dataset = load_beir(tiny_beir)
    report = retention_report(str(tiny_teacher_path), tiny_students[0], [dataset], config, student_name="student")
    row = report.rows[0]
    assert row.teacher == report.teacher_results[0].metrics
    assert row.student == report.student_results[0].metrics
    if row.teacher["ndcg_at_10"] > 0:
        assert row.retention_ndcg_at_10 == pytest.approx(row.student["ndcg_at_10"] / row.teacher["ndcg_at_10"])
    assert 0.0 <= row.p_value <= 1.0
    data = report.to_dict()
    assert data["teacher"] == str(tiny_teacher_path) and data["student"] == "student"
    assert set(data["rows"][0]) >= {
        "dataset",
        "split",
        "teacher",
        "student",
        "retention_ndcg_at_10",
        "p_value",
        "test",
        "num_queries",
    }
    markdown = report.to_markdown()
    assert "| tiny_beir | test | 4 |" in markdown
    # Teacher and student share the document tower: one document entry in the cache, plus two query entries.
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 3
