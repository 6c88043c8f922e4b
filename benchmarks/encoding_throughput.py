"""Document-tower throughput on this machine, the input of the scale plan (docs/scale.md).

Each row runs ``recipes/encode_corpus.py`` (the real sharded, resumable encoder, 1 process or 2 under ``torchrun``)
on the first N passages of TREC-DL-2019's corpus (MS MARCO passages, so the per-passage cost is MS MARCO's) into a
fresh temporary cache, and reports passages/s over the whole command (model load included) and over the encoding
alone (from the recipe's log line). Queries/s of the towers are in ``towers_size_latency.md``.

Command for benchmarks/results/encoding_throughput.{md,json} (repository root, offline with ../shared; all-mpnet-base-v2
needs ``bash ../shared/tools/add-mpnet-to-hub-cache.sh ~/.cache/asym_st/hf-hub-mpnet`` and ``--mpnet-cache``):

    HF_HUB_CACHE=../shared/hf-hub HF_HUB_OFFLINE=1 python benchmarks/encoding_throughput.py \\
        --mpnet-cache ~/.cache/asym_st/hf-hub-mpnet
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from results_io import write_results  # benchmarks/ is on sys.path when a benchmark runs

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO.parent / "shared" / "data" / "beir" / "trec-dl-2019-passage"
LOG_LINE = re.compile(r"(\d+) documents × (\d+) dimensions in (\d+)s \(([\d.]+) documents/s")


def _row(model: str, documents: int, processes: int, max_seq_length: int, hub_cache: str | None) -> dict:
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(REPO)}
    env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 2) // processes))  # the same cores, split between ranks
    if hub_cache:
        env["HF_HUB_CACHE"] = hub_cache
    launcher = [sys.executable]
    if processes > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
    with tempfile.TemporaryDirectory(prefix="encode-bench-") as cache:
        command = [*launcher, str(REPO / "recipes" / "encode_corpus.py"), "--model", model, "--corpus", str(CORPUS)]
        command += ["--max_documents", str(documents), "--max_seq_length", str(max_seq_length), "--cache_dir", cache]
        command += ["--chunk_size", "64", "--shard_size", "128"]
        started = time.perf_counter()
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - started
    if done.returncode:
        raise SystemExit(done.stderr[-3000:])
    match = LOG_LINE.search(done.stderr)
    encode_rate = float(match.group(4)) if match else None
    return {
        "model": model,
        "processes": processes,
        "documents": documents,
        "max_seq_length": max_seq_length,
        "wall_seconds": round(wall, 1),
        "documents_per_second_wall": round(documents / wall, 2),
        "documents_per_second_encoding": encode_rate,
    }


def _markdown(result: dict, command: str) -> str:
    lines = [
        "# Document-tower throughput (TREC-DL-2019 = MS MARCO passages), sharded encoder",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {result['machine']}. Load average at the start: {result['load_average']}. Date: {result['date']}.",
        "",
        "| model | processes | passages | max tokens | wall s | passages/s (wall) | passages/s (encoding) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in result["rows"]:
        lines.append(
            f"| {row['model'].split('/')[-1]} | {row['processes']} | {row['documents']} | {row['max_seq_length']} "
            f"| {row['wall_seconds']} | {row['documents_per_second_wall']} | {row['documents_per_second_encoding']} |"
        )
    lines += [
        "",
        "2 processes share the same 2 cores as 1 process (1 thread each vs 2 threads): the ratio shows the cost of "
        "splitting, not a speed-up. One process per GPU is the setting where shards scale with devices.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--documents", type=int, default=768)
    parser.add_argument("--mpnet-documents", type=int, default=256)
    parser.add_argument("--max-seq-length", type=int, default=256)
    parser.add_argument("--mpnet-cache", help="hub cache holding all-mpnet-base-v2 (row skipped without it)")
    parser.add_argument("--name", default="encoding_throughput")
    args = parser.parse_args()
    load_average = round(os.getloadavg()[0], 2)
    rows = [
        _row("sentence-transformers/all-MiniLM-L6-v2", args.documents, processes, args.max_seq_length, None)
        for processes in (1, 2)
    ]
    if args.mpnet_cache:
        rows.append(
            _row(
                "sentence-transformers/all-mpnet-base-v2",
                args.mpnet_documents,
                1,
                args.max_seq_length,
                args.mpnet_cache,
            )
        )
    for row in rows:
        print(row, file=sys.stderr)
    result = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch CPU",
        "load_average": load_average,
        "rows": rows,
    }
    command = "HF_HUB_CACHE=../shared/hf-hub HF_HUB_OFFLINE=1 python benchmarks/encoding_throughput.py"
    if args.mpnet_cache:
        command += " --mpnet-cache ~/.cache/asym_st/hf-hub-mpnet"
    write_results(args.name, result, _markdown(result, command))
    print(_markdown(result, command))


if __name__ == "__main__":
    main()
