"""Approximate search vs exact on the largest local corpus: recall@100, latency, memory of faiss Flat/HNSW/IVF/IVF-PQ.

Corpus: TREC-DL-2019 passages (10,818), all-MiniLM-L6-v2 document embeddings (from the shared embedding cache, the
same texts ``evaluate_retrieval`` encodes). Queries: the 6,980 MS MARCO dev-small queries, encoded by the same model
(also cached, route ``query``). Every index is built by :func:`asym_st.evaluation.search.build_index`, the code path
of ``asym-st evaluate --index KIND --search-option KEY=VALUE``; search-time settings (``hnsw_ef_search``,
``ivf_nprobe``, ``ivfpq_refine``) are swept on one built index with ``set_search_parameters``.

- Ground truth: exact (``flat``) top-100 of every query. Recall@k vs exact = mean over queries of
  |approximate top-k ∩ exact top-k| / k (k = 10, 100).
- Latency: per-query wall time at batch 1 (median and p95 over ``--latency-queries`` queries, after a warm-up), and
  throughput with all queries in one call; faiss on ``--threads`` OpenMP threads (1 by default: a fair per-query
  comparison, and faiss' spinning threads run far slower than one on a busy 2-core machine).
- Latency is measured in the searching thread's CPU time (and reported in wall time as well): on a shared, busy
  machine, wall time mostly measures the other jobs.
- Memory: ``len(faiss.serialize_index(index))``. Build: ``build_index`` CPU time (training included).
- The chosen setting per index kind: the lowest batch-1 CPU latency with recall@100 ≥ ``--target``.
- End to end: TREC-DL-2019's 43 judged queries through ``evaluate_retrieval`` with each chosen setting (nDCG@10,
  Recall@100 at relevance level 2), to show what the recall loss costs in the metric.

Command (from the repository root, offline with ../shared):

    HF_HUB_CACHE=../shared/hf-hub HF_HUB_OFFLINE=1 python benchmarks/ann_recall.py

Writes benchmarks/results/ann_recall.{json,md,png}; ``--render-only`` rewrites the .md and .png from the .json.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shlex
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import faiss
import numpy as np
from results_io import RESULTS, write_results  # benchmarks/ is on sys.path when a benchmark runs

from asym_st.data import load_beir, read_query_file
from asym_st.data.cache import EmbeddingCache
from asym_st.evaluation import RetrievalEvalConfig, evaluate_retrieval
from asym_st.evaluation.search import SearchConfig, build_index, search, set_search_parameters
from asym_st.utils import atomic_write_bytes

SHARED = Path(__file__).resolve().parents[2] / "shared"
TOP_K = 100


def _ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def _embeddings(args: argparse.Namespace):
    from sentence_transformers import SentenceTransformer

    dataset = load_beir(args.corpus, split="test")
    model = SentenceTransformer(args.model, device="cpu")
    cache = EmbeddingCache()
    # Exactly the texts evaluate_retrieval encodes, so the cached document embeddings are reused.
    documents = cache.encode(
        model, [dataset.corpus[d] for d in dataset.corpus_ids], route="document", description="documents"
    )
    queries = cache.encode(model, list(read_query_file(args.queries).texts), route="query", description="queries")
    return dataset, model, np.asarray(documents, dtype=np.float32), np.asarray(queries, dtype=np.float32)


def _overlap(approximate: np.ndarray, exact: np.ndarray, k: int) -> float:
    hits = [len(np.intersect1d(a[:k], e[:k], assume_unique=True)) for a, e in zip(approximate, exact, strict=True)]
    return float(np.mean(hits)) / k


def _measure(index: faiss.Index, queries: np.ndarray, exact: np.ndarray, latency_rows: np.ndarray) -> dict:
    wall, cpu = time.perf_counter(), time.process_time()
    _, indices = search(index, queries, TOP_K)
    batch_wall, batch_cpu = time.perf_counter() - wall, time.process_time() - cpu
    for row in latency_rows[:20]:  # warm-up
        search(index, queries[row : row + 1], TOP_K)
    walls, cpus = [], []
    for row in latency_rows:
        # faiss on one OpenMP thread searches in this thread: its CPU time is the search's, whatever else runs.
        wall, cpu = time.perf_counter(), time.thread_time()
        search(index, queries[row : row + 1], TOP_K)
        walls.append(time.perf_counter() - wall)
        cpus.append(time.thread_time() - cpu)
    return {
        "recall_at_100": _overlap(indices, exact, 100),
        "recall_at_10": _overlap(indices, exact, 10),
        "missing_hits": int((indices < 0).sum()),
        "cpu_p50_ms": 1000 * float(np.median(cpus)),
        "p50_ms": 1000 * float(np.median(walls)),
        "p95_ms": 1000 * float(np.percentile(walls, 95)),
        "batch_all_qps": len(queries) / batch_wall,
        "batch_all_cpu_qps": len(queries) / batch_cpu,
    }


def _row(kind: str, label: str, settings: dict, index: faiss.Index, build_s: float, measured: dict) -> dict:
    return {
        "kind": kind,
        "label": label,
        "settings": settings,
        "memory_bytes": len(faiss.serialize_index(index)),
        "build_s": build_s,
        **measured,
    }


def _build(documents: np.ndarray, config: SearchConfig) -> tuple[faiss.Index, float]:
    tick = time.process_time()
    index = build_index(documents, config)
    return index, time.process_time() - tick


def sweep(documents: np.ndarray, queries: np.ndarray, args: argparse.Namespace) -> tuple[list[dict], np.ndarray]:
    latency_rows = np.sort(np.random.default_rng(0).choice(len(queries), size=args.latency_queries, replace=False))
    flat, build_s = _build(documents, SearchConfig(index="flat"))
    _, exact = search(flat, queries, TOP_K)
    rows = [_row("flat", "flat", {}, flat, build_s, _measure(flat, queries, exact, latency_rows))]
    print(f"flat: {rows[-1]['cpu_p50_ms']:.3f} ms", file=sys.stderr, flush=True)

    hnsw, build_s = _build(documents, SearchConfig(index="hnsw", hnsw_m=args.hnsw_m))
    for ef in args.ef_search:
        set_search_parameters(hnsw, SearchConfig(index="hnsw", hnsw_m=args.hnsw_m, hnsw_ef_search=ef))
        settings = {"hnsw_m": args.hnsw_m, "hnsw_ef_search": ef}
        rows.append(
            _row("hnsw", f"hnsw ef={ef}", settings, hnsw, build_s, _measure(hnsw, queries, exact, latency_rows))
        )
        print(rows[-1]["label"], f"{rows[-1]['recall_at_100']:.4f}", file=sys.stderr, flush=True)

    ivf, build_s = _build(documents, SearchConfig(index="ivf"))
    for nprobe in args.nprobe:
        set_search_parameters(ivf, SearchConfig(index="ivf", ivf_nprobe=nprobe))
        settings = {"ivf_nlist": ivf.nlist, "ivf_nprobe": nprobe}
        rows.append(
            _row("ivf", f"ivf nprobe={nprobe}", settings, ivf, build_s, _measure(ivf, queries, exact, latency_rows))
        )
        print(rows[-1]["label"], f"{rows[-1]['recall_at_100']:.4f}", file=sys.stderr, flush=True)

    for m in args.pq_m:
        # One build per m, with re-ranking; the rows without it search the same trained PQ index (its base).
        refined, build_s = _build(documents, SearchConfig(index="ivfpq", ivfpq_m=m, ivfpq_refine=max(args.refine)))
        base = faiss.downcast_index(refined.base_index)
        for nprobe in args.nprobe:
            for refine in [0, *args.refine]:
                config = SearchConfig(index="ivfpq", ivfpq_m=m, ivf_nprobe=nprobe, ivfpq_refine=refine)
                index = set_search_parameters(refined if refine else base, config)
                settings = {"ivf_nlist": base.nlist, "ivf_nprobe": nprobe, "ivfpq_m": m, "ivfpq_nbits": 8}
                settings["ivfpq_refine"] = refine
                label = f"ivfpq m={m} nprobe={nprobe}" + (f" refine={refine}" if refine else "")
                rows.append(
                    _row("ivfpq", label, settings, index, build_s, _measure(index, queries, exact, latency_rows))
                )
                print(label, f"{rows[-1]['recall_at_100']:.4f}", file=sys.stderr, flush=True)
    flat_p50 = rows[0]["cpu_p50_ms"]
    for row in rows:
        row["latency_ratio"] = row["cpu_p50_ms"] / flat_p50
        row["speedup"] = flat_p50 / row["cpu_p50_ms"]
    return rows, exact


def choose(rows: list[dict], target: float) -> dict[str, dict]:
    """Per index kind (IVF-PQ with and without re-ranking apart): the fastest row at batch 1 with recall ≥ target."""
    chosen = {}
    for row in rows[1:]:
        family = row["kind"] + (" + refine" if row["settings"].get("ivfpq_refine") else "")
        if row["recall_at_100"] >= target and (
            family not in chosen or row["cpu_p50_ms"] < chosen[family]["cpu_p50_ms"]
        ):
            chosen[family] = row
    return chosen


def end_to_end(dataset, model, chosen: dict[str, dict]) -> list[dict]:
    results = []
    for family, row in chosen.items():
        config = RetrievalEvalConfig(
            index=row["kind"], search_options=row["settings"], relevance_level=2, show_progress_bar=False
        )
        result = evaluate_retrieval(model, dataset, config, name="all-MiniLM-L6-v2")
        results.append(
            {"setting": family, "label": row["label"], **result.metrics, "search_s": result.timings["search_s"]}
        )
    return results


def plot(rows: list[dict], target: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display on servers
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7.2, 4.8), dpi=120)

    def frontier(members: list[dict]) -> list[dict]:  # fastest setting for each recall level reached
        kept: list[dict] = []
        for row in sorted(members, key=lambda r: (r["cpu_p50_ms"], -r["recall_at_100"])):
            if not kept or row["recall_at_100"] > kept[-1]["recall_at_100"]:
                kept.append(row)
        return kept

    lines = [("hnsw M=32, ef_search", "C0", "-", [r for r in rows if r["kind"] == "hnsw"])]
    lines.append(("ivf, nprobe", "C1", "-", [r for r in rows if r["kind"] == "ivf"]))
    for color, m in enumerate(sorted({r["settings"]["ivfpq_m"] for r in rows if r["kind"] == "ivfpq"}), start=2):
        pq = [r for r in rows if r["kind"] == "ivfpq" and r["settings"]["ivfpq_m"] == m]
        lines.append((f"ivfpq m={m}", f"C{color}", "-", [r for r in pq if not r["settings"]["ivfpq_refine"]]))
        refined = frontier([r for r in pq if r["settings"]["ivfpq_refine"]])
        lines.append((f"ivfpq m={m} + refine (best factor)", f"C{color}", "--", refined))
    for name, color, style, members in lines:  # solid: in sweep order (ef_search, nprobe growing)
        xs, ys = [r["cpu_p50_ms"] for r in members], [r["recall_at_100"] for r in members]
        axes.plot(xs, ys, style, color=color, marker="o", ms=3, label=name)
    axes.scatter([rows[0]["cpu_p50_ms"]], [1.0], marker="s", color="black", zorder=3, label="flat (exact)")
    axes.axhline(target, color="grey", linewidth=0.8, linestyle=":")
    axes.set_xscale("log")
    axes.set_xlabel("per-query latency, batch 1, 1 thread (CPU ms, median)")
    axes.set_ylabel("recall@100 vs exact search")
    axes.set_title("faiss indexes on TREC-DL-2019 passages (10,818), all-MiniLM-L6-v2", fontsize=10)
    axes.grid(alpha=0.3, which="both")
    axes.legend(fontsize=7, loc="lower right", ncol=2)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    atomic_write_bytes(path, buffer.getvalue())


def _mib(size: int) -> str:
    return f"{size / 2**20:.2f}"


def _setting(row: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in row["settings"].items()) or "exact"


def to_markdown(result: dict) -> str:
    rows, chosen = result["rows"], result["chosen"]
    lines = [
        "# Approximate search vs exact: faiss Flat, HNSW, IVF, IVF-PQ on the largest local corpus",
        "",
        f"Command: `{result['command']}`  ",
        f"Machine: {result['hardware']}  ",
        f"Date: {result['date']}  ",
        f"Corpus: {result['corpus']} ({result['num_documents']:,} passages, {result['dim']}-d all-MiniLM-L6-v2 "
        f"document embeddings, cosine). Queries: {result['queries']} ({result['num_queries']:,}, encoded by the same "
        f"model). Ground truth: exact (flat) top-100 per query.  ",
        f"Recall@k = mean |approximate top-k ∩ exact top-k| / k over all {result['num_queries']:,} queries. Latency: "
        f"one query per call, top-100, median over {result['latency_queries']} queries after a warm-up, faiss on "
        f"{result['faiss_threads']} thread; in CPU time of the searching thread (robust to the other jobs on this "
        "shared machine) and in wall time. Latency ratio = CPU p50 / flat's CPU p50 (below 1 is faster). "
        "Throughput: all queries in one call, queries per CPU second. Memory: serialised index size. Build: "
        "`build_index` CPU seconds, training included.",
        "",
        f"## The chosen setting per index kind (lowest batch-1 latency with recall@100 ≥ {result['target']})",
        "",
        "| index | setting | recall@100 | recall@10 | CPU p50 ms | wall p50 ms | latency ratio vs flat | speed-up "
        "| queries/CPU s (batch all) | memory MiB | build s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for family, row in {"flat": rows[0], **chosen}.items():
        lines.append(
            f"| {family} | {_setting(row)} | {row['recall_at_100']:.4f} | {row['recall_at_10']:.4f} | "
            f"{row['cpu_p50_ms']:.3f} | {row['p50_ms']:.3f} | {row['latency_ratio']:.3f} | {row['speedup']:.1f}× | "
            f"{row['batch_all_cpu_qps']:,.0f} | {_mib(row['memory_bytes'])} | {row['build_s']:.1f} |"
        )
    missing = sorted(set(result["families"]) - set(chosen))
    if missing:
        lines += ["", f"No setting of {', '.join(missing)} reached recall@100 ≥ {result['target']} in the sweep."]
    if result.get("end_to_end"):
        lines += [
            "",
            "## End to end: TREC-DL-2019 (43 judged queries, relevance level 2) through `evaluate_retrieval`",
            "",
            "| index | setting | nDCG@10 | Recall@100 | MRR@10 | MAP |",
            "|---|---|---:|---:|---:|---:|",
        ]
        for row in result["end_to_end"]:
            lines.append(
                f"| {row['setting']} | {row['label']} | {100 * row['ndcg_at_10']:.2f} | {100 * row['recall_at_100']:.2f} "
                f"| {100 * row['mrr_at_10']:.2f} | {100 * row['map']:.2f} |"
            )
    lines += [
        "",
        "## Reading it",
        "",
        *result["notes"],
        "",
        "## Full sweep",
        "",
        "IVF-PQ rows without re-ranking search the base index of the same build as the rows with it (so their build "
        "time includes storing the full vectors for re-ranking, a negligible part of it).",
        "",
        "| index | setting | recall@100 | recall@10 | missing hits | CPU p50 ms | wall p50 ms | wall p95 ms | latency "
        "ratio | queries/CPU s | queries/s (wall) | memory MiB | build s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['kind']} | {row['label']} | {row['recall_at_100']:.4f} | {row['recall_at_10']:.4f} | "
            f"{row['missing_hits']} | {row['cpu_p50_ms']:.3f} | {row['p50_ms']:.3f} | {row['p95_ms']:.3f} | "
            f"{row['latency_ratio']:.3f} | {row['batch_all_cpu_qps']:,.0f} | {row['batch_all_qps']:,.0f} | "
            f"{_mib(row['memory_bytes'])} | {row['build_s']:.1f} |"
        )
    lines += ["", "![recall vs latency](ann_recall.png)"]
    return "\n".join(lines) + "\n"


def _notes(result: dict) -> list[str]:
    rows = result["rows"]
    flat = rows[0]
    plain_pq = [r for r in rows if r["kind"] == "ivfpq" and not r["settings"]["ivfpq_refine"]]
    best_pq = max(plain_pq, key=lambda r: r["recall_at_100"]) if plain_pq else None
    good = [r for r in rows[1:] if r["recall_at_100"] >= result["target"]]
    best_batch = max(good or rows[1:], key=lambda r: r["batch_all_cpu_qps"])
    notes = [
        f"- **The corpus is small.** {result['num_documents']:,} passages is the largest corpus available locally, and "
        f"exact search over it costs {flat['cpu_p50_ms']:.2f} ms of CPU per query on one thread, so the latency "
        "ratios above understate what an approximate index buys on the full MS MARCO collection (8.8M passages, "
        "~800× more): exact search cost grows linearly with the corpus, HNSW roughly logarithmically, IVF with the "
        "visited fraction of the lists (nprobe / nlist). The settings do not carry over either: here recall@100 ≥ "
        "0.95 needs IVF to visit about a third of only a few hundred lists; at 8.8M, nlist (faiss' guideline "
        "4·sqrt(n) to 16·sqrt(n)), nprobe and ef_search have to be tuned again on that corpus.",
        f"- **Batched exact search wins at this size.** All {result['num_queries']:,} queries in one call make flat "
        f"search one matrix product: {flat['batch_all_cpu_qps']:,.0f} queries per CPU second, against "
        f"{best_batch['batch_all_cpu_qps']:,.0f} for the best approximate setting with recall@100 ≥ "
        f"{result['target']} ({best_batch['label']}); only low-recall settings are faster in batch. The approximate "
        "indexes pay off one query at a time, and with the corpus size.",
        "- **Memory** is where IVF-PQ differs in kind: a vector costs `ivfpq_m` bytes of code plus an 8-byte id, "
        f"against {4 * result['dim']:,} bytes of float32 for flat, HNSW and IVF; re-ranking (`ivfpq_refine`) keeps the "
        "full vectors as well, trading the memory gain for recall. At 8.8M passages, the float32 vectors take ~13.5 GB, "
        "48-byte codes with their ids ~0.5 GB.",
    ]
    if best_pq is not None:
        notes.append(
            f"- **IVF-PQ alone does not reach the target here**: its best recall@100 is {best_pq['recall_at_100']:.3f} "
            f"({best_pq['label']}). The exact top-100 scores of MiniLM embeddings are close together, so the "
            "quantisation error reorders the tail of the list whatever nprobe. Exact re-ranking of `ivfpq_refine × 100` "
            "PQ candidates (faiss `IndexRefineFlat`) recovers the recall of IVF at the same nprobe; it cannot exceed it, "
            "so nprobe bounds both."
        )
    notes += [
        "- HNSW's `ef_search` is raised to top-k by `search` (HNSW returns at most ef results), so at top-100 the "
        "sweep starts at 100: smaller values search exactly like 100.",
        "- Timings were taken on a shared 2-core machine with other jobs running (load average in the Machine line), "
        "hence CPU time of the searching thread for the comparisons. Even CPU time is somewhat inflated by the "
        "other jobs (shared caches), which shows as the occasional non-monotonic row in the full sweep; wall times are "
        "listed for reference.",
    ]
    return notes


def _render(name: str) -> None:
    result = json.loads((RESULTS / f"{name}.json").read_text())
    result["notes"] = _notes(result)
    _write(result, name)


def _write(result: dict, name: str) -> None:
    plot(result["rows"], result["target"], RESULTS / f"{name}.png")  # atomic_write_bytes creates RESULTS
    write_results(name, result, to_markdown(result))
    print(to_markdown(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="sentence-transformers/all-MiniLM-L6-v2")
    parser.add_argument("--corpus", default=str(SHARED / "data" / "beir" / "trec-dl-2019-passage"))
    parser.add_argument(
        "--queries", default=str(SHARED / "data" / "queries" / "msmarco-dev-small" / "queries.dev.small.tsv")
    )
    parser.add_argument("--threads", type=int, default=1, help="faiss OpenMP threads for every timing")
    parser.add_argument("--latency-queries", type=int, default=300)
    parser.add_argument("--target", type=float, default=0.95, help="recall@100 vs exact of the chosen settings")
    parser.add_argument("--hnsw-m", type=int, default=32)
    parser.add_argument(
        "--ef-search", type=_ints, default=[100, 128, 160, 192, 256, 384, 512], help="below top-k (100) = 100"
    )
    parser.add_argument("--nprobe", type=_ints, default=[4, 8, 16, 32, 64, 96, 128, 192])
    parser.add_argument("--pq-m", type=_ints, default=[16, 32, 48, 96])
    parser.add_argument(
        "--refine", type=_ints, default=[2, 4, 8, 16], help="IVF-PQ re-ranking factors (0 = none is always in)"
    )
    parser.add_argument(
        "--no-end-to-end", action="store_true", help="skip the TREC-DL evaluation of the chosen settings"
    )
    parser.add_argument("--name", default="ann_recall")
    parser.add_argument("--render-only", action="store_true", help="rewrite the .md/.png from the stored .json")
    args = parser.parse_args()
    if args.render_only:
        _render(args.name)
        return

    faiss.omp_set_num_threads(args.threads)
    started = time.perf_counter()
    load = os.getloadavg()
    dataset, model, documents, queries = _embeddings(args)
    rows, _ = sweep(documents, queries, args)
    chosen = choose(rows, args.target)
    result = {
        "command": shlex.join(["python", "benchmarks/ann_recall.py", *sys.argv[1:]]),
        "hardware": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, faiss {faiss.__version__}, "
        f"load average {load[0]:.1f} at start",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "corpus": os.path.relpath(args.corpus),
        "queries": os.path.relpath(args.queries),
        "model": args.model,
        "num_documents": len(documents),
        "num_queries": len(queries),
        "dim": documents.shape[1],
        "faiss_threads": args.threads,
        "latency_queries": args.latency_queries,
        "target": args.target,
        "families": sorted({r["kind"] + (" + refine" if r["settings"].get("ivfpq_refine") else "") for r in rows[1:]}),
        "chosen": chosen,
        "rows": rows,
    }
    if not args.no_end_to_end:
        result["end_to_end"] = end_to_end(dataset, model, {"flat": rows[0], **chosen})
    result["notes"] = _notes(result)
    result["seconds"] = time.perf_counter() - started
    _write(result, args.name)


if __name__ == "__main__":
    main()
