"""QED with few real queries: what pseudo-queries made from the corpus give (the documented fallback).

Three QED runs of the same student (all-MiniLM-L6-v2, query layers [0, 5], frozen teacher document tower), at the
same number of optimisation steps, differing only in their training queries:

=================  =====================================================================================
``real``           SciFact's train queries (~800 real claims)
``pseudo``         pseudo-queries sampled from SciFact's corpus (``pseudo:FOLDER``: one span per passage)
``real+pseudo``    both
=================  =====================================================================================

Evaluated on SciFact test (the leakage guard removes any test query from every training set). The untrained
[0, 5] tower (49.9% retention, ``qed_minilm.md``) is the floor; the 18k-query QED run (97.3%) the reference.

Command for benchmarks/results/qed_query_sources.{md,json} (repository root, offline with ../shared):

    HF_HUB_CACHE=../shared/hf-hub HF_HUB_OFFLINE=1 python benchmarks/qed_query_sources.py --reuse
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from results_io import write_results  # benchmarks/ is on sys.path when a benchmark runs

from asym_st.evaluation.results import load_results
from asym_st.training import QEDConfig, distill_query_tower


def _sources(corpus: str) -> dict[str, list[str]]:
    return {
        "real": [f"{corpus}:train"],
        "pseudo": [f"pseudo:{corpus}"],
        "real+pseudo": [f"{corpus}:train", f"pseudo:{corpus}"],
    }


def _run(name: str, sources: list[str], args: argparse.Namespace) -> dict:
    output = f"outputs/qed-sources-{name.replace('+', '-')}"
    if not (args.reuse and (Path(output) / "training_config.json").is_file()):
        config = QEDConfig(
            teacher=args.teacher,
            query_layers=[0, 5],
            train_queries=sources,
            eval_datasets=[f"{args.corpus}:test"],
            max_steps=args.max_steps,
            per_device_train_batch_size=64,
            save_steps=args.max_steps,
            output_dir=output,
            overwrite_output_dir=True,
            measure_latency=False,
        )
        started = time.perf_counter()
        distill_query_tower(config)
        print(f"{name}: {time.perf_counter() - started:.0f}s", file=sys.stderr)
    stored = load_results(output)
    row = stored["retention"]["rows"][0]
    record = stored["training_config"]
    return {
        "variant": name,
        "sources": sources,
        "training_queries": record["training_queries"],
        "teacher_ndcg_at_10": row["teacher"]["ndcg_at_10"],
        "ndcg_at_10": row["student"]["ndcg_at_10"],
        "recall_at_100": row["student"]["recall_at_100"],
        "retention": row["retention_ndcg_at_10"],
        "p_value_vs_teacher": row["p_value"],
        "train_seconds": record["train_seconds"],
    }


def to_markdown(result: dict) -> str:
    rows = result["rows"]
    lines = [
        "# QED with few real queries: pseudo-queries from the corpus (SciFact, nDCG@10 ×100)",
        "",
        f"Command: `{result['command']}`  ",
        f"Hardware: {result['hardware']}  ",
        f"Date: {result['date']}  ",
        f"Student: all-MiniLM-L6-v2 layers [0, 5], MSE, lr 1e-4, {result['max_steps']} steps of 64 queries for every "
        f"run; teacher nDCG@10 {100 * rows[0]['teacher_ndcg_at_10']:.2f}.",
        "",
        "| training queries | count | nDCG@10 | Recall@100 | retention | training time |",
        "|---|---:|---:|---:|---:|---:|",
        "| none (untrained [0, 5], from qed_minilm.md) | 0 | 32.22 | 73.17 | 49.9% | – |",
    ]
    for row in rows:
        lines.append(
            f"| {row['variant']} | {row['training_queries']['count']} | {100 * row['ndcg_at_10']:.2f} | "
            f"{100 * row['recall_at_100']:.2f} | {100 * row['retention']:.1f}% | {row['train_seconds'] / 60:.1f} min |"
        )
    lines += ["", "Training query reports:", ""]
    lines += [f"- {row['variant']}: {row['training_queries']['report']}" for row in rows]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", default="sentence-transformers/all-MiniLM-L6-v2")
    parser.add_argument("--corpus", default="../shared/data/beir/scifact")
    parser.add_argument("--max-steps", type=int, default=400)
    parser.add_argument("--variants", nargs="+", default=["real", "pseudo", "real+pseudo"])
    parser.add_argument("--reuse", action="store_true", help="reuse finished runs found in the output folders")
    parser.add_argument("--name", default="qed_query_sources")
    args = parser.parse_args()
    sources = _sources(args.corpus)
    rows = [_run(name, sources[name], args) for name in args.variants]
    result = {
        "rows": rows,
        "max_steps": args.max_steps,
        "command": "python benchmarks/qed_query_sources.py " + " ".join(sys.argv[1:]),
        "hardware": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    write_results(args.name, result, to_markdown(result))
    print(to_markdown(result))


if __name__ == "__main__":
    main()
