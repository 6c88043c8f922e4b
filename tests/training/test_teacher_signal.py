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


def test_a_sharper_better_teacher_is_measured_as_such():
    retriever = _retriever()
    teacher = retriever * 100  # same ranking, logit scale: gaps 100× the cosines'
    signal = teacher_signal(teacher, retriever, teacher_temperature=20.0)
    assert signal.teacher_top1 == signal.retriever_top1 == 1.0
    assert signal.teacher_spread == pytest.approx(100 * signal.retriever_spread)
    assert signal.implied_spread_ratio == pytest.approx(5.0)  # 100 / 20
    assert signal.matched_teacher_temperature == pytest.approx(100.0)
    assert 0 < signal.target_entropy_ratio < 1


def test_a_flat_teacher_gives_a_uniform_target_and_a_flattening_warning(caplog):
    retriever = _retriever()
    flat = 0.02 * RNG.standard_normal(retriever.shape)  # a cross-encoder that did not learn
    signal = teacher_signal(flat, retriever, teacher_temperature=20.0)
    assert signal.target_entropy_ratio > 0.9999 and signal.implied_spread_ratio < 0.25
    with caplog.at_level(logging.WARNING):
        require_useful_teacher(signal, "flat-ce", allow_weaker_teacher=True)
    assert "flattens" in caplog.text and "teacher_temperature=" in caplog.text


def test_a_teacher_that_ranks_worse_than_the_retriever_is_refused_unless_allowed():
    retriever = _retriever()
    worse = -retriever  # the positive is always last
    signal = teacher_signal(worse, retriever, teacher_temperature=1.0)
    assert signal.teacher_top1 == 0.0
    with pytest.raises(
        ConfigError,
        match=r"worse-ce ranks the judged positive first in 0\.0% .*does in 100\.0%, chance in 12\.5%.*allow_weaker",
    ):
        require_useful_teacher(signal, "worse-ce")
    require_useful_teacher(signal, "worse-ce", allow_weaker_teacher=True)  # allowed: no error


def test_rows_with_an_empty_slot_are_left_out_and_shapes_are_checked():
    retriever = _retriever(rows=4)
    teacher = retriever.copy()
    teacher[1, 3] = math.nan
    assert teacher_signal(teacher, retriever, 1.0).rows == 3
    with pytest.raises(ValueError, match="rows × candidates"):
        teacher_signal(teacher[:, :1], retriever[:, :1], 1.0)
    with pytest.raises(ValueError, match="every candidate"):
        teacher_signal(np.full((2, 3), math.nan), retriever[:2, :3], 1.0)
