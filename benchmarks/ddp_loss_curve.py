"""Data-parallel training on CPU: 2 DDP processes against 1 process, same global batch, same loss curve?

Both runs are ``recipes/qed.py`` with the real all-MiniLM-L6-v2 teacher, query layers [0, 5], MSE, the same seed,
the same MS MARCO dev-small training queries and the same global batch (1 process × 32 against 2 ranks × 16,
gradients averaged by DDP over gloo). Launchers are the real ones: plain ``python`` for one process and
``torchrun --nproc_per_node 2`` for two. Reported:

- the per-step training loss of both runs and their largest difference (DDP averages the same 32 examples'
  gradients, so the curves should agree up to floating-point reduction order);
- the final SciFact test nDCG@10 of both students (teacher document embeddings from the cache);
- training throughput (queries/s over the trainer's wall time) and the ratio 2 processes / 1 process.

On this machine the two ranks share the same 2 cores (1 thread each, against 2 threads for the single
process), so the throughput ratio measures DDP's overhead here, not a speed-up: real scaling needs one device per
rank.

Command for benchmarks/results/ddp_loss_curve.{md,json} (repository root, offline with ../shared):

    HF_HUB_CACHE=../shared/hf-hub HF_HUB_OFFLINE=1 python benchmarks/ddp_loss_curve.py
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from results_io import RESULTS, write_results  # noqa: E402  (benchmarks/ is on sys.path when a benchmark runs)

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def _run(processes: int, global_batch: int, steps: int, output: Path, cache_dir: str | None) -> dict:
    """One QED training run with ``processes`` ranks; returns its training record."""
    arguments = [
        "--teacher", "sentence-transformers/all-MiniLM-L6-v2",
        "--query_layers", "0", "5",
        "--train_queries", str(SHARED / "data/queries/msmarco-dev-small/queries.dev.small.tsv"),
        "--eval_datasets", str(SHARED / "data/beir/scifact") + ":test",
        "--per_device_train_batch_size", str(global_batch // processes),
        "--max_steps", str(steps),
        "--logging_steps", "1",
        "--save_steps", str(steps),
        "--measure_latency", "false",
        "--output_dir", str(output),
        "--overwrite_output_dir", "true",
    ]  # fmt: skip
    if cache_dir:
        arguments += ["--cache_dir", cache_dir]
    # One thread per rank: two ranks then use the machine's 2 cores, as the single process does with 2 threads.
    threads = max(1, (os.cpu_count() or 2) // processes)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(REPO)}
    launcher = [sys.executable]
    if processes > 1:
        launcher += ["-m", "torch.distributed.run", "--nproc_per_node", str(processes)]
    command = [*launcher, str(REPO / "recipes" / "qed.py"), *arguments]
    print(f"running {processes} process(es): {' '.join(command)}", file=sys.stderr)
    subprocess.run(command, cwd=REPO, env=env, check=True)
    return json.loads((output / "training_config.json").read_text())


def _losses(record: dict) -> dict[int, float]:
    return {entry["step"]: entry["loss"] for entry in record["log_history"] if "loss" in entry}


def _ndcg(output: Path) -> float:
    retention = json.loads((output / "eval" / "retention.json").read_text())
    return retention["rows"][0]["student"]["ndcg_at_10"]


def _summary(processes: int, record: dict, output: Path, global_batch: int) -> dict:
    steps = max(_losses(record))
    return {
        "processes": processes,
        "num_processes_recorded": record.get("num_processes"),
        "per_device_batch": global_batch // processes,
        "steps": steps,
        "train_seconds": record["train_seconds"],
        "queries_per_second": steps * global_batch / record["train_seconds"],
        "scifact_ndcg_at_10": _ndcg(output),
        "losses": _losses(record),
    }


def _plot(runs: list[dict], path: Path) -> None:
    figure, axis = plt.subplots(figsize=(6, 3.5))
    for run, style in zip(runs, ("-", "--"), strict=False):
        steps = sorted(run["losses"])
        label = f"{run['processes']} process{'es' if run['processes'] > 1 else ''} × {run['per_device_batch']}"
        axis.plot(steps, [run["losses"][s] for s in steps], style, label=label)
    axis.set_xlabel("step")
    axis.set_ylabel("training loss (MSE)")
    axis.set_yscale("log")
    axis.set_title("QED on all-MiniLM-L6-v2, global batch 32: DDP vs one process")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def _markdown(result: dict, command: str) -> str:
    one, two = result["runs"]
    lines = [
        "# DDP on CPU: 2 processes vs 1, same global batch",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {result['machine']}. Date: {result['date']}.",
        "",
        "QED, all-MiniLM-L6-v2 → query layers [0, 5], MSE, lr 1e-4, seed 42, MS MARCO dev-small queries, "
        f"{result['steps']} steps of global batch {result['global_batch']}.",
        "",
        "| run | launcher | per-rank batch | train s | queries/s | SciFact nDCG@10 |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for run in (one, two):
        launcher = "python" if run["processes"] == 1 else f"torchrun --nproc_per_node {run['processes']}"
        lines.append(
            f"| {run['processes']} process(es) | {launcher} | {run['per_device_batch']} | {run['train_seconds']:.1f} "
            f"| {run['queries_per_second']:.1f} | {100 * run['scifact_ndcg_at_10']:.2f} |"
        )
    lines += [
        "",
        f"- Loss curves over the {len(result['common_steps'])} logged steps: mean relative difference "
        f"{100 * result['mean_rel_loss_difference']:.2f}% (largest {100 * result['max_rel_loss_difference']:.2f}%, "
        f"{result['max_abs_loss_difference']:.2e} absolute), against a median step-to-step change of "
        f"{100 * result['median_rel_step_change']:.2f}% of the loss itself: the curves agree within the loss's "
        "own noise. They are not bit-identical because all-MiniLM-L6-v2 trains with dropout 0.1 and each rank draws "
        "its own dropout masks (with dropout off, 2 ranks × 8 and 1 × 16 give the same model to 1e-5: "
        "`tests/training/test_distributed.py`). The loss falls from "
        f"{one['losses'][min(one['losses'])]:.4g} to {one['losses'][max(one['losses'])]:.4g}.",
        f"- Throughput ratio (2 processes / 1 process): {result['throughput_ratio']:.2f}. Both runs share the same "
        "2 CPU cores (1 thread per rank vs 2 threads), so this is DDP's overhead on one machine, not a speed-up; "
        "with one device per rank the ratio approaches the number of ranks minus the all-reduce cost.",
        "",
        "![loss curves](ddp_loss_curve.png)",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--global-batch", type=int, default=32)
    parser.add_argument("--cache-dir", help="embedding cache root (default: the shared default cache)")
    parser.add_argument("--name", default="ddp_loss_curve")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ddp-bench-") as workdir:
        runs = []
        for processes in (1, 2):
            output = Path(workdir) / f"qed-{processes}p"
            record = _run(processes, args.global_batch, args.steps, output, args.cache_dir)
            runs.append(_summary(processes, record, output, args.global_batch))
    common = sorted(set(runs[0]["losses"]) & set(runs[1]["losses"]))
    differences = [abs(runs[0]["losses"][s] - runs[1]["losses"][s]) for s in common]
    relative = [d / abs(runs[0]["losses"][s]) for d, s in zip(differences, common, strict=True)]
    result = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch CPU",
        "steps": args.steps,
        "global_batch": args.global_batch,
        "common_steps": common,
        "max_abs_loss_difference": max(differences),
        "max_rel_loss_difference": max(relative),
        "mean_rel_loss_difference": sum(relative) / len(relative),
        # The loss's own step-to-step noise (one process): what "within noise" is measured against.
        "median_rel_step_change": statistics.median(
            abs(runs[0]["losses"][b] - runs[0]["losses"][a]) / abs(runs[0]["losses"][b])
            for a, b in zip(common, common[1:], strict=False)
        ),
        "throughput_ratio": runs[1]["queries_per_second"] / runs[0]["queries_per_second"],
        "runs": runs,
    }
    command = "HF_HUB_CACHE=../shared/hf-hub HF_HUB_OFFLINE=1 python benchmarks/ddp_loss_curve.py"
    if args.steps != 60 or args.global_batch != 32:
        command += f" --steps {args.steps} --global-batch {args.global_batch}"
    RESULTS.mkdir(exist_ok=True)  # _plot's savefig does not create the folder
    _plot(runs, RESULTS / f"{args.name}.png")
    write_results(args.name, result, _markdown(result, command))
    print(_markdown(result, command))


if __name__ == "__main__":
    main()
