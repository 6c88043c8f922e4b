"""Evaluation: retrieval quality, latency, trade-offs."""

from asym_st.data.sources import load_retrieval_source
from asym_st.evaluation.latency import (
    LatencyConfig,
    LatencyResult,
    hardware_description,
    latency_report,
    measure_latency,
)
from asym_st.evaluation.metrics import METRIC_NAMES, compute_metrics
from asym_st.evaluation.results import load_results, save_results
from asym_st.evaluation.retention import RetentionReport, RetentionRow, paired_test, retention_report
from asym_st.evaluation.retrieval import RetrievalEvalConfig, RetrievalResult, evaluate_retrieval
from asym_st.evaluation.search import SearchConfig, build_index, search

__all__ = [
    "LatencyConfig",
    "LatencyResult",
    "hardware_description",
    "latency_report",
    "measure_latency",
    "METRIC_NAMES",
    "compute_metrics",
    "load_results",
    "save_results",
    "RetentionReport",
    "RetentionRow",
    "paired_test",
    "retention_report",
    "RetrievalEvalConfig",
    "RetrievalResult",
    "evaluate_retrieval",
    "load_retrieval_source",
    "SearchConfig",
    "build_index",
    "search",
]
