"""Evaluation: retrieval quality, latency, trade-offs."""

from asym_st.data.sources import load_retrieval_source
from asym_st.evaluation.divergence import TowerDivergence, knn_kl_divergence, tower_divergence
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
from asym_st.evaluation.tradeoff import TradeoffConfig, TradeoffResult, TradeoffRow, plot_tradeoff, tradeoff_sweep

# mteb takes seconds to import; its integration loads on first use (``from asym_st.evaluation import run_mteb``).
_MTEB_NAMES = ("AsymSTEncoder", "beir_mteb_task", "mteb_to_retrieval_result", "resolve_mteb_task", "run_mteb")


def __getattr__(name: str):
    if name in _MTEB_NAMES:
        from asym_st.evaluation import mteb_integration

        return getattr(mteb_integration, name)
    raise AttributeError(f"module 'asym_st.evaluation' has no attribute {name!r}")


__all__ = [
    "TowerDivergence",
    "knn_kl_divergence",
    "tower_divergence",
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
    "TradeoffConfig",
    "TradeoffResult",
    "TradeoffRow",
    "plot_tradeoff",
    "tradeoff_sweep",
    *_MTEB_NAMES,
]
