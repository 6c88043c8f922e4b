"""Retention report: how much of the teacher's retrieval quality a student (query tower) keeps.

Teacher and student are evaluated on the same data in one run, sharing the embedding cache: when the student's
document tower is the teacher's (the asym-st default), the corpus is encoded once for both. Per dataset the report
gives both models' metrics, the retention ratio ``student nDCG@10 / teacher nDCG@10``, and a paired significance
test over the per-query nDCG@10 (scipy's ``ttest_rel`` by default, or ``wilcoxon``), because two models'
scores on the same queries are not independent samples.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
from scipy import stats
from sentence_transformers import SentenceTransformer

from asym_st.data.beir import RetrievalDataset
from asym_st.evaluation.metrics import METRIC_NAMES
from asym_st.evaluation.retrieval import (
    RetrievalEvalConfig,
    RetrievalResult,
    evaluate_retrieval,
    load_model,
    model_name,
)

__all__ = ["RetentionRow", "RetentionReport", "retention_report", "paired_test", "retention_row"]

PairedTest = Literal["ttest_rel", "wilcoxon"]


def paired_test(teacher: Sequence[float], student: Sequence[float], test: PairedTest = "ttest_rel") -> float:
    """Two-sided p-value that the two paired score lists differ; 1.0 when they are identical everywhere."""
    teacher, student = np.asarray(teacher, dtype=float), np.asarray(student, dtype=float)
    if teacher.shape != student.shape:
        raise ValueError(f"Paired test needs equal lengths, got {teacher.shape} and {student.shape}.")
    differences = student - teacher
    if len(differences) < 2 or np.allclose(differences, 0.0):
        return 1.0  # no difference to test (scipy would return nan or raise)
    if test == "ttest_rel":
        p_value = stats.ttest_rel(student, teacher).pvalue
    elif test == "wilcoxon":
        p_value = stats.wilcoxon(student, teacher, zero_method="zsplit").pvalue
    else:
        raise ValueError(f"Unknown paired test {test!r}; choose 'ttest_rel' or 'wilcoxon'.")
    return 1.0 if math.isnan(p_value) else float(p_value)


@dataclass
class RetentionRow:
    """One dataset of a retention report."""

    dataset: str
    split: str
    teacher: dict[str, float]
    student: dict[str, float]
    retention_ndcg_at_10: float | None
    p_value: float
    test: str
    num_queries: int
    retention: dict[str, float | None] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _ratio(student: float, teacher: float) -> float | None:
    return None if teacher <= 0 else student / teacher  # undefined when the teacher scores 0


def retention_row(teacher: RetrievalResult, student: RetrievalResult, test: PairedTest = "ttest_rel") -> RetentionRow:
    """Compare two results on the same dataset (queries paired by id)."""
    if (teacher.dataset, teacher.split) != (student.dataset, student.split):
        raise ValueError(
            f"Cannot compare results on different data: {teacher.dataset}/{teacher.split} vs "
            f"{student.dataset}/{student.split}."
        )
    query_ids = sorted(set(teacher.per_query) & set(student.per_query))
    if len(query_ids) != len(teacher.per_query) or len(query_ids) != len(student.per_query):
        raise ValueError("Teacher and student were evaluated on different queries; the paired test needs the same.")
    p_value = paired_test(
        [teacher.per_query[q]["ndcg_at_10"] for q in query_ids],
        [student.per_query[q]["ndcg_at_10"] for q in query_ids],
        test,
    )
    return RetentionRow(
        dataset=teacher.dataset,
        split=teacher.split,
        teacher=dict(teacher.metrics),
        student=dict(student.metrics),
        retention_ndcg_at_10=_ratio(student.metrics["ndcg_at_10"], teacher.metrics["ndcg_at_10"]),
        p_value=p_value,
        test=test,
        num_queries=len(query_ids),
        retention={m: _ratio(student.metrics[m], teacher.metrics[m]) for m in METRIC_NAMES},
    )


@dataclass
class RetentionReport:
    """Teacher vs student over several datasets; :meth:`to_dict` is the ``eval/retention.json`` schema."""

    teacher: str
    student: str
    rows: list[RetentionRow]
    teacher_results: list[RetrievalResult] = field(default_factory=list, repr=False)
    student_results: list[RetrievalResult] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {"teacher": self.teacher, "student": self.student, "rows": [row.to_dict() for row in self.rows]}

    def to_markdown(self, alpha: float = 0.05) -> str:
        """A table: per dataset, both nDCG@10 (in points), the retention and the p-value (``*`` if < alpha)."""
        lines = [
            f"Teacher: `{self.teacher}`  Student: `{self.student}`",
            "",
            "| dataset | split | queries | teacher nDCG@10 | student nDCG@10 | retention | p-value |",
            "|---|---|---:|---:|---:|---:|---:|",
        ]
        for row in self.rows:
            retention = "n/a" if row.retention_ndcg_at_10 is None else f"{row.retention_ndcg_at_10 * 100:.1f}%"
            marker = " *" if row.p_value < alpha else ""
            lines.append(
                f"| {row.dataset} | {row.split} | {row.num_queries} | {row.teacher['ndcg_at_10'] * 100:.2f} | "
                f"{row.student['ndcg_at_10'] * 100:.2f} | {retention} | {row.p_value:.3g}{marker} |"
            )
        test = self.rows[0].test if self.rows else "ttest_rel"
        lines += ["", f"p-value: paired {test} over per-query nDCG@10; * marks p < {alpha}."]
        return "\n".join(lines) + "\n"


def retention_report(
    teacher: SentenceTransformer | str | os.PathLike,
    student: SentenceTransformer | str | os.PathLike,
    datasets: Sequence[RetrievalDataset | str] | RetrievalDataset | str,
    config: RetrievalEvalConfig | None = None,
    test: PairedTest = "ttest_rel",
    teacher_name: str | None = None,
    student_name: str | None = None,
) -> RetentionReport:
    """Evaluate ``teacher`` and ``student`` on each dataset and compare them.

    Args:
        teacher: the teacher (for an asym-st model: its own document tower's model), object, folder or Hub id.
        student: the student, typically an asymmetric model whose document tower is the teacher.
        datasets: :class:`~asym_st.data.beir.RetrievalDataset` objects or sources for
            :func:`~asym_st.data.sources.load_retrieval_source`.
        config: shared :class:`~asym_st.evaluation.retrieval.RetrievalEvalConfig` (same cache, same settings).
        test: ``ttest_rel`` (paired t-test) or ``wilcoxon`` (signed-rank).

    Example::

        report = retention_report("sentence-transformers/all-MiniLM-L6-v2", "minilm-2l", [scifact, nfcorpus])
        print(report.to_markdown())
    """
    if isinstance(datasets, (RetrievalDataset, str, os.PathLike)):
        datasets = [datasets]
    config = config or RetrievalEvalConfig()
    teacher_model, student_model = load_model(teacher), load_model(student)
    teacher_name = teacher_name or model_name(teacher if isinstance(teacher, (str, os.PathLike)) else teacher_model)
    student_name = student_name or model_name(student if isinstance(student, (str, os.PathLike)) else student_model)
    rows, teacher_results, student_results = [], [], []
    for dataset in datasets:
        if not isinstance(dataset, RetrievalDataset):
            from asym_st.data.sources import load_retrieval_source

            dataset = load_retrieval_source(os.fspath(dataset))  # loaded once for both models
        teacher_result = evaluate_retrieval(teacher_model, dataset, config, name=teacher_name)
        student_result = evaluate_retrieval(student_model, dataset, config, name=student_name)
        teacher_results.append(teacher_result)
        student_results.append(student_result)
        rows.append(retention_row(teacher_result, student_result, test))
    return RetentionReport(teacher_name, student_name, rows, teacher_results, student_results)
