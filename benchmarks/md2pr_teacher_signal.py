"""Is MD2PR's cross-encoder teacher worth distilling? Its ranking of the training rows against the retriever's.

Runs MD2PR's own data steps for a config (student, mining, rows, cached cross-encoder scores) and reports
:func:`asym_st.training.teacher_signal.teacher_signal` at several teacher temperatures, plus the cross-encoder's
training loss against the constant-prediction loss (a loss that never leaves that value means the model did not
learn). This is the measurement behind MD2PR's refusal of a weaker teacher (``allow_weaker_teacher``).

Command for benchmarks/results/md2pr_teacher_signal.{json,md} (repository root, offline with ../shared; the
cross-encoder and the QED student must exist, see benchmarks/md2pr_ablation.py):

    HF_HUB_CACHE=../shared/hf-hub HF_HUB_OFFLINE=1 python benchmarks/md2pr_teacher_signal.py \\
        --config recipes/configs/md2pr_scifact.yaml --cross-encoder outputs/minilm-cross-encoder-scifact

(the first teacher: 1 epoch at 2e-5; the config now names a retrained one, measured the same way once it exists).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

from results_io import write_results  # benchmarks/ is on sys.path when a benchmark runs

from asym_st.data.cache import EmbeddingCache
from asym_st.training import MD2PRConfig
from asym_st.training.cross_encoder_teacher import (
    TEACHER_RECORD_FILE,
    constant_prediction_loss,
    loss_left_constant,
)
from asym_st.training.md2pr import load_cross_encoder_teacher, retriever_row_scores, row_scores, scored_rows
from asym_st.training.teacher_signal import teacher_signal
from asym_st.training.trainer_setup import build_student, evaluation_splits, labelled_training_split


def measure(config: MD2PRConfig, temperatures: list[float]) -> dict:
    if not config.cross_encoder and not (Path(config.resolved_cross_encoder_dir) / TEACHER_RECORD_FILE).is_file():
        raise SystemExit(
            f"No trained cross-encoder in {config.resolved_cross_encoder_dir}: train it first (python recipes/md2pr.py "
            "--config ...) or pass --cross-encoder FOLDER; this benchmark measures a teacher, it does not train one."
        )
    _, teacher = build_student(config, "MD2PR")
    _, _, excluded = evaluation_splits(config)
    train = labelled_training_split(config.train_dataset, excluded, config.max_train_queries)
    cache = EmbeddingCache(Path(config.cache_dir) / "embeddings" if config.cache_dir else None)
    cross_encoder, facts = load_cross_encoder_teacher(config, teacher, excluded)
    rows, scores = scored_rows(config, teacher, cross_encoder, train, cache)
    # Both score matrices are fixed; only the temperature changes between measurements.
    teacher_rows = row_scores(rows, scores)
    retriever_rows = retriever_row_scores(rows, teacher, train, cache, config.teacher_batch_size)
    signals = [teacher_signal(teacher_rows, retriever_rows, t, config.temperature).to_dict() for t in temperatures]
    record_file = Path(facts["cross_encoder"]) / TEACHER_RECORD_FILE
    training = None
    if record_file.is_file():
        record = json.loads(record_file.read_text())
        losses = [entry["loss"] for entry in record["log_history"] if "loss" in entry]
        constant = constant_prediction_loss(record["positive_pairs"], record["training_pairs"], record["pos_weight"])
        training = {
            "steps": record["steps"],
            "train_seconds": record["train_seconds"],
            "training_pairs": record["training_pairs"],
            "learning_rate": record["config"]["learning_rate"],
            "epochs": record["config"]["num_train_epochs"],
            "constant_prediction_loss": constant,
            "learned": record.get("learned", loss_left_constant(losses, constant)),
            "first_logged_losses": losses[:3],
            "last_logged_losses": losses[-3:],
        }
    return {"cross_encoder": facts["cross_encoder"], "training": training, "signals": signals}


def _reading(signal: dict, training: dict | None) -> list[str]:
    """What the measurement says, from its numbers (so that a re-run with another teacher reads right)."""
    lines = ["## Reading", ""]
    if training and not training.get("learned", True):
        lines.append("- The cross-encoder's training loss ended at the constant-prediction value: it did not learn.")
    if signal["teacher_top1"] < signal["retriever_top1"] or signal["teacher_top1"] <= signal["chance_top1"]:
        lines.append(
            "- It ranks the judged positives of its own training rows first less often than the bi-encoder that "
            "mined them (or no better than chance): MD2PR refuses it (`allow_weaker_teacher` overrides)."
        )
    else:
        lines.append("- It ranks the training rows' positives at least as well as the bi-encoder: MD2PR accepts it.")
    ratio = signal["implied_spread_ratio"]
    if ratio is not None and ratio < 1 / 16:
        lines.append(
            f"- At teacher_temperature {signal['teacher_temperature']:g} the KL would flatten the student's score "
            f"gaps {1 / ratio:.0f}-fold (refused); {signal['matched_teacher_temperature']:.3g} matches the scales."
        )
    return lines


def to_markdown(result: dict) -> str:
    lines = [
        f"# MD2PR teacher signal: {result['cross_encoder']} on the training rows of {result['config']['train_dataset']}",
        "",
        f"Command: `{result['command']}`",
        "",
    ]
    training = result["training"]
    if training:
        lines += [
            f"Cross-encoder training: {training['steps']} steps ({training['epochs']:g} epoch(s), lr "
            f"{training['learning_rate']}) on {training['training_pairs']} pairs, {training['train_seconds'] / 60:.0f} "
            f"min. Logged loss: first {', '.join(f'{x:.3f}' for x in training['first_logged_losses'])}, last "
            f"{', '.join(f'{x:.3f}' for x in training['last_logged_losses'])}; a constant prediction scores "
            f"{training['constant_prediction_loss']:.3f}.",
            "",
        ]
    first = result["signals"][0]
    lines += [
        f"Rows: {first['rows']} (query, judged positive, {first['candidates'] - 1} mined negatives). Top-1: share of "
        "rows whose positive scores above every negative. Spread: median within-row std of the scores. Implied / "
        "current: the student's score gaps at the KL's optimum over its gaps now (1: kept; < 1: flattened).",
        "",
        f"- cross-encoder top-1 {first['teacher_top1']:.1%}, retriever (the bi-encoder teacher that mined the rows) "
        f"top-1 "
        f"{first['retriever_top1']:.1%}, chance {first['chance_top1']:.1%}",
        f"- spread: cross-encoder {first['teacher_spread']:.4f} logits, retriever {first['retriever_spread']:.4f} "
        f"(its similarity); temperature that matches the scales: {first['matched_teacher_temperature']:.3g}",
        "",
        "| teacher_temperature | implied / current gaps | target entropy / uniform |",
        "|---:|---:|---:|",
    ]
    for signal in result["signals"]:
        lines.append(
            f"| {signal['teacher_temperature']:g} | {signal['implied_spread_ratio']:.3g} | "
            f"{signal['target_entropy_ratio']:.2%} |"
        )
    lines += ["", *_reading(first, training), ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--temperatures", type=float, nargs="+", default=[20.0, 1.0, 0.05])
    parser.add_argument("--name", default="md2pr_teacher_signal")
    parser.add_argument(
        "--cross-encoder",
        default=None,
        help="a trained cross-encoder folder to measure (default: the config's teacher)",
    )
    args = parser.parse_args()
    config = MD2PRConfig.from_yaml(args.config)
    if args.cross_encoder:
        config = replace(config, cross_encoder=args.cross_encoder)
    result = {
        "command": "python benchmarks/md2pr_teacher_signal.py " + " ".join(sys.argv[1:]),
        "config": config.to_dict(),
        **measure(config, args.temperatures),
    }
    write_results(args.name, result, to_markdown(result))
    print(to_markdown(result))


if __name__ == "__main__":
    main()
