"""Size and query latency of a truncated query tower vs its teacher (CPU, batch 1 and 32).

Command (from the repository root, offline with ../shared):

    HF_HUB_CACHE=../shared/hf-hub HF_HUB_OFFLINE=1 python benchmarks/towers_size_latency.py \
        --teacher sentence-transformers/all-MiniLM-L6-v2 --layers 0,5 \
        --queries ../shared/data/queries/msmarco-dev-small/queries.dev.small.tsv

Writes benchmarks/results/towers_size_latency.{json,md}.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from results_io import write_results  # benchmarks/ is on sys.path when a benchmark runs

from asym_st import QueryTowerConfig, build_asymmetric_model, save_asymmetric_model, tower_modules
from asym_st.data import read_query_file
from asym_st.evaluation import LatencyConfig, measure_latency
from asym_st.modeling import count_parameters, extract_tower


def _folder_megabytes(folder: Path) -> float:
    return sum(f.stat().st_size for f in folder.rglob("*.safetensors")) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", default="sentence-transformers/all-MiniLM-L6-v2")
    parser.add_argument("--layers", default="0,5")
    parser.add_argument("--queries", required=True)
    parser.add_argument("--num-queries", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--name", default="towers_size_latency")
    args = parser.parse_args()

    layers = [int(x) for x in args.layers.split(",")]
    model = build_asymmetric_model(args.teacher, QueryTowerConfig(layers=layers), device="cpu")
    queries = read_query_file(args.queries, limit=args.num_queries)
    config = LatencyConfig(
        batch_sizes=(1, 32), num_queries=args.num_queries, repeats=args.repeats, threads=args.threads
    )

    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        save_asymmetric_model(model, Path(tmp) / "asym")
        for route in ("query", "document"):
            # Time each tower as a standalone model, so the Router adds nothing to either side.
            tower = extract_tower(model, route)
            name = (
                f"{len(layers)}-layer query tower"
                if route == "query"
                else f"teacher ({model.asym_st_record.teacher_num_layers} layers)"
            )
            latency = measure_latency(tower, queries.texts, config, name=name)
            rows[route] = {
                "name": name,
                "parameters": sum(count_parameters(m) for m in tower_modules(model, route)),
                "safetensors_mb": round(_folder_megabytes(Path(tmp) / "asym" / f"{route}_0_Transformer"), 2),
                "latency": [r.to_dict() for r in latency],
            }
    speedup = {
        str(b["batch_size"]): round(b_teacher["p50_ms"] / b["p50_ms"], 2)
        for b, b_teacher in zip(rows["query"]["latency"], rows["document"]["latency"], strict=True)
    }
    result = {
        "command": "python benchmarks/towers_size_latency.py "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v is not None),
        "teacher": args.teacher,
        "query_layers": layers,
        "queries": queries.report(),
        "towers": rows,
        "speedup_p50": speedup,
    }
    write_results(args.name, result, _markdown(result))
    print(_markdown(result))


def _markdown(result: dict) -> str:
    hardware = result["towers"]["query"]["latency"][0]["hardware"]
    lines = [
        f"# Query tower vs teacher: size and latency ({result['teacher']}, layers {result['query_layers']})",
        "",
        f"Command: `{result['command']}`  ",
        f"Hardware: {hardware['cpu']}, device {hardware['device']}, {hardware['torch_threads']} torch threads, "
        f"torch {hardware['torch']}  ",
        f"Queries: {result['queries']}",
        "",
        "| tower | params | weights (MB) | b=1 p50 ms | b=1 p95 ms | b=1 tokenize ms | b=32 queries/s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for route in ("query", "document"):
        row = result["towers"][route]
        b1, b32 = row["latency"]
        lines.append(
            f"| {row['name']} | {row['parameters'] / 1e6:.1f}M | {row['safetensors_mb']} | {b1['p50_ms']} | "
            f"{b1['p95_ms']} | {b1['tokenize_p50_ms']} | {b32['queries_per_second']} |"
        )
    lines += [
        "",
        f"Speed-up of the query tower (teacher p50 / tower p50): batch 1 ×{result['speedup_p50']['1']}, "
        f"batch 32 ×{result['speedup_p50']['32']}.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
