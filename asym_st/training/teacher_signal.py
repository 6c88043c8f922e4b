"""Is a score teacher worth distilling? Its ranking of the training rows against the retriever's, and its scale.

MD2PR's sentence level (and any listwise KL to a cross-encoder) moves the student toward the teacher's ranking of
each row's candidates. Two failures make that harmful, and neither shows in the loss:

* **a teacher that ranks worse than the retriever** (the bi-encoder that mined the rows, whose embedding space the
  student starts in), or no better than chance: e.g. a cross-encoder that did not learn (its loss stayed at the
  constant-prediction value). Distilling its ranking teaches a worse one.
* **a uniform or mis-scaled target**: at the KL's optimum ``s / τ_s = t / τ_t`` (plus a constant per row), so the
  student's score gaps are pulled to ``t · τ_s / τ_t``. When that is far below the retriever's gaps every candidate
  is pulled toward the same score (the ranking flattens; at the limit the target is uniform); when it is far above,
  cosines are stretched beyond what they can express.

Both were measured on SciFact with a cross-encoder that did not learn (``benchmarks/results/md2pr_teacher_signal_first_teacher.md``):
it ranked its own training positives first in 45.8% of rows against the retriever's 66.4%, and at
``teacher_temperature`` 20 its target was uniform; sentence-level distillation from it lowered the QED student's
nDCG@10 from 62.78 to 48.46.

:func:`teacher_signal` measures both on the rows that will be trained. :func:`require_useful_teacher` refuses a
weaker teacher and a target that erases the ranking (flattened more than 16-fold), and warns about a milder scale
mismatch, naming the ``teacher_temperature`` that would
match the scales.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import numpy as np

from asym_st.training.config_io import ConfigError

__all__ = ["TeacherSignal", "teacher_signal", "require_useful_teacher"]

logger = logging.getLogger(__name__)

#: The implied/current score-gap ratio outside which the temperatures are reported as mismatched.
SCALE_TOLERANCE = 4.0
#: A target that flattens the score gaps more than this many times erases the ranking: refused.
FLATTENING_LIMIT = 16.0


@dataclass
class TeacherSignal:
    """How a teacher's scores of training rows compare with the retriever's.

    Attributes:
        rows: rows measured (a positive and at least one negative scored by both).
        candidates: the most candidates in a row (positive first); ``chance`` is measured per row.
        teacher_top1: share of rows where the teacher scores the judged positive above every negative.
        retriever_top1: the same for the retriever (the bi-encoder that mined the rows; the student starts near it).
        chance_top1: the top-1 share of random scores (mean of ``1 / candidates in the row``).
        teacher_spread: median within-row standard deviation of the teacher's scores.
        retriever_spread: the same for the retriever's scores.
        implied_spread_ratio: ``teacher_spread · τ_s / τ_t`` over ``retriever_spread``: how far the KL's optimum moves
            the student's score gaps (1: unchanged; 0.1: flattened ten-fold). ``None`` if the retriever's are 0.
        target_entropy_ratio: mean entropy of ``softmax(t / τ_t)`` over its maximum ``log(candidates)`` (1: uniform).
        matched_teacher_temperature: the ``τ_t`` that makes ``implied_spread_ratio`` 1 (``None`` if undefined).
        teacher_temperature: ``τ_t`` of the measurement.
    """

    rows: int
    candidates: int
    teacher_top1: float
    retriever_top1: float
    chance_top1: float
    teacher_spread: float
    retriever_spread: float
    implied_spread_ratio: float | None
    target_entropy_ratio: float
    matched_teacher_temperature: float | None
    teacher_temperature: float

    def to_dict(self) -> dict:
        return asdict(self)


def teacher_signal(
    teacher_scores: np.ndarray,
    retriever_scores: np.ndarray,
    teacher_temperature: float,
    student_temperature: float = 1.0,
) -> TeacherSignal:
    """Compare ``teacher_scores`` with ``retriever_scores`` (both ``rows × candidates``, the judged positive first,
    ``nan`` in an empty slot) at the distillation's temperatures. Rows are measured over the slots both filled."""
    teacher = np.asarray(teacher_scores, dtype=np.float64)
    retriever = np.asarray(retriever_scores, dtype=np.float64)
    if teacher.shape != retriever.shape or teacher.ndim != 2 or teacher.shape[1] < 2:
        raise ValueError(
            f"teacher and retriever scores must both be rows × candidates (>= 2), got {teacher.shape} and "
            f"{retriever.shape}."
        )
    filled = np.isfinite(teacher) & np.isfinite(retriever)
    kept = filled[:, 0] & (filled[:, 1:].sum(axis=1) >= 1)
    if not kept.any():
        raise ValueError("No row has a positive and a negative scored by both: nothing to measure.")
    filled = filled[kept]
    teacher = np.where(filled, teacher[kept], np.nan)
    retriever = np.where(filled, retriever[kept], np.nan)
    counts = filled.sum(axis=1)
    teacher_spread = float(np.median(np.nanstd(teacher, axis=1)))
    retriever_spread = float(np.median(np.nanstd(retriever, axis=1)))
    defined = retriever_spread > 0
    return TeacherSignal(
        rows=int(kept.sum()),
        candidates=int(counts.max()),
        teacher_top1=_top1(teacher),
        retriever_top1=_top1(retriever),
        chance_top1=float(np.mean(1.0 / counts)),
        teacher_spread=teacher_spread,
        retriever_spread=retriever_spread,
        implied_spread_ratio=(
            teacher_spread * student_temperature / teacher_temperature / retriever_spread if defined else None
        ),
        target_entropy_ratio=_entropy_ratio(teacher / teacher_temperature, counts),
        matched_teacher_temperature=(
            student_temperature * teacher_spread / retriever_spread if defined and teacher_spread > 0 else None
        ),
        teacher_temperature=teacher_temperature,
    )


