"""``asym-st distill``: QED from the command line (flags mirror :class:`asym_st.training.QEDConfig`)."""

from __future__ import annotations

import argparse
from dataclasses import fields

from asym_st.cli import _int_list

__all__ = ["add_distill"]

# Flags whose CLI spelling differs from the config field (the documented interface).
_RENAMED = {
    "train_queries": ("--train-queries", {"action": "append", "metavar": "SRC"}),
    "eval_datasets": ("--eval-dataset", {"action": "append", "metavar": "FOLDER[:SPLIT]"}),
    "output_dir": ("--output", {}),
    "query_layers": ("--query-layers", {"type": _int_list}),
}


def add_distill(subparsers) -> None:
    from asym_st.training.qed_config import QEDConfig

    parser = subparsers.add_parser(
        "distill",
        help="QED: distill a teacher into a fast query tower (document tower = frozen teacher)",
        description="Query-encoder distillation (QED). Give a teacher, training query sources and evaluation "
        "datasets; get an asymmetric model with its evaluation (teacher vs student, retention) and latency. "
        "Query sources: a .jsonl/.tsv/.txt file, BEIR_FOLDER:split, hf:org/dataset[:split[:column]], or "
        "pseudo:BEIR_FOLDER[:n] (model-free pseudo-queries).",
    )
    parser.add_argument("--config", help="YAML config; flags given on the command line override it")
    for spec in fields(QEDConfig):
        flag, extra = _RENAMED.get(spec.name, (f"--{spec.name.replace('_', '-')}", {}))
        kwargs = {"dest": spec.name, "default": argparse.SUPPRESS, "help": spec.metadata.get("help"), **extra}
        if spec.type in ("bool", bool):
            kwargs.update(type=lambda text: text.lower() in ("1", "true", "yes", "on"), metavar="BOOL")
        elif "type" not in kwargs and "action" not in kwargs:
            kwargs["type"] = _scalar_type(spec.type)
        parser.add_argument(flag, **kwargs)
    parser.set_defaults(handler=run_distill)


def _scalar_type(annotation) -> type:
    text = str(annotation)
    if text.startswith("int"):
        return int
    if text.startswith("float"):
        return float
    return str


def run_distill(args: argparse.Namespace) -> dict:
    from asym_st.training import QEDConfig, distill_query_tower

    overrides = {k: v for k, v in vars(args).items() if k not in ("handler", "command", "config", "version")}
    config = QEDConfig.from_yaml(args.config, **overrides) if args.config else QEDConfig.from_dict(overrides)
    result = distill_query_tower(config)
    summary = {"output": str(result.output_dir), "training_queries": result.training_queries.report()}
    summary["train_seconds"] = round(result.train_seconds, 1)
    if result.retention is not None:
        print(result.retention.to_markdown())
        summary["retention"] = result.retention.to_dict()["rows"]
    if result.latency is not None:
        summary["query_speedup"] = result.latency["speedup"]
    return summary
