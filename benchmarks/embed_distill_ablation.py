"""EmbedDistill ablation: what embedding matching, score matching and generated queries each contribute.

Two groups of runs of the EmbedDistill pipeline (:func:`asym_st.training.embed_distill`), all with the QED
student shape of the configs (all-MiniLM-L6-v2, query layers [0, 5], frozen teacher document tower):

``main`` (``--config``, default ``recipes/configs/embed_distill_minilm.yaml``; SciFact, NFCorpus, TREC-DL-2019):

=================  =====================================================================================
``qed``            QED alone: query-embedding matching with MSE (QED's loss), real queries
``embedding``      embedding matching with L2 (EmbedDistill's distance), real queries
``score``          + score matching (KL over each query's candidates)
``embed_distill``  + queries generated from the configured corpora (model-free span queries here): the recipe
=================  =====================================================================================

Score matching is added on top of L2, not MSE: sentence-transformers' MSE is a mean over coordinates, about
1/384 of the squared L2 distance for MiniLM, so next to a KL term the MSE term would carry almost no weight and
"+ score" would measure score matching alone.

``scifact`` (``--scifact-config``, default ``recipes/configs/embed_distill_scifact.yaml``): few real queries.

=================  =====================================================================================
``scifact_real``   SciFact's 809 train queries only (embedding + score matching)
``scifact_gen``    the same plus queries generated from SciFact's corpus
=================  =====================================================================================

Every run of a group gets the same number of optimisation steps (the first run's, or the config's ``max_steps``),
so the comparison is at equal compute: more queries means more diverse batches, not more updates. Retention is
student nDCG@10 / teacher nDCG@10 on each evaluation set (the teacher is the same for all runs).

Command for the full ablation (from the repository root, offline with ../shared; hours on a 2-core CPU):

    HF_HUB_CACHE=../shared/hf-hub HF_HUB_OFFLINE=1 python benchmarks/embed_distill_ablation.py --reuse

The committed table used ``--main-max-steps 300`` (300 steps of 64 queries per main-group run, about one epoch of the
real queries; the 3-epoch budget of the config is ~2 h per run on the shared 2-core CPU).

Writes benchmarks/results/embed_distill_ablation.{json,md}. ``--smoke`` runs every variant end to end on tiny
sub-samples of the same data (a few dozen queries and documents, 3 steps) in a temporary folder and writes
nothing under benchmarks/results: a plumbing check, its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
from results_io import RESULTS, write_results  # benchmarks/ is on sys.path when a benchmark runs
from smoke_data import write_beir

from asym_st.data.beir import available_splits, load_beir
from asym_st.evaluation.results import load_results
from asym_st.training import EmbedDistillConfig, embed_distill

REPO = Path(__file__).resolve().parents[1]

VARIANTS: dict[str, dict[str, dict]] = {
    "main": {
        "qed": {"score_weight": 0.0, "generate_queries_from": [], "distance": "mse"},
        "embedding": {"score_weight": 0.0, "generate_queries_from": [], "distance": "l2"},
        "score": {"generate_queries_from": []},
        "embed_distill": {},
    },
    "scifact": {
        "scifact_real": {"generate_queries_from": []},
        "scifact_gen": {"generate_queries_from": "<train corpus>"},
    },
}
DESCRIPTIONS = {
    "qed": "QED alone (query-embedding MSE, real queries)",
    "embedding": "embedding matching, L2 (real queries)",
    "score": "+ score matching (KL)",
    "embed_distill": "+ generated queries = EmbedDistill recipe",
    "scifact_real": "SciFact 809 train queries",
    "scifact_gen": "SciFact 809 train queries + generated from its corpus",
}


# ----------------------------------------------------------------------------------------------- runs


def _folder_of(spec: str) -> str:
    return spec.rsplit(":", 1)[0] if ":" in spec and not Path(spec).exists() else spec


def _variant_config(base: EmbedDistillConfig, name: str, overrides: dict, max_steps: int | None) -> EmbedDistillConfig:
    overrides = dict(overrides)
    if overrides.get("generate_queries_from") == "<train corpus>":
        overrides["generate_queries_from"] = [_folder_of(spec) for spec in base.train_queries if ":" in spec]
    if max_steps is not None:
        overrides["max_steps"] = max_steps
    return replace(base, output_dir=f"{base.output_dir.rstrip('/')}-ablation-{name}", **overrides)


def _finished(output_dir: str) -> dict | None:
    folder = Path(output_dir)
    if not (folder / "training_config.json").is_file():
        return None
    stored = load_results(folder)
    return stored if stored.get("retention") is not None else None


def _steps(training_config: dict) -> int:
    return max((entry.get("step", 0) for entry in training_config.get("log_history", [])), default=0)


def run_group(base: EmbedDistillConfig, group: str, names: list[str], reuse: bool) -> list[dict]:
    rows, max_steps = [], base.max_steps if base.max_steps > 0 else None
    for name in names:
        config = _variant_config(base, name, VARIANTS[group][name], max_steps)
        stored = _finished(config.output_dir) if reuse else None
        if stored is None:
            started = time.perf_counter()
            embed_distill(config)
            print(f"[{group}] {name}: trained and evaluated in {time.perf_counter() - started:.0f}s", file=sys.stderr)
            stored = load_results(config.output_dir)
        record = stored["training_config"]
        max_steps = max_steps or _steps(record)  # later runs of the group get the first run's step count
        rows.append(
            {
                "variant": name,
                "description": DESCRIPTIONS[name],
                "output": config.output_dir,
                "retention": stored["retention"],
                "latency": stored.get("latency"),
                "steps": _steps(record),
                "train_seconds": record.get("train_seconds"),
                "training_queries": record.get("training_queries"),
                "generated_queries": record.get("generated_queries", []),
                "loss": record.get("loss"),
                "last_logged_loss": record.get("last_logged_loss"),
            }
        )
    return rows


# ----------------------------------------------------------------------------------------------- smoke


def _subsample_folder(source: str, target: Path, max_queries: int, max_documents: int) -> str:
    """A small BEIR copy: a few queries of every split and at most ``max_documents`` documents, judged ones first
    (``RetrievalDataset.subsample`` keeps *every* judged document, hundreds per NFCorpus query)."""
    if target.is_dir():
        return str(target)
    splits = {split: load_beir(source, split=split) for split in available_splits(source)}
    queries = {split: sorted(data.queries)[:max_queries] for split, data in splits.items()}
    per_split = max(1, max_documents // (2 * len(splits)))
    judged = []
    for split, data in splits.items():  # round-robin over the queries, best-graded documents first
        ranked = [sorted(data.qrels[q], key=data.qrels[q].get, reverse=True) for q in queries[split]]
        rounds = [docs[i] for i in range(max(map(len, ranked), default=0)) for docs in ranked if i < len(docs)]
        judged += list(dict.fromkeys(rounds))[:per_split]
    corpus_ids = list(dict.fromkeys(judged))
    any_split = next(iter(splits.values()))
    corpus_ids += [d for d in any_split.corpus if d not in set(corpus_ids)][: max_documents - len(corpus_ids)]
    kept = set(corpus_ids)
    qrels = {
        split: {q: {d: s for d, s in data.qrels[q].items() if d in kept} for q in queries[split]}
        for split, data in splits.items()
    }
    all_queries = {q: data.queries[q] for split, data in splits.items() for q in queries[split]}
    write_beir(target, {d: any_split.corpus[d] for d in corpus_ids}, all_queries, qrels)
    return str(target)


def smoke_config(config: EmbedDistillConfig, workdir: Path) -> EmbedDistillConfig:
    """The same config on tiny sub-samples of its BEIR folders (query files dropped), 3 steps, no latency."""

    def small(spec: str) -> str:
        folder = _folder_of(spec)
        copy = _subsample_folder(folder, workdir / "data" / Path(folder).name, max_queries=12, max_documents=40)
        return spec.replace(folder, copy, 1)

    return replace(
        config,
        train_queries=[small(spec) for spec in config.train_queries if Path(_folder_of(spec)).is_dir()],
        generate_queries_from=[small(f) for f in config.generate_queries_from],
        max_generated_passages=15,
        candidate_corpora=[small(f) for f in config.candidate_corpora],
        eval_datasets=[small(spec) for spec in config.eval_datasets],
        dev_dataset=None,
        max_steps=3,
        per_device_train_batch_size=8,
        save_steps=1000,
        logging_steps=1,
        measure_latency=False,
        cache_dir=str(workdir / "cache"),
        output_dir=str(workdir / "runs" / Path(config.output_dir).name),
    )


# ----------------------------------------------------------------------------------------------- report


def to_markdown(result: dict) -> str:
    lines = [
        "# EmbedDistill ablation (nDCG@10 ×100; retention = student / teacher)",
        "",
        *(
            ["**SMOKE RUN on tiny sub-samples, 3 steps: a plumbing check; these numbers mean nothing.**", ""]
            if result.get("smoke")
            else []
        ),
        f"Command: `{result['command']}`  ",
        f"Hardware: {result['hardware']}  ",
        f"Date: {result['date']}",
        "",
    ]
    for group, rows in result["groups"].items():
        if not rows:
            continue
        teacher = {row["dataset"]: row["teacher"] for row in rows[0]["retention"]["rows"]}
        datasets = list(teacher)
        lines += [
            f"## {group}",
            "",
            "| run | " + " | ".join(f"{d} nDCG@10 | {d} retention" for d in datasets) + " | steps | training queries |",
            "|---|" + "---:|" * (2 * len(datasets) + 2),
            "| teacher | " + " | ".join(f"{100 * teacher[d]['ndcg_at_10']:.2f} | 100% " for d in datasets) + " | | |",
        ]
        for row in rows:
            by_dataset = {r["dataset"]: r for r in row["retention"]["rows"]}
            cells = []
            for d in datasets:
                r = by_dataset[d]
                star = "*" if r.get("p_value") is not None and r["p_value"] < 0.05 else ""
                retention = r.get("retention_ndcg_at_10")  # None when the teacher scores 0 (tiny smoke data)
                kept = "n/a" if retention is None else f"{100 * retention:.1f}%"
                cells.append(f"{100 * r['student']['ndcg_at_10']:.2f}{star} | {kept}")
            count = (row["training_queries"] or {}).get("count", "?")
            lines.append(f"| {row['description']} | " + " | ".join(cells) + f" | {row['steps']} | {count} |")
        lines += ["", "What each step adds (nDCG@10 points, measured: difference to the previous row):", ""]
        for previous, row in zip(rows, rows[1:], strict=False):
            before = {r["dataset"]: r["student"]["ndcg_at_10"] for r in previous["retention"]["rows"]}
            after = {r["dataset"]: r["student"]["ndcg_at_10"] for r in row["retention"]["rows"]}
            deltas = ", ".join(f"{d} {100 * (after[d] - before[d]):+.2f}" for d in datasets)
            lines.append(f"- {row['description']} vs {previous['description']}: {deltas}")
        for row in rows:
            for report in row["generated_queries"]:
                lines.append(f"- generated ({row['variant']}): {report}")
        lines.append("")
    lines.append("`*`: significantly different from the teacher (paired t-test over queries, p < 0.05).")
    return "\n".join(lines) + "\n"


def _hardware() -> str:
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(REPO / "recipes/configs/embed_distill_minilm.yaml"))
    parser.add_argument("--scifact-config", default=str(REPO / "recipes/configs/embed_distill_scifact.yaml"))
    parser.add_argument("--groups", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--variants", nargs="+", help="only these variants (default: all of each group)")
    parser.add_argument("--reuse", action="store_true", help="reuse finished runs found in the output folders")
    parser.add_argument("--smoke", action="store_true", help="tiny sub-samples, 3 steps, temporary folder")
    parser.add_argument("--smoke-dir", help="the smoke run's folder (default: a new temporary folder)")
    parser.add_argument("--name", default="embed_distill_ablation")
    parser.add_argument(
        "--main-max-steps", type=int, help="step budget of every run of the main group (default: the config's epochs)"
    )
    args = parser.parse_args()

    workdir = None
    if args.smoke:
        workdir = Path(args.smoke_dir or tempfile.mkdtemp(prefix="embed_distill_smoke_"))
    configs = {"main": args.config, "scifact": args.scifact_config}
    groups = {}
    for group in args.groups:
        base = EmbedDistillConfig.from_yaml(configs[group])
        if group == "main" and args.main_max_steps:
            base = replace(base, max_steps=args.main_max_steps)
        if workdir is not None:
            base = smoke_config(base, workdir)
        names = [n for n in VARIANTS[group] if not args.variants or n in args.variants]
        groups[group] = run_group(base, group, names, args.reuse)
    result = {
        "command": "python benchmarks/embed_distill_ablation.py " + " ".join(sys.argv[1:]),
        "hardware": _hardware(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "smoke": args.smoke,
        "configs": {group: configs[group] for group in groups},
        "groups": groups,
    }
    target = workdir if workdir is not None else RESULTS
    write_results(args.name, result, to_markdown(result), target)
    print(to_markdown(result))
    print(f"written to {target / args.name}.{{json,md}}", file=sys.stderr)


if __name__ == "__main__":
    main()
