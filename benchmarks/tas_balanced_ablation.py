"""TAS-Balanced ablation on NFCorpus: what the in-batch teacher, topic-aware batches and balanced margins add.

Every run starts from the same QED student (``init_from`` of the config: all-MiniLM-L6-v2, query layers [0, 5],
frozen teacher document tower, so the index stays valid), trains on NFCorpus' train queries (minus any test query:
the leakage guard) for the same number of steps, and is evaluated on NFCorpus test:

=================  ====================================================================================
``qed``            the starting point: the QED student, not trained further
``margin_mse``     plain Margin-MSE: random batches, uniform pairs, no in-batch term (alpha 0)
``inbatch``        + the in-batch teacher (alpha 0.75), random batches, uniform pairs
``tas``            + topic-aware batches (one query cluster a batch), uniform pairs
``tas_balanced``   + balanced margin sampling (10 bins): the TAS-Balanced recipe
=================  ====================================================================================

Each trained row also gets a paired t-test over per-query nDCG@10 against the QED student, and the sampler's
overhead: the wall time of drawing one epoch of batches, next to the epoch's training time.

Command for benchmarks/results/tas_balanced_ablation.{md,json} (repository root, offline with ../shared; the QED
student must exist: ``python recipes/qed.py --config recipes/configs/qed_minilm.yaml``):

    HF_HUB_CACHE=../shared/hf-hub HF_HUB_OFFLINE=1 python benchmarks/tas_balanced_ablation.py --reuse

``--seeds 42 43`` repeats every trained variant per seed (rows report the mean and each seed).
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from statistics import mean

import torch
from results_io import write_results  # benchmarks/ is on sys.path when a benchmark runs

from asym_st.evaluation.results import load_results
from asym_st.evaluation.retention import retention_row
from asym_st.evaluation.retrieval import RetrievalEvalConfig, evaluate_retrieval
from asym_st.modeling import extract_tower, load_asymmetric_model
from asym_st.training import TASBalancedConfig, tas_balanced
from asym_st.training.trainer_setup import load_eval_dataset

REPO = Path(__file__).resolve().parents[1]

VARIANTS: dict[str, dict] = {
    "margin_mse": {"alpha": 0.0, "topic_aware": False, "num_margin_bins": 1},
    "inbatch": {"alpha": 0.75, "topic_aware": False, "num_margin_bins": 1},
    "tas": {"alpha": 0.75, "topic_aware": True, "num_margin_bins": 1},
    "tas_balanced": {"alpha": 0.75, "topic_aware": True, "num_margin_bins": 10},
}
DESCRIPTIONS = {
    "qed": "QED student (start point)",
    "margin_mse": "Margin-MSE, random batches, uniform pairs",
    "inbatch": "+ in-batch teacher (α 0.75)",
    "tas": "+ topic-aware batches",
    "tas_balanced": "+ balanced margins = TAS-Balanced",
}


def _variant_config(base: TASBalancedConfig, name: str, seed: int, max_steps: int) -> TASBalancedConfig:
    return replace(
        base,
        output_dir=f"{base.output_dir.rstrip('/')}-ablation-{name}-s{seed}",
        seed=seed,
        max_steps=max_steps,
        measure_latency=False,  # the query tower's shape is the QED student's: its latency is in qed_minilm.md
        **VARIANTS[name],
    )


def _trained(config: TASBalancedConfig, reuse: bool) -> dict:
    folder = Path(config.output_dir)
    if not (reuse and (folder / "training_config.json").is_file()):
        started = time.perf_counter()
        tas_balanced(config)
        print(f"{folder.name}: trained and evaluated in {time.perf_counter() - started:.0f}s", file=sys.stderr)
    return load_results(folder)["training_config"]


def _evaluate(model_path: str, dataset, eval_config: RetrievalEvalConfig):
    return evaluate_retrieval(load_asymmetric_model(model_path), dataset, eval_config)


def run(base: TASBalancedConfig, names: list[str], seeds: list[int], max_steps: int, reuse: bool) -> dict:
    dataset = load_eval_dataset(base.eval_datasets[0])
    eval_config = RetrievalEvalConfig(batch_size=base.teacher_batch_size, show_progress_bar=False)
    start = load_asymmetric_model(base.init_from)
    qed = evaluate_retrieval(start, dataset, eval_config)
    teacher = evaluate_retrieval(extract_tower(start, "document"), dataset, eval_config)
    rows = [_row("qed", [qed], [], qed, teacher)]
    for name in names:
        results, records = [], []
        for seed in seeds:
            config = _variant_config(base, name, seed, max_steps)
            records.append(_trained(config, reuse))
            results.append(_evaluate(config.output_dir, dataset, eval_config))
        rows.append(_row(name, results, records, qed, teacher))
    return {"dataset": f"{dataset.name} {dataset.split}", "queries": len(dataset.queries), "rows": rows}


def _row(name: str, results: list, records: list[dict], qed, teacher) -> dict:
    ndcg = [r.metrics["ndcg_at_10"] for r in results]
    versus_qed = [retention_row(qed, r).p_value for r in results] if records else []
    epochs = [max((e.get("epoch", 0) for e in rec["log_history"]), default=0) for rec in records]
    return {
        "variant": name,
        "description": DESCRIPTIONS[name],
        "ndcg_at_10": mean(ndcg),
        "ndcg_at_10_per_seed": ndcg,
        "recall_at_100": mean(r.metrics["recall_at_100"] for r in results),
        "retention": mean(ndcg) / teacher.metrics["ndcg_at_10"],
        "teacher_ndcg_at_10": teacher.metrics["ndcg_at_10"],
        "p_value_vs_qed": versus_qed,
        "steps": [max((e.get("step", 0) for e in rec["log_history"]), default=0) for rec in records],
        "train_seconds": [rec.get("train_seconds") for rec in records],
        "epoch_seconds": [
            rec["train_seconds"] / epoch if epoch else None for rec, epoch in zip(records, epochs, strict=True)
        ],
        "sampler_epoch_seconds": [rec.get("sampler_epoch_seconds") for rec in records],
        "pair_rows": records[0].get("pair_rows") if records else None,
        "clusters": records[0].get("clusters") if records else None,
        "cluster_sizes": records[0].get("cluster_sizes") if records else None,
        "last_logged_loss": [rec.get("last_logged_loss") for rec in records],
    }


def to_markdown(result: dict) -> str:
    rows = result["rows"]
    qed = rows[0]["ndcg_at_10"]
    lines = [
        "# TAS-Balanced ablation on NFCorpus (nDCG@10 ×100)",
        "",
        f"Command: `{result['command']}`  ",
        f"Hardware: {result['hardware']}  ",
        f"Date: {result['date']}  ",
        f"Evaluation: {result['dataset']}, {result['queries']} queries; teacher (all-MiniLM-L6-v2) nDCG@10 "
        f"{100 * rows[0]['teacher_ndcg_at_10']:.2f}. Every trained row: {result['steps']} steps of "
        f"{result['batch_size']} queries from the same QED student, seeds {result['seeds']}.",
        "",
        "| run | nDCG@10 | per seed | Δ vs QED | p vs QED | Recall@100 | retention vs teacher |",
        "|---|---:|---|---:|---|---:|---:|",
    ]
    for row in rows:
        seeds = ", ".join(f"{100 * v:.2f}" for v in row["ndcg_at_10_per_seed"])
        p_values = ", ".join(f"{p:.2g}" for p in row["p_value_vs_qed"]) or "–"
        delta = "–" if row["variant"] == "qed" else f"{100 * (row['ndcg_at_10'] - qed):+.2f}"
        lines.append(
            f"| {row['description']} | {100 * row['ndcg_at_10']:.2f} | {seeds} | {delta} | {p_values} | "
            f"{100 * row['recall_at_100']:.2f} | {100 * row['retention']:.1f}% |"
        )
    lines += [
        "",
        "p vs QED: paired t-test over per-query nDCG@10 against the QED student (one value per seed).",
        "",
        "## Sampler overhead per epoch",
        "",
        "| run | batches drawn in | training epoch | overhead |",
        "|---|---:|---:|---:|",
    ]
    for row in rows[1:]:
        sampler = mean(s for s in row["sampler_epoch_seconds"] if s is not None)
        epoch = mean(s for s in row["epoch_seconds"] if s is not None)
        lines.append(
            f"| {row['description']} | {1000 * sampler:.1f} ms | {epoch:.1f} s | {100 * sampler / epoch:.3f}% |"
        )
    trained = rows[1]
    lines += [
        "",
        f"Pairs: {trained['pair_rows']} (query, positive, negative) rows; topic clusters: "
        f"{rows[-1]['clusters']} (sizes {rows[-1]['cluster_sizes']}).",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(REPO / "recipes/configs/tas_balanced_nfcorpus.yaml"))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[42])
    parser.add_argument("--max-steps", type=int, default=320, help="optimisation steps of every trained run")
    parser.add_argument("--reuse", action="store_true", help="reuse finished runs found in the output folders")
    parser.add_argument("--name", default="tas_balanced_ablation")
    args = parser.parse_args()

    base = TASBalancedConfig.from_yaml(args.config)
    result = run(base, args.variants, args.seeds, args.max_steps, args.reuse)
    result.update(
        command="python benchmarks/tas_balanced_ablation.py " + " ".join(sys.argv[1:]),
        hardware=f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}",
        date=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        steps=args.max_steps,
        seeds=args.seeds,
        batch_size=base.per_device_train_batch_size,
        config=base.to_dict(),
    )
    write_results(args.name, result, to_markdown(result))
    print(to_markdown(result))


if __name__ == "__main__":
    main()
