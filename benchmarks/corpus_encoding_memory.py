"""Corpus encoding target: the peak memory does not grow with the corpus size (measured at 2 sizes per model).

The corpus is TREC-DL 2019 passage (10,818 MS MARCO passages, title + " " + text as asym_st.data.beir joins them),
loaded with ``datasets`` from its corpus.jsonl so that it is a memory-mapped arrow table, and passed to
``EmbeddingCache.encode`` as the column ``dataset["passage"]`` (sliced chunk by chunk, never a Python list). Every
measurement runs in a fresh process with a fresh temporary cache (nothing is read back) and reports:

- RSS after loading the model and the corpus (the baseline) and the high-water mark at that point;
- the peak RSS of the whole process (``getrusage(...).ru_maxrss``) after encoding;
- the peak *anonymous* RSS during encoding (``RssAnon`` of /proc/self/status, sampled every 20 ms): the heap.
  ``ru_maxrss`` also counts the pages of the memory-mapped arrow corpus that were read, which are page cache the
  kernel can drop; they grow with the corpus by design of a memory-mapped corpus, the heap should not;
- encoding throughput (passages/s, cache key hashing, shard writing and the final merge included).

Two encoders:

``minilm``  all-MiniLM-L6-v2 (max_seq_length 128), at two corpus sizes affordable on the CPU, with glibc's default
            allocator settings and with a fixed mmap threshold (``MALLOC_MMAP_THRESHOLD_=131072``): by default glibc
            raises its mmap threshold each time a large freed block was mmapped, so later activation tensors come
            from the heap, whose peak then ratchets up over the first chunks (bounded by the 32 MB maximum
            threshold, but visible at these sizes). A fixed threshold keeps every large tensor mmapped.
``static``  a ``StaticEmbedding`` with MiniLM's tokenizer and random 384-d weights: the same pipeline with an
            encoder so cheap that corpus sizes where a materialised matrix would be hundreds of MB are affordable
            (the TREC-DL passages repeated); it measures the sharded pipeline itself.

Command for benchmarks/results/corpus_encoding_memory.{md,json} (repository root, offline with ../shared):

    HF_HUB_CACHE=../shared/hf-hub HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 nice -n 5 python benchmarks/corpus_encoding_memory.py

(about 10 minutes on a loaded 2-core machine).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
DIMENSION = 384


# ----------------------------------------------------------------------------------------------- worker


def _status_mb() -> dict[str, float]:
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            fields[name] = int(value.split()[0]) / 1024  # kB -> MB
    return fields


def _max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


class _AnonPeak(threading.Thread):
    """Samples RssAnon while encoding runs (the kernel keeps no high-water mark of anonymous memory alone)."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak = _status_mb()["RssAnon"]
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.02):
            self.peak = max(self.peak, _status_mb()["RssAnon"])


