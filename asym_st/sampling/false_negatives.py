"""MD2PR's dynamic false-negative filter: drop mined negatives that the teacher scores like a positive.

Mined "negatives" are the retriever's top documents that the qrels do not list as relevant; many of them are
relevant all the same (false negatives), and distilling "this one is worse than the positive" from them teaches the
student the wrong thing. MD2PR (Li et al., 2023) removes them with a threshold on the cross-encoder's scores that is
*updated during training* rather than fixed once. Here:

- the threshold is a quantile of the teacher's scores of the **positives**: ``threshold = Q_q(positive scores)``
  (numpy's linear-interpolation quantile); a negative is dropped when ``teacher(q, n) > threshold``;
- the threshold is recomputed at the start of every period: every epoch (``schedule="epoch"``) or every optimiser
  step (``schedule="step"``);
- the quantile moves linearly from ``quantile`` (first period) to ``final_quantile`` (last period):
  ``q_t = q_0 + (q_1 - q_0) * t / max(T - 1, 1)`` for period ``t`` of ``T``; without ``final_quantile`` it stays
  ``q_0``, and the threshold only changes through the pool;
- the pool of positive scores is every training positive (``pool="all"``: one threshold per period) or the positives
  of the current batch (``pool="batch"``: one threshold per batch, with the period's quantile).

The filter knows scores only (never models or texts): :meth:`DynamicFalseNegativeFilter.keep_mask` takes the
positives' and the negatives' teacher scores of a batch and returns which negatives to keep, counting what it drops;
a training callback calls :meth:`~DynamicFalseNegativeFilter.start` and :meth:`~DynamicFalseNegativeFilter.begin_period`.
Counts are per process (each DDP rank filters its own batches).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

__all__ = [
    "FILTER_POOLS",
    "FILTER_SCHEDULES",
    "DynamicFalseNegativeFilter",
    "FalseNegativeFilterConfig",
    "FilterPeriod",
    "positive_quantile_threshold",
    "scheduled_quantile",
]

logger = logging.getLogger(__name__)

FILTER_SCHEDULES = ("epoch", "step")
FILTER_POOLS = ("all", "batch")


@dataclass
class FalseNegativeFilterConfig:
    """How the threshold is computed and when it is recomputed.

    Args:
        quantile: quantile of the positives' teacher scores that a negative must exceed to be dropped, at the first
            period (0.5: a negative scored above the median positive is taken for a false negative).
        final_quantile: the quantile at the last period (linear in between); ``None`` keeps ``quantile``.
        schedule: ``"epoch"`` (recompute at every epoch) or ``"step"`` (at every optimiser step).
        pool: ``"all"`` (every training positive) or ``"batch"`` (the current batch's positives).
    """

    quantile: float = 0.5
    final_quantile: float | None = None
    schedule: str = "epoch"
    pool: str = "all"

    def __post_init__(self) -> None:
        for name in ("quantile", "final_quantile"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value <= 1.0:
                raise ValueError(f"FalseNegativeFilterConfig.{name} must be in [0, 1], got {value}.")
        if self.schedule not in FILTER_SCHEDULES:
            raise ValueError(f"FalseNegativeFilterConfig.schedule={self.schedule!r}; choose one of {FILTER_SCHEDULES}.")
        if self.pool not in FILTER_POOLS:
            raise ValueError(f"FalseNegativeFilterConfig.pool={self.pool!r}; choose one of {FILTER_POOLS}.")


@dataclass
class FilterPeriod:
    """What happened in one period (epoch or step): its quantile, threshold (``None`` with the batch pool, where
    each batch has its own) and counts of finite negatives seen and dropped."""

    period: int
    quantile: float
    threshold: float | None
    seen: int = 0
    dropped: int = 0
    rows_without_negatives: int = 0


def scheduled_quantile(config: FalseNegativeFilterConfig, period: int, num_periods: int) -> float:
    """``q_t = q_0 + (q_1 - q_0) * t / max(T - 1, 1)``, with ``t`` clipped to ``[0, T - 1]``."""
    if config.final_quantile is None:
        return float(config.quantile)
    last = max(int(num_periods) - 1, 1)
    progress = min(max(int(period), 0), last) / last
    return float(config.quantile + (config.final_quantile - config.quantile) * progress)


def positive_quantile_threshold(positive_scores: Sequence[float] | np.ndarray | torch.Tensor, quantile: float) -> float:
    """The ``quantile`` of the finite positive scores (numpy's linear interpolation)."""
    if torch.is_tensor(positive_scores):
        positive_scores = positive_scores.detach().float().cpu().numpy()
    scores = np.asarray(positive_scores, dtype=np.float64).reshape(-1)
    scores = scores[np.isfinite(scores)]
    if scores.size == 0:
        raise ValueError("No finite positive score to take a quantile of: the false-negative threshold is undefined.")
    return float(np.quantile(scores, quantile))


class DynamicFalseNegativeFilter:
    """Drops negatives whose teacher score exceeds a quantile of the positives' teacher scores, with the threshold
    recomputed every epoch or step (see the module docstring for the formulas).

    Args:
        config: quantiles, schedule and pool.
        positive_scores: the teacher's scores of every training (query, positive) pair; required with
            ``pool="all"``, ignored with ``pool="batch"``.

    Example::

        keep = DynamicFalseNegativeFilter(FalseNegativeFilterConfig(quantile=0.5), positive_scores=[3.0, 5.0, 7.0])
        keep.start(num_periods=1)
        keep.begin_period(0)                      # threshold = 5.0
        keep.keep_mask(torch.tensor([6.0]), torch.tensor([[4.0, 5.5, float("nan")]]))
        # tensor([[ True, False,  True]]): 5.5 > 5.0 is dropped; NaN (no negative in that slot) is left alone
    """

    def __init__(
        self,
        config: FalseNegativeFilterConfig | None = None,
        positive_scores: Sequence[float] | np.ndarray | None = None,
    ) -> None:
        self.config = config or FalseNegativeFilterConfig()
        self.pool: np.ndarray | None = None
        if self.config.pool == "all":
            if positive_scores is None:
                raise ValueError("pool='all' needs the teacher scores of the training positives (positive_scores).")
            self.pool = np.asarray(positive_scores, dtype=np.float64).reshape(-1)
            if not np.isfinite(self.pool).any():
                raise ValueError("positive_scores holds no finite score: the false-negative threshold is undefined.")
        self.num_periods = 1
        self.periods: list[FilterPeriod] = []
        self._current: FilterPeriod | None = None

    # ------------------------------------------------------------------------------------------- schedule

    def start(self, num_periods: int) -> None:
        """Set the number of periods of the run (epochs or steps, per ``schedule``) for the quantile schedule."""
        self.num_periods = max(int(num_periods), 1)

    def begin_period(self, period: int) -> float | None:
        """Recompute the threshold for ``period`` (idempotent within a period); returns it (``None``: batch pool)."""
        if self._current is not None and self._current.period == int(period):
            return self._current.threshold
        quantile = scheduled_quantile(self.config, period, self.num_periods)
        threshold = positive_quantile_threshold(self.pool, quantile) if self.pool is not None else None
        self._current = FilterPeriod(period=int(period), quantile=quantile, threshold=threshold)
        self.periods.append(self._current)
        logger.debug("False-negative filter: period %d, quantile %.3f, threshold %s.", period, quantile, threshold)
        return threshold

    @property
    def current(self) -> FilterPeriod:
        """The running period (period 0 is begun on first use when no callback drives the filter)."""
        if self._current is None:
            self.begin_period(0)
        return self._current  # type: ignore[return-value]

    @property
    def threshold(self) -> float | None:
        return self.current.threshold

    # ------------------------------------------------------------------------------------------- filtering

    def keep_mask(self, positive_scores: torch.Tensor, negative_scores: torch.Tensor) -> torch.Tensor:
        """``True`` for the negatives to keep: ``negative_scores`` (``batch × n``) ``<=`` the threshold.

        ``positive_scores`` (``batch``) are the rows' positives: the pool of ``pool="batch"``. Non-finite negative
        scores (empty slots) are kept here (the loss masks them itself) and not counted.
        """
        negative_scores = torch.as_tensor(negative_scores)
        period = self.current
        threshold = period.threshold
        if threshold is None:
            threshold = positive_quantile_threshold(positive_scores, period.quantile)
        finite = torch.isfinite(negative_scores)
        dropped = finite & (negative_scores > threshold)
        period.seen += int(finite.sum())
        period.dropped += int(dropped.sum())
        if negative_scores.ndim == 2:
            period.rows_without_negatives += int(((finite & ~dropped).sum(dim=1) == 0).sum())
        return ~dropped

    __call__ = keep_mask

    # ------------------------------------------------------------------------------------------- reporting

    @property
    def seen(self) -> int:
        return sum(period.seen for period in self.periods)

    @property
    def dropped(self) -> int:
        return sum(period.dropped for period in self.periods)

    def summary(self, max_periods: int = 100) -> dict[str, Any]:
        """Totals and the per-period record (the first ``max_periods`` periods), for logs and result files."""
        return {
            "config": asdict(self.config),
            "seen_negatives": self.seen,
            "dropped_negatives": self.dropped,
            "dropped_fraction": self.dropped / self.seen if self.seen else 0.0,
            "rows_without_negatives": sum(period.rows_without_negatives for period in self.periods),
            "periods": [asdict(period) for period in self.periods[:max_periods]],
            "num_periods_run": len(self.periods),
        }
