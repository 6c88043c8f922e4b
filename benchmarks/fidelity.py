"""Fidelity: all-MiniLM-L6-v2 on SciFact and NFCorpus, three ways, against the published MTEB figures.

Variants (each can be run on its own; results are merged into one JSON/markdown):

* ``asym-st``       asym-st's evaluator on the BEIR folder (../shared/data/beir/X): faiss exact search, pytrec_eval.
* ``mteb-cache``    mteb's official task (``mteb.get_task``) on the local mirror (../shared/data/hf-datasets/mteb/x),
                    through ``mteb.evaluate`` with asym-st's ``AsymSTEncoder``, i.e. mteb's own wrapper with document
                    embeddings read from asym-st's shared embedding cache (no second corpus encoding).
* ``mteb-default``  the same official task through ``mteb.evaluate`` with mteb's own default
                    ``SentenceTransformerEncoderWrapper`` and no asym-st code on the encoding path (re-encodes the
                    corpus: ~10 min for SciFact, ~7 min for NFCorpus on a free 2-core CPU).

Command (from the repository root, offline with ../shared):

    HF_HUB_CACHE=../shared/hf-hub HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 python benchmarks/fidelity.py \
        --datasets scifact,nfcorpus --variants asym-st,mteb-cache,mteb-default

Writes benchmarks/results/fidelity.{json,md} and mteb's raw result JSON under benchmarks/results/fidelity_mteb/.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shlex
import sys
import time
from pathlib import Path

from results_io import RESULTS, write_results  # benchmarks/ is on sys.path when a benchmark runs
from sentence_transformers import SentenceTransformer

from asym_st.data import load_beir
from asym_st.evaluation import RetrievalEvalConfig, evaluate_retrieval, hardware_description
from asym_st.evaluation.mteb_integration import mteb_to_retrieval_result, mteb_version, run_mteb
from asym_st.evaluation.results import result_file_stem
from asym_st.utils import atomic_write_json, atomic_write_text

SHARED = Path(__file__).resolve().parents[2] / "shared"
# Published nDCG@10 of all-MiniLM-L6-v2 on the MTEB leaderboard (../shared/README.md).
PUBLISHED = {"scifact": 64.51, "nfcorpus": 31.59}
TASKS = {"scifact": "SciFact", "nfcorpus": "NFCorpus"}
VARIANTS = ("asym-st", "mteb-cache", "mteb-default")
NOTES = [
    "- Data version: the mteb mirrors in ../shared/data/hf-datasets/mteb/ were built from the BEIR folders in "
    "../shared/data/beir/ (identical corpus, queries and qrels: checked by `tests/evaluation/test_sources.py`), not "
    "downloaded at the Hub revision mteb pins (for SciFact `d56462d…`). mteb's own task loader reads them after "
    "`task.metadata.dataset['path']` is pointed at the folder; a local folder has no revision to check.",
    "- Truncation: max_seq_length 256 word pieces (the model's configured default, as on the leaderboard); queries "
    "and documents are truncated the same way on every path.",
    "- asym-st vs mteb on NFCorpus (+0.07): two queries (PLAIN-634, PLAIN-3131) have near-duplicate documents "
    "(e.g. MED-4620 / MED-5010) whose cosine scores tie up to the last float32 bit in their top 10; faiss's inner "
    "product and mteb's torch cosine round differently, so the tie is broken differently. Scoring mteb's own run "
    "(its prediction file) with asym-st's pytrec_eval path gives 31.594, mteb's figure: the metric code agrees.",
    "- `mteb-cache` is `mteb.evaluate` with asym-st's `AsymSTEncoder`: mteb's `SentenceTransformerEncoderWrapper` "
    "whose embeddings come from asym-st's shared cache (the corpus was encoded once, by `encode_document`). "
    "`mteb-default` is mteb's unmodified path (no asym-st code encodes anything); it is the figure for the fidelity "
    "claim. Both route queries through `encode_query` and documents through `encode_document`.",
]


def _run_variant(model, key: str, variant: str, args) -> dict:
    started = time.perf_counter()
    if variant == "asym-st":
        dataset = load_beir(SHARED / "data" / "beir" / key, split="test")
        result = evaluate_retrieval(model, dataset, RetrievalEvalConfig(batch_size=args.batch_size), name=args.model)
        data = result.to_dict()
    else:
        mirror = SHARED / "data" / "hf-datasets" / "mteb" / key
        sizes: dict = {}
        task_results = run_mteb(
            model,
            [TASKS[key]],
            mirror=mirror,
            use_cache=variant == "mteb-cache",
            batch_size=args.batch_size,
            name=args.model,
            sizes=sizes,
        )
        raw_dir = RESULTS / "fidelity_mteb" / variant
        raw_dir.mkdir(parents=True, exist_ok=True)
        raw = raw_dir / f"{result_file_stem(TASKS[key], 'result')}.json"
        task_results[0].to_disk(raw)
        counts = sizes.get(TASKS[key], {}).get("test", {})
        data = mteb_to_retrieval_result(task_results[0], args.model, source=str(mirror), **counts).to_dict()
        data["mteb_result_file"] = str(raw.relative_to(RESULTS.parent.parent))
    data["wall_s"] = round(time.perf_counter() - started, 1)
    return data


def _markdown(report: dict) -> str:
    lines = [
        f"# Fidelity: {report['model']} on SciFact and NFCorpus (nDCG@10, points)",
        "",
        f"Hardware: {report['hardware'].get('cpu')}, device {report['hardware'].get('device')}, "
        f"{report['hardware'].get('torch_threads')} torch threads, torch {report['hardware'].get('torch')}, "
        f"mteb {report['mteb_version']}; max_seq_length {report['max_seq_length']}.",
        "",
        "| dataset | published (MTEB) | asym-st (BEIR folder) | mteb, official task, asym-st cache | mteb, official task, "
        "default wrapper | asym-st − mteb | mteb − published |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for key, row in report["datasets"].items():
        cells = {v: row.get(v, {}).get("metrics", {}).get("ndcg_at_10") for v in VARIANTS}
        shown = {v: "not run" if x is None else f"{x * 100:.2f}" for v, x in cells.items()}
        reference = cells["mteb-default"] if cells["mteb-default"] is not None else cells["mteb-cache"]
        ours_vs_mteb = (
            "" if reference is None or cells["asym-st"] is None else f"{(cells['asym-st'] - reference) * 100:+.2f}"
        )
        mteb_vs_pub = "" if reference is None else f"{reference * 100 - PUBLISHED[key]:+.2f}"
        lines.append(
            f"| {TASKS[key]} | {PUBLISHED[key]:.2f} | {shown['asym-st']} | {shown['mteb-cache']} | "
            f"{shown['mteb-default']} | {ours_vs_mteb} | {mteb_vs_pub} |"
        )
    lines += ["", "All metrics (fractions) and timings: `fidelity.json`; mteb's raw results: `fidelity_mteb/`.", ""]
    lines += ["Commands that produced the numbers (variants run separately are merged):", ""]
    lines += [f"    {command}" for command in report["commands"]]
    lines += ["", "## Notes", "", *report.get("notes", [])]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="sentence-transformers/all-MiniLM-L6-v2")
    parser.add_argument("--datasets", default="scifact,nfcorpus")
    parser.add_argument("--variants", default="asym-st,mteb-cache")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--name", default="fidelity")
    parser.add_argument("--markdown-only", action="store_true", help="only rewrite the markdown from the JSON")
    args = parser.parse_args()

    json_path = RESULTS / f"{args.name}.json"
    report = json.loads(json_path.read_text()) if json_path.is_file() else {"datasets": {}, "commands": []}
    report["notes"] = NOTES
    if args.markdown_only:
        write_results(args.name, report, _markdown(report))
        return
    model = SentenceTransformer(args.model, device="cpu")
    report.update(
        model=args.model,
        max_seq_length=model.max_seq_length,
        mteb_version=mteb_version(),
        hardware=hardware_description("cpu"),
    )
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    if command not in report["commands"]:
        report["commands"].append(command)
    for key in args.datasets.split(","):
        for variant in args.variants.split(","):
            if variant not in VARIANTS:
                raise SystemExit(f"unknown variant {variant!r}; choose from {VARIANTS}")
            print(f"== {key} / {variant}", flush=True)
            data = _run_variant(model, key, variant, args)
            data["date"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
            data["command"] = command
            report["datasets"].setdefault(key, {})[variant] = data
            print(f"   nDCG@10 = {data['metrics']['ndcg_at_10'] * 100:.2f}  ({data['wall_s']} s)", flush=True)
            atomic_write_json(json_path, report)  # after every step: a long run keeps what it finished
    atomic_write_text(RESULTS / f"{args.name}.md", _markdown(report))


if __name__ == "__main__":
    main()
