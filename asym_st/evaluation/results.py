"""Evaluation results inside a model folder: ``MODEL_DIR/eval/`` (the schema shared with training and the Hub).

Layout (every file written atomically)::

    eval/retrieval/<dataset>__<split>.json            RetrievalResult.to_dict()
    eval/retrieval/<dataset>__<split>.per_query.json  {query_id: {metric: value}}
    eval/retrieval/<dataset>__<split>__mteb.json       the same schema, scored by mteb's evaluator
    eval/retention.json                               RetentionReport.to_dict()
    eval/latency.json                                 {"results": [LatencyResult.to_dict(), ...], "speedup": {...}}
    eval/tradeoff.json, eval/tradeoff.png             the quality/speed sweep
    eval/mteb/<task>.json                             raw mteb TaskResult JSON
    training_config.json                              (model root) written by the training pipelines

:func:`load_results` reads whatever is there; missing parts come back as ``None`` or empty, never invented.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from asym_st.utils.io import atomic_write_bytes, atomic_write_json

__all__ = ["EVAL_DIR", "save_results", "load_results", "result_file_stem", "to_plain"]

EVAL_DIR = "eval"
TRAINING_CONFIG_FILE = "training_config.json"


def result_file_stem(dataset: str, split: str) -> str:
    """``<dataset>__<split>`` with anything but letters, digits, ``.``, ``-``, ``_`` replaced (Hub ids have ``/``)."""

    def clean(text: str) -> str:
        return re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("_") or "unnamed"

    return f"{clean(dataset)}__{clean(split)}"


def to_plain(obj: Any) -> Any:
    """A JSON-ready dict from a result object (``to_dict()`` / ``model_dump()``) or a dict as is."""
    for method in ("to_dict", "model_dump"):
        if hasattr(obj, method):
            return getattr(obj, method)()
    if isinstance(obj, Mapping):
        return dict(obj)
    raise TypeError(f"Cannot store a {type(obj).__name__} as a result: expected a dict or an object with to_dict().")


def _as_list(obj: Any) -> list:
    if obj is None:
        return []
    if isinstance(obj, Mapping) or hasattr(obj, "to_dict") or hasattr(obj, "model_dump"):
        return [obj]
    return list(obj)


def save_results(
    model_dir: str | os.PathLike,
    retrieval: Any = None,
    retention: Any = None,
    latency: Any = None,
    tradeoff: Any = None,
    tradeoff_png: str | os.PathLike | bytes | None = None,
    mteb: Iterable[Any] | Any = None,
) -> dict[str, list[str]]:
    """Write evaluation results into ``model_dir/eval/``; only the parts given are (re)written.

    Args:
        model_dir: the model folder.
        retrieval: one or several ``RetrievalResult`` (or their dicts); per-query scores go to a sibling file.
        retention: a ``RetentionReport`` or its dict.
        latency: ``{"results": [...], "speedup": {...}}`` (see :func:`asym_st.evaluation.latency.latency_report`).
        tradeoff: a ``TradeoffResult`` or its dict.
        tradeoff_png: the plot, as a file path or PNG bytes.
        mteb: mteb ``TaskResult`` objects or their dicts (kept raw, one file per task).

    Returns:
        ``{part: [written paths]}``.

    Example::

        save_results("minilm-2l", retrieval=[scifact_result], retention=report, latency=latency_report(q, t))
    """
    root = Path(model_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"Model folder {root} does not exist; results are stored inside the model folder.")
    eval_dir = root / EVAL_DIR
    written: dict[str, list[str]] = {}

    def record(part: str, path: Path) -> None:
        written.setdefault(part, []).append(str(path))

    for result in _as_list(retrieval):
        full = result.to_dict(include_per_query=True) if hasattr(result, "to_dict") else dict(result)
        per_query = full.pop("per_query", None)
        full.pop("run", None)
        stem = result_file_stem(full["dataset"], full["split"])
        if not str(full.get("evaluator", "asym-st")).startswith("asym-st"):
            stem += "__mteb"  # the same dataset scored by mteb's evaluator is kept next to asym-st's, not over it
        record("retrieval", atomic_write_json(eval_dir / "retrieval" / f"{stem}.json", full))
        if per_query:
            record("retrieval", atomic_write_json(eval_dir / "retrieval" / f"{stem}.per_query.json", per_query))
    if retention is not None:
        record("retention", atomic_write_json(eval_dir / "retention.json", to_plain(retention)))
    if latency is not None:
        record("latency", atomic_write_json(eval_dir / "latency.json", to_plain(latency)))
    if tradeoff is not None:
        record("tradeoff", atomic_write_json(eval_dir / "tradeoff.json", to_plain(tradeoff)))
    if tradeoff_png is not None:
        data = tradeoff_png if isinstance(tradeoff_png, bytes) else Path(tradeoff_png).read_bytes()
        record("tradeoff_png", atomic_write_bytes(eval_dir / "tradeoff.png", data))
    for task_result in _as_list(mteb):
        task = getattr(task_result, "task_name", None) or to_plain(task_result).get("task_name") or "task"
        record("mteb", _save_mteb(eval_dir / "mteb" / f"{result_file_stem(task, 'result')}.json", task_result))
    return written


def _save_mteb(path: Path, task_result: Any) -> Path:
    """mteb's own JSON for a ``TaskResult`` (``TaskResult.to_disk``, readable by ``TaskResult.from_disk``),
    written to a temporary file first and then moved into place atomically; dicts are stored as given."""
    if not hasattr(task_result, "to_disk"):
        return atomic_write_json(path, to_plain(task_result))
    with tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp) / path.name
        task_result.to_disk(staged)
        return atomic_write_bytes(path, staged.read_bytes())


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error.msg}, line {error.lineno}).") from error


def load_results(model_dir: str | os.PathLike) -> dict[str, Any]:
    """Everything stored under ``model_dir/eval/`` plus ``training_config.json``.

    Returns:
        ``{"retrieval": [dict, ...], "retention": dict | None, "latency": dict | None, "tradeoff": dict | None,
        "training_config": dict | None, "tradeoff_png": str | None, "mteb": [dict, ...]}``.
    """
    root = Path(model_dir)
    eval_dir = root / EVAL_DIR

    def optional(path: Path) -> Any:
        return _read_json(path) if path.is_file() else None

    retrieval_dir = eval_dir / "retrieval"
    retrieval = (
        [_read_json(p) for p in sorted(retrieval_dir.glob("*.json")) if not p.name.endswith(".per_query.json")]
        if retrieval_dir.is_dir()
        else []
    )
    mteb_dir = eval_dir / "mteb"
    png = eval_dir / "tradeoff.png"
    return {
        "retrieval": retrieval,
        "retention": optional(eval_dir / "retention.json"),
        "latency": optional(eval_dir / "latency.json"),
        "tradeoff": optional(eval_dir / "tradeoff.json"),
        "training_config": optional(root / TRAINING_CONFIG_FILE),
        "tradeoff_png": str(png) if png.is_file() else None,
        "mteb": [_read_json(p) for p in sorted(mteb_dir.rglob("*.json"))] if mteb_dir.is_dir() else [],
    }
