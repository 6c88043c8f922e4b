import numpy as np
import pytest
import torch

from asym_st.sampling import (
    DynamicFalseNegativeFilter,
    FalseNegativeFilterConfig,
    positive_quantile_threshold,
    scheduled_quantile,
)

POOL = [1.0, 2.0, 3.0, 4.0, 5.0]  # the positives' teacher scores


def test_quantile_schedule_is_linear_over_the_periods():
    config = FalseNegativeFilterConfig(quantile=0.9, final_quantile=0.5)
    assert [scheduled_quantile(config, t, 5) for t in range(5)] == pytest.approx([0.9, 0.8, 0.7, 0.6, 0.5])
    assert scheduled_quantile(config, 7, 5) == pytest.approx(0.5)  # clipped after the last period
    assert scheduled_quantile(config, 0, 1) == pytest.approx(0.9)  # a one-period run stays at the start
    constant = FalseNegativeFilterConfig(quantile=0.3)
    assert {scheduled_quantile(constant, t, 4) for t in range(4)} == {0.3}


def test_threshold_per_epoch_and_drop_counts():
    # quantiles 0.75, 0.5, 0.25 over 3 epochs -> thresholds 4.0, 3.0, 2.0 (numpy's linear quantile of 1..5)
    keep = DynamicFalseNegativeFilter(FalseNegativeFilterConfig(quantile=0.75, final_quantile=0.25), POOL)
    keep.start(num_periods=3)
    positives = torch.tensor([5.0, 5.0])
    negatives = torch.tensor([[1.5, 2.5, 3.5], [4.5, float("nan"), 0.0]])
    expected_kept = {
        4.0: [[True, True, True], [False, True, True]],
        3.0: [[True, True, False], [False, True, True]],
        2.0: [[True, False, False], [False, True, True]],
    }
    for epoch, threshold in enumerate([4.0, 3.0, 2.0]):
        assert keep.begin_period(epoch) == pytest.approx(threshold)
        assert keep.begin_period(epoch) == pytest.approx(threshold)  # idempotent within a period
        assert keep.keep_mask(positives, negatives).tolist() == expected_kept[threshold]
        assert keep.keep_mask(positives, negatives).tolist() == expected_kept[threshold]  # a second batch
    periods = keep.summary()["periods"]
    assert [p["threshold"] for p in periods] == pytest.approx([4.0, 3.0, 2.0])
    assert [p["seen"] for p in periods] == [10, 10, 10]  # the NaN slot is not a negative
    assert [p["dropped"] for p in periods] == [2, 4, 6]
    assert (keep.seen, keep.dropped) == (30, 12)
    assert keep.summary()["dropped_fraction"] == pytest.approx(12 / 30)


def test_threshold_per_step_with_the_batch_pool():
    config = FalseNegativeFilterConfig(quantile=1.0, final_quantile=0.0, schedule="step", pool="batch")
    keep = DynamicFalseNegativeFilter(config)  # no global pool needed
    keep.start(num_periods=3)
    positives = torch.tensor([2.0, 6.0])
    negatives = torch.tensor([[1.0, 3.0], [5.0, 7.0]])
    dropped = []
    for step in range(3):  # quantiles 1.0, 0.5, 0.0 of the batch's positives (2, 6): thresholds 6, 4, 2
        assert keep.begin_period(step) is None  # each batch has its own threshold
        dropped.append((~keep(positives, negatives)).sum().item())
    assert dropped == [1, 2, 3]
    assert [p["quantile"] for p in keep.summary()["periods"]] == pytest.approx([1.0, 0.5, 0.0])
    assert keep.summary()["rows_without_negatives"] == 2  # steps 1 and 2: the second row loses both negatives


def test_without_a_callback_the_first_period_starts_on_use():
    keep = DynamicFalseNegativeFilter(FalseNegativeFilterConfig(quantile=0.5), POOL)
    assert keep.keep_mask(torch.tensor([3.0]), torch.tensor([[3.0, 3.5]])).tolist() == [[True, False]]
    assert keep.current.period == 0 and keep.threshold == pytest.approx(3.0)


def test_threshold_helper_and_errors():
    assert positive_quantile_threshold(np.array([1.0, np.nan, 3.0]), 0.5) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="No finite positive score"):
        positive_quantile_threshold([np.nan], 0.5)
    with pytest.raises(ValueError, match="pool='all' needs the teacher scores"):
        DynamicFalseNegativeFilter(FalseNegativeFilterConfig())
    with pytest.raises(ValueError, match=r"quantile must be in \[0, 1\]"):
        FalseNegativeFilterConfig(quantile=1.5)
    with pytest.raises(ValueError, match="schedule='batch'"):
        FalseNegativeFilterConfig(schedule="batch")
    with pytest.raises(ValueError, match="pool='epoch'"):
        FalseNegativeFilterConfig(pool="epoch")
