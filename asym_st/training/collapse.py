"""Collapse diagnostics: is a tower still spreading texts apart, or mapping them all to (nearly) one point?

Heterogeneous towers (a static or tiny query encoder next to a large document encoder) tend to collapse under
plain contrastive fine-tuning: one tower learns a near-constant output (Leonhardt et al., 2022). Three numbers
computed on a probe set of texts show it:

* ``mean_pairwise_cosine``: the average cosine similarity of two different texts' embeddings. About 0.0–0.3 for a
  healthy sentence encoder; 1.0 for a constant one.
* per-dimension variance (``mean_dimension_variance``, ``min_dimension_variance``, ``dead_dimensions``): how much
  each coordinate varies across texts. ``total_variance`` is their sum.
* ``effective_rank`` (Roy & Vetterli, 2007; RankMe, Garrido et al., 2023): ``exp(entropy)`` of the normalised
  singular values of the (uncentred) embedding matrix, between 1 (every text on one line through the origin,
  e.g. a constant tower) and the width.

:class:`CollapseDetector` turns them into a verdict, :func:`tower_diagnostics` computes them for a tower of an
asymmetric model, and :class:`CollapseCallback` checks both towers during training and warns or stops.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from sentence_transformers import SentenceTransformer
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from asym_st.modeling.towers import DOCUMENT_ROUTE, QUERY_ROUTE, is_asymmetric, tower_modules

__all__ = [
    "CollapseDiagnostics",
    "CollapseDetector",
    "CollapseVerdict",
    "CollapseWarning",
    "CollapseCallback",
    "embedding_diagnostics",
    "tower_diagnostics",
]

logger = logging.getLogger(__name__)

# A dimension whose variance is below this (relative to the mean dimension variance of a healthy tower, or in
# absolute terms for unit vectors) carries no information.
_DEAD_VARIANCE = 1e-8


class CollapseWarning(UserWarning):
    """Emitted when a tower's embeddings collapse during training."""


@dataclass
class CollapseDiagnostics:
    """The spread of one tower's embeddings over a probe set of texts."""

    num_texts: int
    dimension: int
    mean_pairwise_cosine: float
    mean_dimension_variance: float
    min_dimension_variance: float
    total_variance: float
    dead_dimensions: int
    effective_rank: float
    mean_norm: float

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def embedding_diagnostics(embeddings: np.ndarray | torch.Tensor) -> CollapseDiagnostics:
    """Spread statistics of an ``(n, d)`` embedding matrix (see the module docstring).

    Example::

        embedding_diagnostics(np.ones((100, 384)))  # mean_pairwise_cosine 1.0, total_variance 0.0, effective_rank 1.0
    """
    matrix = torch.as_tensor(np.asarray(embeddings), dtype=torch.float64)
    if matrix.ndim != 2 or matrix.shape[0] < 2:
        raise ValueError(f"Need an (n, d) embedding matrix with n >= 2 texts, got shape {tuple(matrix.shape)}.")
    if not torch.isfinite(matrix).all():
        raise ValueError("The embeddings contain NaN or infinite values (the tower diverged).")
    n = matrix.shape[0]
    norms = matrix.norm(dim=1)
    unit = matrix / norms.clamp_min(1e-12)[:, None]
    # Mean cosine over pairs i != j without the n×n matrix: |Σ u_i|² = Σ_i Σ_j u_i·u_j.
    summed = unit.sum(dim=0)
    self_similarity = (unit * unit).sum()  # = n, minus zero vectors
    mean_cosine = float((summed @ summed - self_similarity) / (n * (n - 1)))
    variances = matrix.var(dim=0, unbiased=False)
    singular = torch.linalg.svdvals(matrix)
    return CollapseDiagnostics(
        num_texts=n,
        dimension=matrix.shape[1],
        mean_pairwise_cosine=mean_cosine,
        mean_dimension_variance=float(variances.mean()),
        min_dimension_variance=float(variances.min()),
        total_variance=float(variances.sum()),
        dead_dimensions=int((variances <= _DEAD_VARIANCE).sum()),
        effective_rank=_effective_rank(singular),
        mean_norm=float(norms.mean()),
    )


def _effective_rank(singular_values: torch.Tensor) -> float:
    total = singular_values.sum()
    if total <= 0:
        return 0.0  # an all-zero matrix: nothing is spread at all
    p = singular_values / total
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def tower_diagnostics(
    model: SentenceTransformer, texts: Sequence[str], route: str = QUERY_ROUTE, batch_size: int = 64
) -> CollapseDiagnostics:
    """Encode ``texts`` with one tower (``"query"`` or ``"document"``) and return its spread statistics."""
    if route not in (QUERY_ROUTE, DOCUMENT_ROUTE):
        raise ValueError(f"route must be 'query' or 'document', got {route!r}.")
    encode = model.encode_query if route == QUERY_ROUTE else model.encode_document
    embeddings = encode(list(texts), batch_size=batch_size, convert_to_numpy=True, show_progress_bar=False)
    return embedding_diagnostics(embeddings)


@dataclass
class CollapseVerdict:
    collapsed: bool
    reasons: list[str] = field(default_factory=list)


