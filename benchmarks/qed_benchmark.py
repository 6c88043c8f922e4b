"""QED benchmark: distilled vs untrained query towers, and the initialisation choice, against the teacher.

For each student initialisation (e.g. QED's first+last ``0,5`` and the first two layers ``0,1``) this runs the
QED pipeline of the given config (or reuses a finished run with ``--reuse``), evaluates the *untrained* truncated
tower on the same data, and collects nDCG@10, Recall@100 and retention vs the teacher per dataset, plus the
query-encoding speed-up and the distillation wall time. Document embeddings come from the shared cache, so the
teacher's corpus is encoded once for everything.

Command used for the committed table (from the repository root, offline with ../shared):

    HF_HUB_CACHE=../shared/hf-hub HF_HUB_OFFLINE=1 python benchmarks/qed_benchmark.py \
        --config recipes/configs/qed_minilm.yaml --layers 0,5 0,1 --name qed_minilm --reuse

Writes benchmarks/results/NAME.{json,md}.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

from results_io import hardware_line, write_results  # benchmarks/ is on sys.path when a benchmark runs

from asym_st import QueryTowerConfig, build_asymmetric_model, extract_tower
from asym_st.evaluation.results import load_results
from asym_st.evaluation.retention import retention_report
from asym_st.evaluation.retrieval import RetrievalEvalConfig
from asym_st.training import QEDConfig, distill_query_tower, load_eval_dataset


def _distilled(config: QEDConfig, layers: list[int], reuse: bool) -> dict:
    output = (
        f"{config.output_dir.rstrip('/')}-{'-'.join(map(str, layers))}"
        if layers != config.query_layers
        else config.output_dir
    )
    run_config = replace(config, query_layers=layers, output_dir=output, overwrite_output_dir=True)
    stored = load_results(output) if reuse and (Path(output) / "training_config.json").is_file() else None
    if stored is None or stored.get("retention") is None:
        started = time.perf_counter()
        distill_query_tower(run_config)
        print(f"distilled {layers} in {time.perf_counter() - started:.0f}s", file=sys.stderr)
        stored = load_results(output)
    return {"output": output, **stored}


def _untrained(config: QEDConfig, layers: list[int], datasets) -> dict:
    model = build_asymmetric_model(
        config.teacher, QueryTowerConfig(layers=layers, max_seq_length=config.query_max_seq_length)
    )
    teacher = extract_tower(model, "document", copy_modules=False)
    report = retention_report(teacher, model, datasets, RetrievalEvalConfig(batch_size=config.teacher_batch_size))
    return report.to_dict()


def _rows(retention: dict) -> dict[str, dict]:
    return {row["dataset"]: row for row in retention["rows"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--layers", nargs="+", default=["0,5", "0,1"], help="student initialisations")
    parser.add_argument("--name", default="qed_minilm")
    parser.add_argument("--reuse", action="store_true", help="reuse finished runs found in the output folders")
    parser.add_argument("--untrained-only", nargs="*", default=[], help="initialisations evaluated untrained only")
    args = parser.parse_args()

    config = QEDConfig.from_yaml(args.config)
    datasets = [load_eval_dataset(spec) for spec in config.eval_datasets]
    variants = []
    for spec in args.layers:
        layers = [int(x) for x in spec.split(",")]
        distilled = _distilled(config, layers, args.reuse)
        variants.append(
            {
                "layers": layers,
                "untrained": _untrained(config, layers, datasets),
                "distilled": distilled["retention"],
                "latency": distilled["latency"],
                "training": {k: distilled["training_config"][k] for k in ("train_seconds", "training_queries")},
                "output": distilled["output"],
            }
        )
    for spec in args.untrained_only:
        layers = [int(x) for x in spec.split(",")]
        variants.append({"layers": layers, "untrained": _untrained(config, layers, datasets)})
    result = {
        "command": "python benchmarks/qed_benchmark.py " + " ".join(sys.argv[1:]),
        "config": config.to_dict(),
        "variants": variants,
    }
    write_results(args.name, result, to_markdown(result))
    print(to_markdown(result))


def to_markdown(result: dict) -> str:
    config = result["config"]
    first = result["variants"][0]
    teacher_rows = _rows(first["distilled"])
    datasets = list(teacher_rows)
    hardware = first["latency"]["results"][0]["hardware"] if first.get("latency") else {}
    lines = [
        f"# QED on {config['teacher']}: query towers vs the teacher (nDCG@10 ×100, retention = student / teacher)",
        "",
        f"Command: `{result['command']}`  ",
        f"Training queries: {first['training']['training_queries']['report']}  ",
        f"Hardware: {hardware_line(hardware)}",
        "",
        "| query tower | " + " | ".join(f"{d} nDCG@10 | {d} R@100 | {d} retention" for d in datasets) + " |",
        "|---|" + "---:|" * (3 * len(datasets)),
        "| teacher (all layers) | "
        + " | ".join(
            f"{100 * teacher_rows[d]['teacher']['ndcg_at_10']:.2f} | {100 * teacher_rows[d]['teacher']['recall_at_100']:.2f} | 100%"
            for d in datasets
        )
        + " |",
    ]
    for variant in result["variants"]:
        for kind in [k for k in ("untrained", "distilled") if k in variant]:
            rows = _rows(variant[kind])
            cells = []
            for d in datasets:
                row = rows[d]
                p = row.get("p_value")
                star = "" if p is None or p >= 0.05 else "*"
                cells.append(
                    f"{100 * row['student']['ndcg_at_10']:.2f}{star} | {100 * row['student']['recall_at_100']:.2f} | "
                    f"{100 * row['retention_ndcg_at_10']:.1f}%"
                )
            lines.append(f"| layers {variant['layers']} {kind} | " + " | ".join(cells) + " |")
    lines += ["", "`*`: the difference to the teacher is significant (paired t-test over queries, p < 0.05).", ""]
    lines += ["| query tower | speed-up b=1 | speed-up b=32 | distillation wall time |", "|---|---:|---:|---:|"]
    for variant in [v for v in result["variants"] if "training" in v]:
        speedup = variant["latency"]["speedup"] if variant.get("latency") else {}
        lines.append(
            f"| layers {variant['layers']} | ×{speedup.get('1', '?')} | ×{speedup.get('32', '?')} | "
            f"{variant['training']['train_seconds'] / 60:.1f} min |"
        )
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
