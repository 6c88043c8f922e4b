"""The quality/speed trade-off: query towers of 1..L teacher layers, retention of nDCG@10 vs query speed-up.

For a teacher and one retrieval collection, :func:`tradeoff_sweep` builds untrained query towers from the
teacher's layers (``first_last``, QED's initialisation, and optionally ``first_k``), adds any given trained
students (distilled model folders), and measures for each one

* retention: student nDCG@10 / teacher nDCG@10 on the collection (documents come from the shared embedding
  cache, since every tower shares the teacher's frozen document tower, so only queries are encoded), with the
  paired p-value over queries;
* speed-up: the teacher's median per-query latency at batch 1 over the tower's
  (:func:`~asym_st.evaluation.latency.measure_latency`, real query texts of the collection, the query tower timed
  as a standalone model like the teacher), in wall time and in process CPU time.

Every model, teacher included, is timed once per round, in forward order on even rounds and reverse order on odd
ones, and the median over rounds is reported: on a shared machine whose load drifts, no model is favoured by when
it was timed. The CPU-time speed-up does not grow with other jobs' load at all. :func:`plot_tradeoff` draws the PNG
a model card embeds.
"""

from __future__ import annotations

import io
import os
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from sentence_transformers import SentenceTransformer
from tqdm.auto import tqdm

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
        latency: latency settings of one measurement (batch 1 is used; ``repeats`` per round).
        latency_rounds: rounds of timing; in each round every model (teacher included) is timed once, in forward
            order on even rounds and reverse order on odd ones, and each model's median over rounds is reported.
            Interleaving spreads the drift of a shared machine evenly over all models.
        latency_queries: how many of the collection's queries are timed.
        test: paired test for the p-values (``ttest_rel`` or ``wilcoxon``).
    """

    layers: Sequence[int] | None = None
    strategies: Sequence[str] = ("first_last",)
    evaluation: RetrievalEvalConfig = field(default_factory=RetrievalEvalConfig)
    latency: LatencyConfig = field(
        default_factory=lambda: LatencyConfig(batch_sizes=(1,), num_queries=100, warmup_batches=5, repeats=1)
    )
    latency_rounds: int = 3
    latency_queries: int = 100
    test: str = "ttest_rel"


@dataclass
class TradeoffRow:
    """One point of the sweep. ``speedup`` is in wall time, ``cpu_speedup`` in process CPU time."""

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
    cpu_speedup: float | None = None
    cpu_per_query_p50_ms: float | None = None

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
        known = set(cls.__dataclass_fields__)
        rows = [TradeoffRow(**row) for row in data.get("rows", [])]
        return cls(**{**{k: v for k, v in data.items() if k in known}, "rows": rows})

    def to_markdown(self) -> str:
        lines = [
            f"Teacher `{self.teacher}` on {self.dataset}/{self.split} ({self.num_queries} queries); speed-up = teacher "
            "per-query p50 at batch 1 / tower's, in wall time and in process CPU time.",
            "",
            "| model | kind | strategy | layers | query layers | nDCG@10 | retention | p-value | speed-up (wall) | "
            "p50 ms/query (wall) | speed-up (CPU) | p50 CPU ms/query |",
            "|---|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for row in self.rows:
            retention = "n/a" if row.retention is None else f"{row.retention * 100:.1f}%"
            layers = "" if row.query_layers is None else ",".join(map(str, row.query_layers))
            cpu = "" if row.cpu_speedup is None else f"{row.cpu_speedup:.2f}x"
            cpu_ms = "" if row.cpu_per_query_p50_ms is None else f"{row.cpu_per_query_p50_ms:.2f}"
            lines.append(
                f"| {row.name} | {row.kind} | {row.strategy or ''} | {row.layers} | {layers} | "
                f"{row.ndcg_at_10 * 100:.2f} | {retention} | {row.p_value:.3g} | {row.speedup:.2f}x | "
                f"{row.per_query_p50_ms:.2f} | {cpu} | {cpu_ms} |"
            )
        return "\n".join(lines) + "\n"


@dataclass
class _Entry:
    label: str
    kind: str
    strategy: str | None
    layers: int
    query_layers: list[int] | None
    result: RetrievalResult
    tower: SentenceTransformer
    latencies: list[LatencyResult] = field(default_factory=list)

    def wall_ms(self) -> float:
        return statistics.median(r.per_query_p50_ms for r in self.latencies)

    def cpu_ms(self) -> float | None:
        values = [r.cpu_per_query_p50_ms for r in self.latencies if r.cpu_per_query_p50_ms is not None]
        return statistics.median(values) if values else None


def _teacher_depth(teacher: SentenceTransformer) -> int:
    from asym_st.modeling import tower_modules
    from asym_st.modeling.layers import num_transformer_layers

    return num_transformer_layers(tower_modules(teacher, "document")[0].auto_model)


def _query_tower(model: SentenceTransformer) -> SentenceTransformer:
    """The query tower as a standalone model (timed like the teacher, no Router in between); only the query
    tower's modules stay referenced, so a student's document-tower copy can be freed."""
    from asym_st.modeling import extract_tower, is_asymmetric

    return extract_tower(model, "query", copy_modules=False) if is_asymmetric(model) else model


def _time_all(entries: list[_Entry], queries: list[str], config: TradeoffConfig) -> None:
    latency = LatencyConfig(**{**asdict(config.latency), "batch_sizes": (1,), "route": "query"})
    progress = tqdm(
        total=config.latency_rounds * len(entries), desc="latency", disable=not config.evaluation.show_progress_bar
    )
    for round_index in range(config.latency_rounds):
        order = entries if round_index % 2 == 0 else entries[::-1]
        for entry in order:
            entry.latencies.append(
                measure_latency(entry.tower, queries, latency, name=entry.label, show_progress_bar=False)[0]
            )
            progress.update()
    progress.close()


def _row(entry: _Entry, teacher: _Entry, test: str) -> TradeoffRow:
    query_ids = sorted(teacher.result.per_query)
    teacher_ndcg = teacher.result.metrics["ndcg_at_10"]
    cpu, teacher_cpu = entry.cpu_ms(), teacher.cpu_ms()
    return TradeoffRow(
        name=entry.label,
        kind=entry.kind,
        strategy=entry.strategy,
        layers=entry.layers,
        query_layers=entry.query_layers,
        ndcg_at_10=entry.result.metrics["ndcg_at_10"],
        retention=None if teacher_ndcg <= 0 else entry.result.metrics["ndcg_at_10"] / teacher_ndcg,
        speedup=teacher.wall_ms() / entry.wall_ms(),
        per_query_p50_ms=entry.wall_ms(),
        p_value=paired_test(
            [teacher.result.per_query[q]["ndcg_at_10"] for q in query_ids],
            [entry.result.per_query[q]["ndcg_at_10"] for q in query_ids],
            test,
        ),
        metrics=dict(entry.result.metrics),
        cpu_speedup=None if not cpu or not teacher_cpu else teacher_cpu / cpu,
        cpu_per_query_p50_ms=cpu,
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
    depth = _teacher_depth(teacher_model)
    too_deep = [n for n in config.layers or () if not 1 <= n <= depth]
    if too_deep:
        raise ValueError(f"Cannot build a {too_deep[0]}-layer tower from a {depth}-layer teacher.")
    queries = list(dataset.queries.values())[: config.latency_queries]
    evaluation = config.evaluation

    teacher_result = evaluate_retrieval(teacher_model, dataset, evaluation, name=teacher_label)
    entries = [
        _Entry(teacher_label, "teacher", None, depth, list(range(depth)), teacher_result, _query_tower(teacher_model))
    ]
    for strategy in config.strategies:
        for num_layers in config.layers or range(1, depth + 1):
            student = build_asymmetric_model(teacher_model, QueryTowerConfig(strategy=strategy, num_layers=num_layers))
            label = f"{strategy} {num_layers}L"
            result = evaluate_retrieval(student, dataset, evaluation, name=label)
            query_layers = list(student.asym_st_record.query_layers or [])
            entries.append(
                _Entry(label, "untrained", strategy, num_layers, query_layers, result, _query_tower(student))
            )
    for path in students:
        student = load_model(path)
        record = getattr(student, "asym_st_record", None)
        query_layers = list(record.query_layers) if record is not None and record.query_layers else None
        label = model_name(path if isinstance(path, (str, os.PathLike)) else student)
        result = evaluate_retrieval(student, dataset, evaluation, name=label)
        strategy = record.method if record is not None else None
        layers = len(query_layers) if query_layers else 0
        entries.append(_Entry(label, "trained", strategy, layers, query_layers, result, _query_tower(student)))
    _time_all(entries, queries, config)

    teacher_entry = entries[0]
    return TradeoffResult(
        teacher=teacher_label,
        dataset=dataset.name,
        split=dataset.split,
        num_queries=len(dataset.qrels),
        rows=[_row(entry, teacher_entry, config.test) for entry in entries],
        teacher_latency_ms=[r.per_query_p50_ms for r in teacher_entry.latencies],
        hardware=teacher_entry.latencies[0].hardware,
        config={
            "strategies": list(config.strategies),
            "layers": list(config.layers) if config.layers else list(range(1, depth + 1)),
            "latency": asdict(config.latency),
            "latency_rounds": config.latency_rounds,
            "latency_queries": len(queries),
            "evaluation": evaluation.summary(),
            "test": config.test,
        },
    )


def plot_tradeoff(
    result: TradeoffResult, path: str | os.PathLike | None = None, title: str | None = None, speed: str = "wall"
) -> bytes:
    """Retention (%) vs query speed-up (×), one line per strategy, trained students as stars; PNG bytes
    (also written atomically to ``path`` when given). ``speed="cpu"`` plots the CPU-time speed-up instead of the
    wall-time one (the honest choice when the machine was shared and busy)."""
    if speed not in ("wall", "cpu"):
        raise ValueError(f"speed must be 'wall' or 'cpu', got {speed!r}.")

    def speedup(row: TradeoffRow) -> float:
        return row.cpu_speedup if speed == "cpu" and row.cpu_speedup is not None else row.speedup

    import matplotlib

    matplotlib.use("Agg")  # no display on servers
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    teacher = next(r for r in result.rows if r.kind == "teacher")
    for strategy in dict.fromkeys(r.strategy for r in result.rows if r.kind == "untrained"):
        rows = sorted(
            (r for r in result.rows if r.kind == "untrained" and r.strategy == strategy), key=lambda r: r.layers
        )
        xs = [speedup(r) for r in rows]
        ys = [(r.retention or 0.0) * 100 for r in rows]
        axes.plot(xs, ys, marker="o", label=f"untrained, {strategy}")
        for row, x, y in zip(rows, xs, ys, strict=True):
            axes.annotate(f"{row.layers}L", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    trained = [r for r in result.rows if r.kind == "trained"]
    for index, row in enumerate(trained):
        axes.scatter(
            [speedup(row)],
            [(row.retention or 0.0) * 100],
            marker="*",
            s=180,
            zorder=3,
            color=f"C{index + 2}",
            label=f"{row.name} ({row.strategy or 'trained'}, {row.layers}L)",
        )
    axes.scatter([speedup(teacher)], [100.0], marker="s", color="black", zorder=3, label=f"teacher ({teacher.layers}L)")
    axes.axhline(100.0, color="grey", linewidth=0.8, linestyle=":")
    clock = "CPU time" if speed == "cpu" else "wall time"
    axes.set_xlabel(f"query encoding speed-up vs teacher (batch 1, {clock}, ×)")
    axes.set_ylabel(f"retention of nDCG@10 on {result.dataset} (%)")
    axes.set_title(title or f"Quality vs speed: query towers of {result.teacher.split('/')[-1]}", fontsize=10)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, loc="upper right")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    data = buffer.getvalue()
    if path is not None:
        atomic_write_bytes(path, data)
    return data