@dataclass
class CollapseDetector:
    """Flags a collapsed tower. Any one rule suffices.

    Args:
        max_mean_cosine: collapsed when two random texts are on average at least this similar. Healthy sentence
            encoders sit well below 0.5; a constant encoder is at 1.0.
        min_effective_rank: collapsed when the embeddings span fewer effective dimensions than this.
        min_variance_ratio: collapsed when the tower's total variance is below this fraction of a reference
            tower's on the same texts (the document tower / the teacher). Only used when a reference is given.
    """

    max_mean_cosine: float = 0.9
    min_effective_rank: float = 2.0
    min_variance_ratio: float = 0.05

    def check(self, diagnostics: CollapseDiagnostics, reference: CollapseDiagnostics | None = None) -> CollapseVerdict:
        reasons = []
        if diagnostics.mean_pairwise_cosine >= self.max_mean_cosine:
            reasons.append(
                f"mean pairwise cosine {diagnostics.mean_pairwise_cosine:.3f} >= {self.max_mean_cosine} "
                "(texts map to nearly the same direction)"
            )
        if diagnostics.effective_rank < self.min_effective_rank:
            reasons.append(f"effective rank {diagnostics.effective_rank:.2f} < {self.min_effective_rank}")
        if reference is not None and reference.total_variance > 0:
            ratio = diagnostics.total_variance / reference.total_variance
            if ratio < self.min_variance_ratio:
                reasons.append(
                    f"total variance is {ratio:.3g} of the reference tower's (< {self.min_variance_ratio}): "
                    "the embeddings barely vary across texts"
                )
        return CollapseVerdict(collapsed=bool(reasons), reasons=reasons)


def _trainable(model: SentenceTransformer, route: str) -> bool:
    return any(p.requires_grad for m in tower_modules(model, route) for p in m.parameters())


class CollapseCallback(TrainerCallback):
    """Checks both towers for collapse every ``check_steps`` steps and at the end of training; warns or stops.

    The document tower's statistics at the first check (normally the frozen teacher) are the reference of the
    variance rule. A frozen tower is measured once. Every check is appended to :attr:`history` and to the
    trainer's ``log_history`` (keys ``collapse/<route>/<statistic>``), so it lands in ``trainer_state.json``.

    Args:
        texts: probe texts, never trained on (a few hundred queries and/or documents).
        check_steps: steps between checks (``None``: only at the end of training).
        action: ``"warn"`` (log and emit :class:`CollapseWarning`) or ``"stop"`` (also end training).
        detector: the thresholds.
        routes: which towers to check (both by default; symmetric models have a single tower, "query").
        batch_size: encoding batch size.

    Example::

        from asym_st.training.collapse import CollapseCallback

        callback = CollapseCallback(heldout_texts, check_steps=50, action="stop")
        trainer = SentenceTransformerTrainer(model, args, train_dataset=pairs, loss=loss, callbacks=[callback])
        trainer.train()
        print(callback.collapsed, callback.history[-1])
    """

    def __init__(
        self,
        texts: Sequence[str],
        check_steps: int | None = 100,
        action: Literal["warn", "stop"] = "warn",
        detector: CollapseDetector | None = None,
        routes: Sequence[str] = (QUERY_ROUTE, DOCUMENT_ROUTE),
        batch_size: int = 64,
    ) -> None:
        if action not in ("warn", "stop"):
            raise ValueError(f"action must be 'warn' or 'stop', got {action!r}.")
        if len(texts) < 2:
            raise ValueError("CollapseCallback needs at least 2 probe texts.")
        self.texts = list(texts)
        self.check_steps = check_steps
        self.action = action
        self.detector = detector or CollapseDetector()
        self.routes = tuple(routes)
        self.batch_size = batch_size
        self.history: list[dict[str, Any]] = []
        self.collapsed: dict[str, list[str]] = {}
        self.reference: CollapseDiagnostics | None = None
        self._frozen_results: dict[str, CollapseDiagnostics] = {}

    def measure(self, model: SentenceTransformer) -> dict[str, CollapseDiagnostics]:
        """Diagnostics of each checked tower of ``model`` on the probe texts."""
        routes = self.routes if is_asymmetric(model) else (QUERY_ROUTE,)
        results = {}
        for route in routes:
            if route in self._frozen_results and not _trainable(model, route):
                results[route] = self._frozen_results[route]
                continue
            results[route] = tower_diagnostics(model, self.texts, route, self.batch_size)
            if not _trainable(model, route):
                self._frozen_results[route] = results[route]
        if self.reference is None:
            self.reference = results.get(DOCUMENT_ROUTE)
        return results

    def check(self, model: SentenceTransformer, step: int) -> dict[str, CollapseVerdict]:
        """Measure, record and judge both towers at ``step``; returns the verdict per tower."""
        results = self.measure(model)
        verdicts = {}
        entry: dict[str, Any] = {"step": step}
        for route, diagnostics in results.items():
            verdict = self.detector.check(diagnostics, self.reference)
            verdicts[route] = verdict
            entry.update({f"collapse/{route}/{k}": v for k, v in diagnostics.to_dict().items()})
            entry[f"collapse/{route}/collapsed"] = verdict.collapsed
            if verdict.collapsed and route not in self.collapsed:
                self.collapsed[route] = verdict.reasons
                message = f"The {route} tower collapsed at step {step}: " + "; ".join(verdict.reasons)
                logger.warning(message)
                warnings.warn(message, CollapseWarning, stacklevel=2)
        self.history.append(entry)
        return verdicts

    def _check_and_act(self, state: TrainerState, control: TrainerControl, model) -> None:
        if model is None or (self.history and self.history[-1]["step"] == state.global_step):
            return
        verdicts = self.check(model, state.global_step)
        state.log_history.append(dict(self.history[-1]))
        if self.action == "stop" and any(v.collapsed for v in verdicts.values()):
            control.should_training_stop = True

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        self._check_and_act(state, control, kwargs.get("model"))

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        if self.check_steps and state.global_step % self.check_steps == 0:
            self._check_and_act(state, control, kwargs.get("model"))

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        self._check_and_act(state, control, kwargs.get("model"))
