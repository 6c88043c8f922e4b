"""Is a score teacher worth distilling? Its ranking of the training rows against the retriever's, and its scale.

MD2PR's sentence level (and any listwise KL to a cross-encoder) moves the student toward the teacher's ranking of
each row's candidates. Two failures make that harmful, and neither shows in the loss:

* **a teacher that ranks worse than the retriever** (or no better than chance): e.g. a cross-encoder that did not learn (its loss stayed at
  the constant-prediction value). Its ranking of the judged positives is worse than the student's own, so
  distilling it can only lose quality. Measured on SciFact, such a teacher took a QED student from 62.8 to 48.5
  nDCG@10.
* **a scale mismatch**: at the KL's optimum ``s / τ_s = t / τ_t`` (plus a constant per row), so the student's score
  gaps are pulled to ``t · τ_s / τ_t``. When that is far below the gaps the student has, every candidate is pulled
  toward the same score (the ranking flattens). When it is far above, cosines are stretched beyond what they can
  express.

:func:`teacher_signal` measures both on the rows that will be trained. :func:`require_useful_teacher` refuses the
first failure and warns about the second, naming the ``teacher_temperature`` that would match the scales.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass

import numpy as np

from asym_st.training.config_io import ConfigError

__all__ = ["TeacherSignal", "teacher_signal", "require_useful_teacher"]

logger = logging.getLogger(__name__)

#: The implied/current score-gap ratio outside which the temperatures are reported as mismatched.
SCALE_TOLERANCE = 4.0


@dataclass
class TeacherSignal:
    """How a teacher's scores of training rows compare with the retriever's.

    Attributes:
        rows: rows with every candidate present (the ones measured).
        candidates: candidates per row (positive first).
        teacher_top1: share of rows where the teacher scores the judged positive above every negative.
        retriever_top1: the same for the retriever (the bi-encoder that mined the rows; the student starts near it).
        teacher_spread: median within-row standard deviation of the teacher's scores.
        retriever_spread: the same for the retriever's scores.
        implied_spread_ratio: ``teacher_spread · τ_s / τ_t`` over ``retriever_spread``: how far the KL's optimum moves
            the student's score gaps (1: unchanged; 0.1: flattened ten-fold).
        target_entropy_ratio: mean entropy of ``softmax(t / τ_t)`` over its maximum ``log(candidates)`` (1: uniform).
        matched_teacher_temperature: the ``τ_t`` that makes ``implied_spread_ratio`` 1.
    """

    rows: int
    candidates: int
    teacher_top1: float
    retriever_top1: float
    teacher_spread: float
    retriever_spread: float
    implied_spread_ratio: float
    target_entropy_ratio: float
    matched_teacher_temperature: float

    def to_dict(self) -> dict:
        return asdict(self)


def teacher_signal(
    teacher_scores: np.ndarray,
    retriever_scores: np.ndarray,
    teacher_temperature: float,
    student_temperature: float = 1.0,
) -> TeacherSignal:
    """Compare ``teacher_scores`` with ``retriever_scores`` (both ``rows × candidates``, the judged positive first,
    ``nan`` in an empty slot) at the distillation's temperatures."""
    teacher = np.asarray(teacher_scores, dtype=np.float64)
    retriever = np.asarray(retriever_scores, dtype=np.float64)
    if teacher.shape != retriever.shape or teacher.ndim != 2 or teacher.shape[1] < 2:
        raise ValueError(
            f"teacher and retriever scores must both be rows × candidates (>= 2), got {teacher.shape} and "
            f"{retriever.shape}."
        )
    full = np.isfinite(teacher).all(axis=1) & np.isfinite(retriever).all(axis=1)
    if not full.any():
        raise ValueError("No row has every candidate scored: nothing to measure.")
    teacher, retriever = teacher[full], retriever[full]
    teacher_spread = float(np.median(teacher.std(axis=1)))
    retriever_spread = float(np.median(retriever.std(axis=1)))
    implied = teacher_spread * student_temperature / teacher_temperature
    logits = teacher / teacher_temperature
    logits -= logits.max(axis=1, keepdims=True)
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    entropy = -(probs * np.log(np.clip(probs, 1e-300, None))).sum(axis=1).mean()
    return TeacherSignal(
        rows=int(full.sum()),
        candidates=int(teacher.shape[1]),
        teacher_top1=_top1(teacher),
        retriever_top1=_top1(retriever),
        teacher_spread=teacher_spread,
        retriever_spread=retriever_spread,
        implied_spread_ratio=implied / retriever_spread if retriever_spread > 0 else math.inf,
        target_entropy_ratio=float(entropy / math.log(teacher.shape[1])),
        matched_teacher_temperature=(
            student_temperature * teacher_spread / retriever_spread if retriever_spread > 0 else math.inf
        ),
    )


def _top1(scores: np.ndarray) -> float:
    return float(np.mean(scores[:, 0] > scores[:, 1:].max(axis=1)))


def require_useful_teacher(signal: TeacherSignal, teacher_name: str, allow_weaker_teacher: bool = False) -> None:
    """Raise :class:`ConfigError` when the teacher ranks the training rows' positives first less often than the
    retriever does, or no more often than chance (unless ``allow_weaker_teacher``); log a warning when the
    temperatures mismatch the scales."""
    chance = 1 / signal.candidates
    weaker = signal.teacher_top1 < signal.retriever_top1 or signal.teacher_top1 <= chance
    if weaker and not allow_weaker_teacher:
        raise ConfigError(
            f"The teacher {teacher_name} ranks the judged positive first in {signal.teacher_top1:.1%} of "
            f"{signal.rows} training rows; the retriever that mined them does in {signal.retriever_top1:.1%}, "
            f"chance in {chance:.1%}: distilling it would teach a worse ranking. Its scores spread by "
            f"{signal.teacher_spread:.3g} within a row (median std). Train it longer or use a stronger one "
            "(cross_encoder: ...), or set allow_weaker_teacher: true to distil it anyway."
        )
    ratio = signal.implied_spread_ratio
    if not 1 / SCALE_TOLERANCE <= ratio <= SCALE_TOLERANCE:
        logger.warning(
            "Teacher %s at teacher_temperature gives target score gaps %.3gx the student's current ones (target "
            "entropy %.1f%% of uniform): the KL %s the student's ranking. teacher_temperature=%.3g would match "
            "the scales.",
            teacher_name,
            ratio,
            100 * signal.target_entropy_ratio,
            "flattens" if ratio < 1 else "stretches",
            signal.matched_teacher_temperature,
        )
