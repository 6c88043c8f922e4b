"""Batch samplers and pair selection (topic-aware, balanced margin, false-negative filter)."""

from asym_st.sampling.balanced_margin import (
    PAIR_COLUMNS,
    BalancedMarginSampler,
    MarginPairs,
    MarginPairsConfig,
    build_margin_pairs,
)
from asym_st.sampling.false_negatives import (
    DynamicFalseNegativeFilter,
    FalseNegativeFilterConfig,
    FilterPeriod,
    positive_quantile_threshold,
    scheduled_quantile,
)
from asym_st.sampling.topic_aware import ClusteringConfig, QueryClusters, TopicAwareBatchSampler, cluster_queries

__all__ = [
    "PAIR_COLUMNS",
    "BalancedMarginSampler",
    "MarginPairs",
    "MarginPairsConfig",
    "build_margin_pairs",
    "ClusteringConfig",
    "QueryClusters",
    "TopicAwareBatchSampler",
    "cluster_queries",
    "DynamicFalseNegativeFilter",
    "FalseNegativeFilterConfig",
    "FilterPeriod",
    "positive_quantile_threshold",
    "scheduled_quantile",
]
