"""Evaluation: retrieval quality, latency, trade-offs."""

from asym_st.evaluation.latency import LatencyConfig, LatencyResult, hardware_description, measure_latency

__all__ = ["LatencyConfig", "LatencyResult", "hardware_description", "measure_latency"]