def _top1(scores: np.ndarray) -> float:
    """Share of rows whose positive (column 0) beats every filled negative (ties count as misses)."""
    return float(np.mean(scores[:, 0] > np.nanmax(scores[:, 1:], axis=1)))


def _entropy_ratio(logits: np.ndarray, counts: np.ndarray) -> float:
    """Mean over rows of the softmax entropy over the filled slots, divided by its maximum ``log(count)``."""
    shifted = np.where(np.isnan(logits), -np.inf, logits - np.nanmax(logits, axis=1, keepdims=True))
    probs = np.exp(shifted) / np.exp(shifted).sum(axis=1, keepdims=True)
    entropy = -(probs * np.log(np.where(probs > 0, probs, 1.0))).sum(axis=1)
    return float(np.mean(entropy / np.log(counts)))


def require_useful_teacher(signal: TeacherSignal, teacher_name: str, allow_weaker_teacher: bool = False) -> None:
    """Raise :class:`ConfigError` (unless ``allow_weaker_teacher``) when the teacher ranks the training rows'
    positives first less often than the retriever, or no more often than chance, or when at ``teacher_temperature``
    its target flattens the score gaps more than ``FLATTENING_LIMIT``-fold; log a warning when the temperatures
    flatten or stretch them more than ``SCALE_TOLERANCE``-fold."""
    weaker = signal.teacher_top1 < signal.retriever_top1 or signal.teacher_top1 <= signal.chance_top1
    if weaker and not allow_weaker_teacher:
        raise ConfigError(
            f"The teacher {teacher_name} ranks the judged positive first in {signal.teacher_top1:.1%} of "
            f"{signal.rows} training rows; the retriever that mined them does in {signal.retriever_top1:.1%}, "
            f"chance in {signal.chance_top1:.1%}: distilling it would teach a worse ranking. Its scores spread by "
            f"{signal.teacher_spread:.3g} within a row (median std). Train it longer or use a stronger one "
            "(cross_encoder: ...), or set allow_weaker_teacher: true to distil it anyway."
        )
    ratio = signal.implied_spread_ratio
    if ratio is not None and ratio < 1 / FLATTENING_LIMIT and not allow_weaker_teacher:
        raise ConfigError(
            f"At teacher_temperature={signal.teacher_temperature:g} the teacher {teacher_name}'s target flattens the "
            f"student's score gaps {1 / ratio:.0f}-fold (target entropy {signal.target_entropy_ratio:.2%} of uniform): "
            f"the sentence-level KL would pull every candidate to the same score. {_temperature_hint(signal)}"
            "Or set allow_weaker_teacher: true."
        )
    if ratio is not None and not 1 / SCALE_TOLERANCE <= ratio <= SCALE_TOLERANCE:
        logger.warning(
            "Teacher %s at teacher_temperature=%g gives target score gaps %.3gx the retriever's (target entropy "
            "%.1f%% of uniform): the KL %s the student's ranking. %s",
            teacher_name,
            signal.teacher_temperature,
            ratio,
            100 * signal.target_entropy_ratio,
            "flattens" if ratio < 1 else "stretches",
            _temperature_hint(signal),
        )


def _temperature_hint(signal: TeacherSignal) -> str:
    matched = signal.matched_teacher_temperature
    return f"teacher_temperature={matched:.3g} would match the scales. " if matched else ""
