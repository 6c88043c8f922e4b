"""The quality/speed trade-off: query towers of 1..L teacher layers, retention of nDCG@10 vs query speed-up.

For a teacher and one retrieval collection, :func:`tradeoff_sweep` builds untrained query towers from the
teacher's layers (``first_last``, QED's initialisation, and optionally ``first_k``), adds any given trained
students (distilled model folders), and measures for each one

* retention: student nDCG@10 / teacher nDCG@10 on the collection (documents come from the shared embedding
  cache, since every tower shares the teacher's frozen document tower, so only queries are encoded), with the
  paired p-value over queries;
* speed-up: the teacher's median per-query latency at batch 1 over the tower's
  (:func:`~asym_st.evaluation.latency.measure_latency`, real query texts of the collection).

The teacher is timed before and after the sweep and the mean of the two is the baseline, so slow drift of a
shared machine does not favour towers timed early. :func:`plot_tradeoff` draws the PNG a model card embeds.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from sentence_transformers import SentenceTransformer

from asym_st.data.beir import RetrievalDataset
from asym_st.evaluation.latency import LatencyConfig, LatencyResult, measure_latency
from asym_st.evaluation.retention import paired_test
from asym_st.evaluation.retrieval import (
    RetrievalEvalConfig,
    RetrievalResult,
    evaluate_retrieval,
    load_model,
    model_name,
)
from asym_st.utils.io import atomic_write_bytes

__all__ = ["TradeoffConfig", "TradeoffRow", "TradeoffResult", "tradeoff_sweep", "plot_tradeoff"]


@dataclass
class TradeoffConfig:
    """Settings of a trade-off sweep.

    Args:
        layers: query-tower depths to build; ``None`` means 1..L (L = the teacher's depth).
        strategies: layer-selection strategies for the untrained towers (``first_last``, ``first_k``,
            ``evenly_spaced``).
        evaluation: retrieval settings (cache, batch size, ...).
        latency: latency settings; batch 1 is the one the speed-up uses.
        latency_queries: how many of the collection's queries are timed.
        test: paired test for the p-values (``ttest_rel`` or ``wilcoxon``).
    """

    layers: Sequence[int] | None = None
    strategies: Sequence[str] = ("first_last",)
    evaluation: RetrievalEvalConfig = field(default_factory=RetrievalEvalConfig)
    latency: LatencyConfig = field(
        default_factory=lambda: LatencyConfig(batch_sizes=(1,), num_queries=100, warmup_batches=10, repeats=3)
    )
    latency_queries: int = 100
    test: str = "ttest_rel"


@dataclass
class TradeoffRow:
    """One point of the sweep."""

    name: str
    kind: str  # "teacher", "untrained" or "trained"
    strategy: str | None
    layers: int
    query_layers: list[int] | None
    ndcg_at_10: float
    retention: float | None
    speedup: float
    per_query_p50_ms: float
    p_value: float
    metrics: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TradeoffResult:
    """The sweep; :meth:`to_dict` is the ``eval/tradeoff.json`` schema (rows: layers, retention, speedup, ...)."""

    teacher: str
    dataset: str
    split: str
    num_queries: int
    rows: list[TradeoffRow]
    teacher_latency_ms: list[float] = field(default_factory=list)
    hardware: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["rows"] = [row.to_dict() for row in self.rows]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TradeoffResult:
        rows = [TradeoffRow(**row) for row in data.get("rows", [])]
        return cls(**{**data, "rows": rows})

    def to_markdown(self) -> str:
        lines = [
            f"Teacher `{self.teacher}` on {self.dataset}/{self.split} ({self.num_queries} queries); speed-up = teacher "
            "per-query p50 at batch 1 / tower's.",
            "",
            "| model | kind | strategy | layers | query layers | nDCG@10 | retention | speed-up | p50 ms/query | p-value |",
            "|---|---|---|---:|---|---:|---:|---:|---:|---:|",
        ]
        for row in self.rows:
            retention = "n/a" if row.retention is None else f"{row.retention * 100:.1f}%"
            layers = "" if row.query_layers is None else ",".join(map(str, row.query_layers))
            lines.append(
                f"| {row.name} | {row.kind} | {row.strategy or ''} | {row.layers} | {layers} | "
                f"{row.ndcg_at_10 * 100:.2f} | {retention} | {row.speedup:.2f}x | {row.per_query_p50_ms:.2f} | "
                f"{row.p_value:.3g} |"
            )
        return "\n".join(lines) + "\n"


def _teacher_depth(teacher: SentenceTransformer) -> int:
    from asym_st.modeling import tower_modules
    from asym_st.modeling.layers import num_transformer_layers

    return num_transformer_layers(tower_modules(teacher, "document")[0].auto_model)


def _latency(model: SentenceTransformer, queries: list[str], config: TradeoffConfig, name: str) -> LatencyResult:
    from asym_st.modeling import extract_tower, is_asymmetric

    # Time the query tower as a standalone model (as the teacher is), so the Router adds nothing to either side.
    tower = extract_tower(model, "query", copy_modules=False) if is_asymmetric(model) else model
    latency = LatencyConfig(**{**asdict(config.latency), "batch_sizes": (1,), "route": "query"})
    return measure_latency(tower, queries, latency, name=name, show_progress_bar=False)[0]


def _row(
    name: str,
    kind: str,
    strategy: str | None,
    layers: int,
    query_layers: list[int] | None,
    result: RetrievalResult,
    teacher_result: RetrievalResult,
    latency_ms: float,
    teacher_ms: float,
    test: str,
) -> TradeoffRow:
    query_ids = sorted(teacher_result.per_query)
    teacher_ndcg = teacher_result.metrics["ndcg_at_10"]
    return TradeoffRow(
        name=name,
        kind=kind,
        strategy=strategy,
        layers=layers,
        query_layers=query_layers,
        ndcg_at_10=result.metrics["ndcg_at_10"],
        retention=None if teacher_ndcg <= 0 else result.metrics["ndcg_at_10"] / teacher_ndcg,
        speedup=teacher_ms / latency_ms,
        per_query_p50_ms=latency_ms,
        p_value=paired_test(
            [teacher_result.per_query[q]["ndcg_at_10"] for q in query_ids],
            [result.per_query[q]["ndcg_at_10"] for q in query_ids],
            test,
        ),
        metrics=dict(result.metrics),
    )


def tradeoff_sweep(
    teacher: SentenceTransformer | str | os.PathLike,
    dataset: RetrievalDataset | str,
    config: TradeoffConfig | None = None,
    students: Sequence[SentenceTransformer | str | os.PathLike] = (),
    teacher_name: str | None = None,
) -> TradeoffResult:
    """Retention vs query speed-up for untrained towers of 1..L layers and for any given (distilled) students.

    Args:
        teacher: the teacher (document tower), object, folder or Hub id.
        dataset: a :class:`RetrievalDataset` or a source for :func:`~asym_st.data.sources.load_retrieval_source`.
        config: :class:`TradeoffConfig`.
        students: extra asymmetric models (e.g. QED-distilled folders) to place on the same plot; their document
            tower should be the teacher's (else their corpus is encoded too, and the comparison is not
            query-tower only).

    Example::

        sweep = tradeoff_sweep("sentence-transformers/all-MiniLM-L6-v2", "../shared/data/beir/scifact",
                               TradeoffConfig(strategies=("first_last", "first_k")), students=["minilm-qed-2l"])
        print(sweep.to_markdown()); plot_tradeoff(sweep, "tradeoff.png")
    """
    from asym_st.modeling import QueryTowerConfig, build_asymmetric_model

    config = config or TradeoffConfig()
    if not isinstance(dataset, RetrievalDataset):
        from asym_st.data.sources import load_retrieval_source

        dataset = load_retrieval_source(os.fspath(dataset))
    teacher_model = load_model(teacher)
    teacher_label = teacher_name or model_name(teacher if isinstance(teacher, (str, os.PathLike)) else teacher_model)
    queries = list(dataset.queries.values())[: config.latency_queries]
    evaluation = config.evaluation

    depth = _teacher_depth(teacher_model)
    too_deep = [n for n in config.layers or () if not 1 <= n <= depth]
    if too_deep:
        raise ValueError(f"Cannot build a {too_deep[0]}-layer tower from a {depth}-layer teacher.")

    teacher_result = evaluate_retrieval(teacher_model, dataset, evaluation, name=teacher_label)
    teacher_before = _latency(teacher_model, queries, config, teacher_label)
    measured: list[tuple] = []
    for strategy in config.strategies:
        for num_layers in config.layers or range(1, depth + 1):
            student = build_asymmetric_model(teacher_model, QueryTowerConfig(strategy=strategy, num_layers=num_layers))
            query_layers = list(student.asym_st_record.query_layers or [])
            label = f"{strategy} {num_layers}L"
            result = evaluate_retrieval(student, dataset, evaluation, name=label)
            latency = _latency(student, queries, config, label)
            measured.append((label, "untrained", strategy, num_layers, query_layers, result, latency))
    for path in students:
        student = load_model(path)
        record = getattr(student, "asym_st_record", None)
        query_layers = list(record.query_layers) if record is not None and record.query_layers else None
        label = model_name(path if isinstance(path, (str, os.PathLike)) else student)
        result = evaluate_retrieval(student, dataset, evaluation, name=label)
        latency = _latency(student, queries, config, label)
        strategy = record.method if record is not None else None
        layers = len(query_layers) if query_layers else 0
        measured.append((label, "trained", strategy, layers, query_layers, result, latency))
    teacher_after = _latency(teacher_model, queries, config, teacher_label)
    teacher_ms = (teacher_before.per_query_p50_ms + teacher_after.per_query_p50_ms) / 2

    rows = [
        _row(
            teacher_label,
            "teacher",
            None,
            depth,
            list(range(depth)),
            teacher_result,
            teacher_result,
            teacher_ms,
            teacher_ms,
            config.test,
        )
    ]
    for label, kind, strategy, layers, query_layers, result, latency in measured:
        rows.append(
            _row(
                label,
                kind,
                strategy,
                layers,
                query_layers,
                result,
                teacher_result,
                latency.per_query_p50_ms,
                teacher_ms,
                config.test,
            )
        )
    return TradeoffResult(
        teacher=teacher_label,
        dataset=dataset.name,
        split=dataset.split,
        num_queries=len(dataset.qrels),
        rows=rows,
        teacher_latency_ms=[teacher_before.per_query_p50_ms, teacher_after.per_query_p50_ms],
        hardware=teacher_before.hardware,
        config={
            "strategies": list(config.strategies),
            "layers": list(config.layers) if config.layers else list(range(1, depth + 1)),
            "latency": asdict(config.latency),
            "latency_queries": len(queries),
            "evaluation": evaluation.summary(),
            "test": config.test,
        },
    )


def plot_tradeoff(result: TradeoffResult, path: str | os.PathLike | None = None, title: str | None = None) -> bytes:
    """Retention (%) vs query speed-up (×), one line per strategy, trained students as stars; PNG bytes
    (also written atomically to ``path`` when given)."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    teacher = next(r for r in result.rows if r.kind == "teacher")
    for strategy in dict.fromkeys(r.strategy for r in result.rows if r.kind == "untrained"):
        rows = sorted(
            (r for r in result.rows if r.kind == "untrained" and r.strategy == strategy), key=lambda r: r.layers
        )
        xs = [r.speedup for r in rows]
        ys = [(r.retention or 0.0) * 100 for r in rows]
        axes.plot(xs, ys, marker="o", label=f"untrained, {strategy}")
        for row, x, y in zip(rows, xs, ys, strict=True):
            axes.annotate(f"{row.layers}L", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    for row in (r for r in result.rows if r.kind == "trained"):
        axes.scatter([row.speedup], [(row.retention or 0.0) * 100], marker="*", s=160, zorder=3, label=row.name)
    axes.scatter([teacher.speedup], [100.0], marker="s", color="black", zorder=3, label=f"teacher ({teacher.layers}L)")
    axes.axhline(100.0, color="grey", linewidth=0.8, linestyle=":")
    axes.set_xlabel("query encoding speed-up vs teacher (batch 1, ×)")
    axes.set_ylabel(f"retention of nDCG@10 on {result.dataset} (%)")
    axes.set_title(title or f"Quality vs speed: query towers of {result.teacher.split('/')[-1]}", fontsize=10)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, loc="lower left")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    data = buffer.getvalue()
    if path is not None:
        atomic_write_bytes(path, data)
    return data