def _corpus(folder: Path, size: int, work: Path):
    from datasets import concatenate_datasets, load_dataset

    from asym_st.data.beir import document_text

    corpus = load_dataset("json", data_files=str(folder / "corpus.jsonl"), split="train", cache_dir=str(work / "hf"))
    corpus = corpus.map(
        lambda batch: {"passage": [document_text(t, x) for t, x in zip(batch["title"], batch["text"], strict=True)]},
        batched=True,
        remove_columns=corpus.column_names,
    )
    if size > len(corpus):  # the static encoder's large sizes: the passages repeated (still memory-mapped)
        corpus = concatenate_datasets([corpus] * -(-size // len(corpus)))
    return corpus.select(range(size))


def _model(encoder: str, max_seq_length: int):
    import torch
    from sentence_transformers import SentenceTransformer

    if encoder == "minilm":
        model = SentenceTransformer(MINILM, device="cpu")
        model.max_seq_length = max_seq_length
        return model
    from sentence_transformers.sentence_transformer.modules import StaticEmbedding
    from transformers import AutoTokenizer

    torch.manual_seed(0)
    static = StaticEmbedding(AutoTokenizer.from_pretrained(MINILM), embedding_dim=DIMENSION)
    return SentenceTransformer(modules=[static], device="cpu")


def worker(args: argparse.Namespace) -> None:
    from asym_st.data.cache import EmbeddingCache

    work = Path(args.work)
    model = _model(args.encoder, args.max_seq_length)
    after_model = _status_mb()
    corpus = _corpus(Path(args.corpus), args.size, work)
    texts = corpus["passage"]
    before = _status_mb()
    max_rss_before = _max_rss_mb()
    sampler = _AnonPeak()
    sampler.start()
    started = time.perf_counter()
    embeddings = EmbeddingCache(work / "embeddings").encode(
        model,
        texts,
        route="document",
        batch_size=args.batch_size,
        chunk_size=args.chunk_size,
        shard_size=args.shard_size,
        show_progress_bar=False,
    )
    seconds = time.perf_counter() - started
    sampler.done.set()
    sampler.join()
    assert embeddings.shape == (args.size, DIMENSION), embeddings.shape
    row = {
        "encoder": args.encoder,
        "passages": args.size,
        "shard_size": args.shard_size,
        "shards": -(-args.size // args.shard_size),
        "matrix_mb": args.size * DIMENSION * 4 / 2**20,
        "rss_after_model_mb": after_model["VmRSS"],
        "rss_before_encoding_mb": before["VmRSS"],
        "anon_before_encoding_mb": before["RssAnon"],
        "max_rss_before_encoding_mb": max_rss_before,
        "peak_rss_mb": _max_rss_mb(),
        "peak_anon_during_encoding_mb": sampler.peak,
        "rss_file_after_encoding_mb": _status_mb()["RssFile"],
        "seconds": seconds,
        "passages_per_second": args.size / seconds,
    }
    print(json.dumps(row))


# ----------------------------------------------------------------------------------------------- driver


FIXED_THRESHOLD = {"MALLOC_MMAP_THRESHOLD_": "131072"}


def _measure(
    encoder: str, size: int, shard_size: int, batch_size: int, args: argparse.Namespace, allocator: dict | None = None
) -> dict:
    with tempfile.TemporaryDirectory(prefix="corpus-encoding-") as work:
        command = [sys.executable, __file__, "--worker", "--encoder", encoder, "--size", str(size), "--work", work]
        command += ["--corpus", args.corpus, "--shard-size", str(shard_size), "--batch-size", str(batch_size)]
        command += ["--chunk-size", str(args.chunk_size), "--max-seq-length", str(args.max_seq_length)]
        env = {**os.environ, "HF_DATASETS_CACHE": str(Path(work) / "hf"), "TOKENIZERS_PARALLELISM": "false"}
        env.update(allocator or {})
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{encoder} at {size} passages failed:\n{done.stderr[-4000:]}")
        row = json.loads(done.stdout.strip().splitlines()[-1])
    row["allocator"] = " ".join(f"{k}={v}" for k, v in (allocator or {}).items()) or "glibc default"
    print(
        f"{encoder} ({row['allocator']}) {size}: peak RSS {row['peak_rss_mb']:.0f} MB, peak anon {row['peak_anon_during_encoding_mb']:.0f} MB,"
        f" {row['passages_per_second']:.1f} passages/s",
        file=sys.stderr,
    )
    return row


def _growth(rows: list[dict], encoder: str, allocator: str) -> dict:
    same = (r for r in rows if r["encoder"] == encoder and r["allocator"] == allocator)
    small, large = sorted(same, key=lambda r: r["passages"])
    return {
        "encoder": encoder,
        "allocator": allocator,
        "sizes": [small["passages"], large["passages"]],
        "peak_rss_growth_mb": large["peak_rss_mb"] - small["peak_rss_mb"],
        "peak_anon_growth_mb": large["peak_anon_during_encoding_mb"] - small["peak_anon_during_encoding_mb"],
        "encoding_peak_over_baseline_mb": [
            r["peak_anon_during_encoding_mb"] - r["anon_before_encoding_mb"] for r in (small, large)
        ],
        "matrix_growth_mb": large["matrix_mb"] - small["matrix_mb"],
    }


def to_markdown(result: dict) -> str:
    lines = [
        "# Corpus encoding: peak memory vs corpus size (TREC-DL 2019 passages, memory-mapped `datasets` column)",
        "",
        f"Command: `{result['command']}`  ",
        f"Hardware: {result['hardware']}  ",
        f"Date: {result['date']}  ",
        f"Settings: EmbeddingCache.encode, chunk_size {result['chunk_size']}, MiniLM max_seq_length "
        f"{result['max_seq_length']}, float32, one fresh process and a fresh temporary cache per row.",
        "",
        "| encoder | allocator | passages | shards | matrix MB | RSS after model MB | RSS before encoding MB "
        "| peak RSS MB | peak anon during encoding MB | anon before encoding MB | encode s | passages/s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['encoder']} | {r['allocator']} | {r['passages']:,} | {r['shards']} | {r['matrix_mb']:.1f} | "
            f"{r['rss_after_model_mb']:.0f} | {r['rss_before_encoding_mb']:.0f} | {r['peak_rss_mb']:.0f} | "
            f"{r['peak_anon_during_encoding_mb']:.0f} | {r['anon_before_encoding_mb']:.0f} | {r['seconds']:.1f} | "
            f"{r['passages_per_second']:.1f} |"
        )
    lines += ["", "Reading:", ""]
    for g in result["growth"]:
        lines.append(
            f"- {g['encoder']} ({g['allocator']}), {g['sizes'][0]:,} → {g['sizes'][1]:,} passages: peak RSS "
            f"{g['peak_rss_growth_mb']:+.1f} MB, peak anonymous memory {g['peak_anon_growth_mb']:+.1f} MB, "
            f"while the embedding matrix grows by {g['matrix_growth_mb']:.1f} MB (what holding it in memory would "
            f"add). Encoding adds {g['encoding_peak_over_baseline_mb'][0]:.0f} / "
            f"{g['encoding_peak_over_baseline_mb'][1]:.0f} MB of heap over the loaded baseline at the two sizes."
        )
    lines += ["", *result["notes"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", default="../shared/data/beir/trec-dl-2019-passage")
    parser.add_argument("--minilm-sizes", type=int, nargs=2, default=[250, 1000])
    parser.add_argument("--static-sizes", type=int, nargs=2, default=[40_000, 160_000])
    parser.add_argument("--chunk-size", type=int, default=256)
    parser.add_argument("--max-seq-length", type=int, default=128)
    parser.add_argument("--name", default="corpus_encoding_memory")
    # worker mode (one measurement, run by the driver in a fresh process)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--encoder", choices=["minilm", "static"], help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--shard-size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--batch-size", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return

    from results_io import write_results  # benchmarks/ is on sys.path when a benchmark runs

    from asym_st.evaluation import hardware_description

    hardware = hardware_description("cpu")
    rows = [_measure("minilm", size, 256, 32, args) for size in args.minilm_sizes]
    rows += [_measure("minilm", size, 256, 32, args, FIXED_THRESHOLD) for size in args.minilm_sizes]
    rows += [_measure("static", size, 8192, 1024, args) for size in args.static_sizes]
    result = {
        "rows": rows,
        "growth": [
            _growth(rows, encoder, allocator)
            for encoder, allocator in dict.fromkeys((r["encoder"], r["allocator"]) for r in rows)
        ],
        "chunk_size": args.chunk_size,
        "max_seq_length": args.max_seq_length,
        "command": "HF_HUB_CACHE=../shared/hf-hub HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 nice -n 5 "
        + shlex.join(["python", "benchmarks/corpus_encoding_memory.py", *sys.argv[1:]]),
        "hardware": f"{hardware['cpu']}, {hardware['cpu_count']} cores, {hardware['torch_threads']} torch threads, "
        f"load average {hardware['load_average_1m']} at the start (shared machine), torch {hardware['torch']}",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "notes": [
            "Shard sizes: 256 passages for MiniLM (one shard per chunk, so both sizes span several shards), the "
            "default 8192 for the static encoder. Throughput is that of a loaded 2-core machine (another benchmark "
            "ran in the background, and the run was niced): compare the rows with each other, not with other "
            "machines.",
            "`peak RSS` (ru_maxrss) includes the file-backed pages of the memory-mapped corpus that encoding read "
            "(`RssFile`, in the JSON); `peak anon` is the heap, which is what sharding bounds.",
            "Diagnosis of the default-allocator MiniLM growth (plain `encode_document` on 8 chunks of 256 "
            "passages, `malloc_trim(0)` after each): the heap after each chunk stays at 403-404 MB (nothing is "
            "held from one chunk to the next), while the peak within a chunk climbs 516, 554, 577, 643, 614, 639, "
            "678, 671 MB; with `MALLOC_MMAP_THRESHOLD_=131072` it is 470-479 MB for every chunk. Without the "
            "`malloc_trim` that the sharded encoder now does after each chunk, an earlier run of this benchmark "
            "measured 628 / 760 MB peak anon at 500 / 2,000 passages.",
        ],
    }
    write_results(args.name, result, to_markdown(result))
    print(to_markdown(result))


if __name__ == "__main__":
    main()
