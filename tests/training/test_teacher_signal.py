import logging
import math

import numpy as np
import pytest

from asym_st.training.config_io import ConfigError
from asym_st.training.teacher_signal import require_useful_teacher, teacher_signal

RNG = np.random.default_rng(0)


def _retriever(rows: int = 50, candidates: int = 8) -> np.ndarray:
    """Cosine-like scores (gaps ~0.05) that rank the positive (column 0) first in every row."""
    scores = 0.5 + 0.05 * RNG.random((rows, candidates))
    scores[:, 0] = scores.max(axis=1) + 0.01
    return scores


def test_a_sharper_teacher_with_the_same_ranking_is_measured_and_accepted(caplog):
    retriever = _retriever()
    teacher = retriever * 100  # same ranking, logit scale: gaps 100× the cosines'
    signal = teacher_signal(teacher, retriever, teacher_temperature=100.0, student_temperature=2.0)
    assert signal.teacher_top1 == signal.retriever_top1 == 1.0 and signal.chance_top1 == pytest.approx(1 / 8)
    assert signal.teacher_spread == pytest.approx(100 * signal.retriever_spread)
    assert signal.implied_spread_ratio == pytest.approx(100 * 2.0 / 100.0)  # gaps × τ_s / τ_t
    assert signal.matched_teacher_temperature == pytest.approx(2.0 * 100)
    with caplog.at_level(logging.WARNING):
        require_useful_teacher(signal, "good-ce")  # no override needed, no error, no warning
    assert caplog.text == ""


def test_the_target_entropy_is_that_of_the_softmax_over_filled_slots():
    teacher = np.array([[math.log(3.0), 0.0, 0.0, math.nan]])  # softmax over 3 slots: (0.6, 0.2, 0.2)
    retriever = np.array([[0.9, 0.1, 0.2, 0.3]])
    signal = teacher_signal(teacher, retriever, teacher_temperature=1.0)
    entropy = -(0.6 * math.log(0.6) + 2 * 0.2 * math.log(0.2))
    assert signal.target_entropy_ratio == pytest.approx(entropy / math.log(3))
    assert signal.candidates == 3 and signal.chance_top1 == pytest.approx(1 / 3)


def test_a_flat_teacher_flattens_the_gaps_and_is_refused_unless_allowed(caplog):
    retriever = _retriever()
    flat = retriever + 1e-4 * RNG.standard_normal(retriever.shape)  # right ranking, almost no spread
    flat[:, 0] = flat.max(axis=1) + 1e-4
    signal = teacher_signal(flat * 100, retriever, teacher_temperature=2000.0)
    assert signal.teacher_top1 == 1.0 and signal.target_entropy_ratio > 0.9999
    assert signal.implied_spread_ratio == pytest.approx(1 / 20, rel=0.05)  # 100 / 2000
    with pytest.raises(ConfigError, match=r"temperature=2000 .*flattens .* 20-fold.*teacher_temperature=100 would"):
        require_useful_teacher(signal, "flat-ce")
    with caplog.at_level(logging.WARNING):
        require_useful_teacher(signal, "flat-ce", allow_weaker_teacher=True)
    assert "flattens" in caplog.text


def test_a_teacher_that_ranks_worse_than_the_retriever_is_refused_unless_allowed():
    retriever = _retriever()
    worse = -retriever  # the positive is always last
    signal = teacher_signal(worse, retriever, teacher_temperature=1.0)
    assert signal.teacher_top1 == 0.0
    with pytest.raises(
        ConfigError, match=r"worse-ce ranks .* in 0\.0% .*does in 100\.0%, chance in 12\.5%.*allow_weaker"
    ):
        require_useful_teacher(signal, "worse-ce")
    require_useful_teacher(signal, "worse-ce", allow_weaker_teacher=True)  # allowed: no error


def test_empty_slots_are_skipped_per_row_and_shapes_are_checked():
    retriever = _retriever(rows=4)
    teacher = retriever.copy()
    teacher[:, 3] = math.nan  # every row has an empty slot: still measured, over the others
    signal = teacher_signal(teacher, retriever, 1.0)
    assert signal.rows == 4 and signal.candidates == 7 and signal.teacher_top1 == 1.0
    with pytest.raises(ValueError, match="rows × candidates"):
        teacher_signal(teacher[:, :1], retriever[:, :1], 1.0)
    only_positive = np.full((2, 3), math.nan)
    only_positive[:, 0] = 1.0
    with pytest.raises(ValueError, match="a positive and a negative"):
        teacher_signal(only_positive, retriever[:2, :3], 1.0)


def test_a_retriever_without_spread_leaves_the_ratios_undefined():
    retriever = np.tile([0.5, 0.5, 0.5], (3, 1))
    signal = teacher_signal(_retriever(rows=3, candidates=3), retriever, 1.0)
    assert signal.implied_spread_ratio is None and signal.matched_teacher_temperature is None
