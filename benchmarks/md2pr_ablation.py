"""MD2PR ablation on SciFact: what the sentence level, the word level and the false-negative filter each add.

Every run starts from the same QED student (``init_from`` of the config: all-MiniLM-L6-v2, query layers [0, 5],
frozen teacher document tower, so the index stays valid), distils the same cross-encoder teacher (trained once by the
first run when the config names none, then reused), trains on SciFact's train queries (minus any test query: the
leakage guard) with the same rows, negatives, seed and step budget, and is evaluated on SciFact test:

=============  ======================================================================================
``qed``        the starting point: the QED student, not trained further
``sentence``   sentence-level distillation only: KL over each query's candidates (``word_weight: 0``, no filter)
``word``       + word-level distillation: token similarities vs the cross-encoder's attention (no filter)
``md2pr``      + the dynamic false-negative filter: the MD2PR recipe (the config as is)
=============  ======================================================================================

Asked for by name (``--variants``), not in the default table: ``sentence_filter``, the filter on top of the sentence
level alone. ``--word-weight W`` sets the weight of the word-level rows (``word``, ``md2pr``) and names their folders
after it (``...-ablation-word-ww0.01-s42``), so a weight sweep reuses the rows it shares with the main table:

    python benchmarks/md2pr_ablation.py --reuse --rerank-top-k 0 --variants sentence_filter word md2pr --word-weight 0.01 \
--name md2pr_ablation_word_weight_0.01

Next to them: the bi-encoder teacher (all-MiniLM-L6-v2, the document tower) and the cross-encoder teacher's
reranking of the bi-encoder's top 100 (nDCG@10), which bounds what distilling it can give. Each trained row gets a
paired t-test over per-query nDCG@10 against the QED student.

Command for benchmarks/results/md2pr_ablation.{md,json} (repository root, offline with ../shared; the QED student
must exist: ``python recipes/qed.py --config recipes/configs/qed_minilm.yaml``):

    HF_HUB_CACHE=../shared/hf-hub HF_HUB_OFFLINE=1 python benchmarks/md2pr_ablation.py --reuse

Results (2026-11-23, this CPU, benchmarks/results/md2pr_ablation.md): the cross-encoder of md2pr_scifact.yaml (3 epochs
at 7e-5, 780 steps at ~6.7 s, ~90 min over two sessions) learnt (loss 1.12 -> ~0.4; 85.4% top-1 on its training rows vs the bi-encoder's 66.4%).
The sentence level lifts the QED student from 62.78 to 64.96 nDCG@10 (p 0.013); the word level, at weight 1, takes
it to 35.74 (its KL is ~200x the sentence term's and dominates); the filter then drops 99 of 11,298 negatives and
changes nothing measurable. The teacher reranking the bi-encoder's top 100 of SciFact test scores 61.22, below the
bi-encoder's 64.51: it ranks its 807 training queries' candidates better than the bi-encoder, unseen queries worse; the
sentence level gains from it all the same. At ``--word-weight 0.01`` (md2pr_ablation_word_weight_0.01.md) the word
level still hurts (59.52, 5.4 below the sentence level alone, p 3e-6 in a paired t-test against that row's per-query nDCG@10); at 0.001 (md2pr_ablation_word_weight_0.001.md)
it is 64.49, 0.47 below (p 0.24, no measurable effect). The filter on the sentence level alone changes
nothing (64.92 vs 64.96). The first teacher (1 epoch at 2e-5) did not learn; its rows are in
md2pr_ablation_first_teacher.md. Cost on the shared 2-core CPU: the teacher's reranking of SciFact test's top 100
(30,000 pairs at up to 256 tokens) takes about an hour (its scores are cached in shards: an interrupted run resumes);
each trained row is ~100 steps, ~12 min.

``--smoke`` runs every row end to end on tiny sub-samples of the same data (a dozen queries, ~80 documents, 2 steps,
a cross-encoder trained for 2 steps) in a temporary folder and writes nothing under benchmarks/results: a plumbing
check, its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import tempfile
import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import torch
from results_io import RESULTS, write_results  # benchmarks/ is on sys.path when a benchmark runs
from sentence_transformers.cross_encoder import CrossEncoder
from smoke_data import write_beir

from asym_st.data.beir import load_beir, split_dataset_spec
from asym_st.data.cache import EmbeddingCache
from asym_st.evaluation.results import load_results
from asym_st.evaluation.retention import retention_row
from asym_st.evaluation.retrieval import RetrievalEvalConfig, evaluate_retrieval
from asym_st.modeling import extract_tower, load_asymmetric_model
from asym_st.training import MD2PRConfig, md2pr, rerank_evaluation
from asym_st.training.cross_encoder_teacher import TEACHER_RECORD_FILE
from asym_st.training.md2pr import teacher_training_brief
from asym_st.training.trainer_setup import load_eval_dataset

REPO = Path(__file__).resolve().parents[1]

VARIANTS: dict[str, dict] = {
    "sentence": {"word_weight": 0.0, "false_negative_filter": False},
    "word": {"false_negative_filter": False},
    "md2pr": {"false_negative_filter": True},
    "sentence_filter": {"word_weight": 0.0, "false_negative_filter": True},
}
DEFAULT_VARIANTS = ["sentence", "word", "md2pr"]  # the ablation; sentence_filter is asked for by name
WORD_LEVEL = {"word", "md2pr"}
DESCRIPTIONS = {
    "qed": "QED student (start point)",
    "sentence": "sentence-level KL only",
    "word": "+ word-level (attention) KL",
    "md2pr": "+ dynamic false-negative filter = MD2PR",
    "sentence_filter": "sentence-level KL + false-negative filter (no word level)",
}


# ----------------------------------------------------------------------------------------------- runs


def _variant_config(
    base: MD2PRConfig, name: str, seed: int, max_steps: int | None, word_weight: float | None = None
) -> MD2PRConfig:
    """The row's config: the base config, the variant's overrides, and its own output folder (named after the variant,
    the seed and, when ``word_weight`` overrides the config's for a word-level row, the weight)."""
    overrides = dict(VARIANTS[name])
    suffix = ""
    if name in WORD_LEVEL:
        if word_weight is not None:
            overrides["word_weight"] = word_weight
            suffix = f"-ww{word_weight:g}"
        elif base.word_weight == 0:
            overrides["word_weight"] = 1.0  # the config turned the word level off; these rows need it
    if max_steps is not None:
        overrides["max_steps"] = max_steps
    return replace(
        base,
        output_dir=f"{base.output_dir.rstrip('/')}-ablation-{name}{suffix}-s{seed}",
        cross_encoder_output_dir=base.resolved_cross_encoder_dir,  # one teacher for every row
        seed=seed,
        measure_latency=False,  # the query tower's shape is the QED student's: its latency is in qed_minilm.md
        **overrides,
    )


def _trained(config: MD2PRConfig, reuse: bool) -> dict:
    """The row's training record: a finished run in its folder when ``reuse`` and it distilled this teacher, else a
    new training (its checkpoints resume only a run of the same settings: ``find_resume_checkpoint``)."""
    folder = Path(config.output_dir)
    teacher = config.cross_encoder or config.resolved_cross_encoder_dir
    if reuse and (folder / "training_config.json").is_file():
        record = load_results(folder)["training_config"]
        if record.get("cross_encoder") == teacher:
            return record
        print(f"{folder.name}: distilled {record.get('cross_encoder')}, not {teacher}: training again", file=sys.stderr)
    started = time.perf_counter()
    md2pr(config, evaluate=False)  # evaluated below, with the other rows, on the same settings
    print(f"{folder.name}: trained in {time.perf_counter() - started:.0f}s", file=sys.stderr)
    return load_results(folder)["training_config"]


def _teacher_rerank(base: MD2PRConfig, bi_encoder, dataset, top_k: int) -> dict:
    cross_encoder = base.cross_encoder or base.resolved_cross_encoder_dir
    started = time.perf_counter()
    result = rerank_evaluation(
        CrossEncoder(cross_encoder),
        bi_encoder,
        dataset,
        top_k=top_k,
        batch_size=base.teacher_batch_size,
        cache_dir=base.cache_dir,
    )
    training = Path(cross_encoder) / TEACHER_RECORD_FILE
    return {
        "cross_encoder": cross_encoder,
        "top_k": top_k,
        "ndcg_at_10": result.reranked["ndcg_at_10"],
        "retriever_ndcg_at_10": result.retriever["ndcg_at_10"],
        "recall_at_100": result.reranked["recall_at_100"],
        "seconds": round(time.perf_counter() - started, 1),
        "training": teacher_training_brief(json.loads(training.read_text())) if training.is_file() else None,
    }


def run(
    base: MD2PRConfig,
    names: list[str],
    seeds: list[int],
    max_steps: int | None,
    reuse: bool,
    top_k: int,
    word_weight: float | None = None,
) -> dict:
    dataset = load_eval_dataset(base.eval_datasets[0])
    cache = EmbeddingCache(Path(base.cache_dir) / "embeddings" if base.cache_dir else None)
    eval_config = RetrievalEvalConfig(batch_size=base.teacher_batch_size, show_progress_bar=False, cache=cache)
    start = load_asymmetric_model(base.init_from)
    bi_encoder = extract_tower(start, "document")
    qed = evaluate_retrieval(start, dataset, eval_config)
    teacher = evaluate_retrieval(bi_encoder, dataset, eval_config)
    rows = [_row("qed", [qed], [], qed, teacher)]
    for name in names:
        results, records = [], []
        for seed in seeds:
            config = _variant_config(base, name, seed, max_steps, word_weight)
            records.append(_trained(config, reuse))
            results.append(evaluate_retrieval(load_asymmetric_model(config.output_dir), dataset, eval_config))
        rows.append(_row(name, results, records, qed, teacher, config.word_weight))
    return {
        "dataset": f"{dataset.name} {dataset.split}",
        "queries": len(dataset.queries),
        "documents": len(dataset.corpus),
        "bi_encoder_teacher_ndcg_at_10": teacher.metrics["ndcg_at_10"],
        "cross_encoder_teacher": _teacher_rerank(base, bi_encoder, dataset, top_k) if top_k > 0 else None,
        "rows": rows,
    }


def _row(name: str, results: list, records: list[dict], qed, teacher, word_weight: float = 0.0) -> dict:
    ndcg = [r.metrics["ndcg_at_10"] for r in results]
    mean = sum(ndcg) / len(ndcg)
    filters = [rec.get("false_negative_filter") or {} for rec in records]
    description = DESCRIPTIONS[name]
    if name in WORD_LEVEL:
        description += f" (word_weight {word_weight:g})"
    return {
        "variant": name,
        "description": description,
        "word_weight": word_weight if name in WORD_LEVEL else 0.0,
        "ndcg_at_10": mean,
        "ndcg_at_10_per_seed": ndcg,
        "recall_at_100": sum(r.metrics["recall_at_100"] for r in results) / len(results),
        "retention": mean / teacher.metrics["ndcg_at_10"] if teacher.metrics["ndcg_at_10"] else None,
        "p_value_vs_qed": [retention_row(qed, r).p_value for r in results] if records else [],
        "steps": [max((e.get("step", 0) for e in rec["log_history"]), default=0) for rec in records],
        "train_seconds": [rec.get("train_seconds") for rec in records],
        "rows": records[0].get("rows") if records else None,
        "num_negatives": records[0].get("num_negatives") if records else None,
        "fn_dropped": [f.get("dropped_negatives") for f in filters if f],
        "fn_seen": [f.get("seen_negatives") for f in filters if f],
        "last_logged_loss": [rec.get("last_logged_loss") for rec in records],
        "teacher_signal": records[0].get("teacher_signal") if records else None,
    }


# ----------------------------------------------------------------------------------------------- smoke


def _small_copy(folder: str, target: Path, max_queries: int, max_documents: int) -> str:
    """A BEIR copy with ``max_queries`` queries of the train and test splits, their judged documents and random
    others up to ``max_documents``."""
    splits = {split: load_beir(folder, split=split).subsample(max_queries, 0) for split in ("train", "test")}
    full = load_beir(folder, split="test")
    corpus_ids = list(dict.fromkeys(d for data in splits.values() for d in data.corpus))
    others = [d for d in full.corpus if d not in set(corpus_ids)]
    random.Random(0).shuffle(others)
    corpus_ids += others[: max(0, max_documents - len(corpus_ids))]
    queries = {q: t for data in splits.values() for q, t in data.queries.items()}
    write_beir(target, {d: full.corpus[d] for d in corpus_ids}, queries, {s: d.qrels for s, d in splits.items()})
    return str(target)


def smoke_config(config: MD2PRConfig, workdir: Path) -> MD2PRConfig:
    """The same config on a tiny SciFact copy: a dozen queries, ~80 documents, 2 steps, a 2-step cross-encoder."""
    folder, _ = split_dataset_spec(config.train_dataset)
    small = _small_copy(folder, workdir / "data" / Path(folder).name, max_queries=12, max_documents=80)
    return replace(
        config,
        train_dataset=f"{small}:train",
        eval_datasets=[f"{small}:test"],
        teacher_train_dataset=None,
        dev_dataset=None,
        cross_encoder_output_dir=str(workdir / "cross-encoder") if not config.cross_encoder else None,
        cross_encoder_max_steps=2,
        cross_encoder_batch_size=4,
        cross_encoder_max_length=128,
        allow_weaker_teacher=True,  # a 2-step cross-encoder: plumbing only
        num_candidates=8,
        num_negatives=3,
        passage_max_length=64,
        max_steps=2,
        per_device_train_batch_size=4,
        save_steps=1000,
        logging_steps=1,
        measure_latency=False,
        cache_dir=str(workdir / "cache"),
        output_dir=str(workdir / "runs" / Path(config.output_dir).name),
    )


# ----------------------------------------------------------------------------------------------- report


def to_markdown(result: dict) -> str:
    rows = result["rows"]
    qed = rows[0]["ndcg_at_10"]
    cross = result["cross_encoder_teacher"]
    lines = [
        "# MD2PR ablation on SciFact (nDCG@10 ×100)",
        "",
        *(
            ["**SMOKE RUN on tiny sub-samples: a plumbing check; these numbers mean nothing.**", ""]
            if result["smoke"]
            else []
        ),
        f"Command: `{result['command']}`  ",
        f"Hardware: {result['hardware']}  ",
        f"Date: {result['date']}  ",
        f"Evaluation: {result['dataset']}, {result['queries']} queries, {result['documents']} documents. Every trained "
        f"row: the same QED student, teacher, rows and step budget ({result['steps']}), batch {result['batch_size']}, "
        f"seeds {result['seeds']}.",
        "",
        "| run | nDCG@10 | per seed | Δ vs QED | p vs QED | Recall@100 | retention vs bi-encoder | steps |",
        "|---|---:|---|---:|---|---:|---:|---|",
    ]
    for row in rows:
        seeds = ", ".join(f"{100 * v:.2f}" for v in row["ndcg_at_10_per_seed"])
        p_values = ", ".join(f"{p:.2g}" for p in row["p_value_vs_qed"] if p is not None) or "–"
        delta = "–" if row["variant"] == "qed" else f"{100 * (row['ndcg_at_10'] - qed):+.2f}"
        retention = "n/a" if row["retention"] is None else f"{100 * row['retention']:.1f}%"
        steps = ", ".join(str(s) for s in row["steps"]) or "–"
        lines.append(
            f"| {row['description']} | {100 * row['ndcg_at_10']:.2f} | {seeds} | {delta} | {p_values} | "
            f"{100 * row['recall_at_100']:.2f} | {retention} | {steps} |"
        )
    lines += [
        "",
        "Teachers on the same queries:",
        "",
        f"- bi-encoder (all-MiniLM-L6-v2, the frozen document tower): nDCG@10 "
        f"{100 * result['bi_encoder_teacher_ndcg_at_10']:.2f}",
    ]
    if cross:
        lines.append(
            f"- cross-encoder `{cross['cross_encoder']}` reranking the bi-encoder's top {cross['top_k']}: nDCG@10 "
            f"{100 * cross['ndcg_at_10']:.2f} (first stage {100 * cross['retriever_ndcg_at_10']:.2f}; "
            f"{cross['seconds']:.0f}s in this run: scores cached by an earlier run are read, not recomputed)"
        )
    else:
        lines.append("- cross-encoder reranking: not measured in this run (`--rerank-top-k 0`)")
    if cross and cross.get("training"):
        lines.append(f"- cross-encoder training: {cross['training']}")
    signal = next((row["teacher_signal"] for row in rows if row.get("teacher_signal")), None)
    if signal:
        ratio = signal["implied_spread_ratio"]
        lines.append(
            f"- teacher signal on the {signal['rows']} training rows ({signal['candidates']} candidates each): the "
            f"cross-encoder ranks the judged positive first in {100 * signal['teacher_top1']:.1f}% of rows, the "
            f"bi-encoder that mined them in {100 * signal['retriever_top1']:.1f}%, chance "
            f"{100 * signal['chance_top1']:.1f}%; at teacher_temperature {signal['teacher_temperature']:g} its target "
            f"changes the student's score gaps {'?' if ratio is None else f'{ratio:.2g}'}-fold"
        )
    if result.get("allow_weaker_teacher"):
        lines.append("- run with `--allow-weaker-teacher`: MD2PR's teacher check was overridden")
    for filtered in (row for row in rows if row["fn_seen"]):
        lines.append(
            f"- false-negative filter ({filtered['description']}): {filtered['fn_dropped']} of {filtered['fn_seen']} "
            "negatives dropped over the run (per seed)"
        )
    lines += ["", "p vs QED: paired t-test over per-query nDCG@10 against the QED student (one value per seed)."]
    if result.get("note"):
        lines += ["", f"**Note.** {result['note']}"]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(REPO / "recipes/configs/md2pr_scifact.yaml"))
    parser.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS, choices=list(VARIANTS))
    parser.add_argument(
        "--word-weight",
        type=float,
        help="word_weight of the word-level rows (default: the config's); their folders are then named after it",
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[42])
    parser.add_argument("--max-steps", type=int, help="optimisation steps of every trained run (default: the config's)")
    parser.add_argument(
        "--rerank-top-k", type=int, default=100, help="documents the cross-encoder reranks (0: skip, it takes ~1 h)"
    )
    parser.add_argument("--cross-encoder", help="a trained cross-encoder folder (default: the config's teacher)")
    parser.add_argument(
        "--allow-weaker-teacher",
        action="store_true",
        help="distil a teacher that MD2PR's check refuses (it ranks worse than the retriever): report what it does",
    )
    parser.add_argument("--note", default="", help="a paragraph added to the report (what the run stands for)")
    parser.add_argument("--reuse", action="store_true", help="reuse finished runs found in the output folders")
    parser.add_argument("--smoke", action="store_true", help="tiny sub-samples, 2 steps, temporary folder")
    parser.add_argument("--smoke-dir", help="the smoke run's folder (default: a new temporary folder)")
    parser.add_argument("--name", default="md2pr_ablation")
    args = parser.parse_args()

    base = MD2PRConfig.from_yaml(args.config)
    if args.cross_encoder:
        base = replace(base, cross_encoder=args.cross_encoder)
    if args.allow_weaker_teacher:
        base = replace(base, allow_weaker_teacher=True)
    target = RESULTS
    if args.smoke:
        target = Path(args.smoke_dir or tempfile.mkdtemp(prefix="md2pr_smoke_"))
        base = smoke_config(base, target)
    result = run(base, args.variants, args.seeds, args.max_steps, args.reuse, args.rerank_top_k, args.word_weight)
    if args.max_steps:
        steps = f"{args.max_steps} steps"
    elif base.max_steps > 0:
        steps = f"{base.max_steps} steps"
    else:
        steps = f"{base.num_train_epochs:g} epochs"
    result.update(
        command="python benchmarks/md2pr_ablation.py " + " ".join(sys.argv[1:]),
        hardware=f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}",
        date=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        smoke=args.smoke,
        steps=steps,
        seeds=args.seeds,
        batch_size=base.per_device_train_batch_size,
        config=base.to_dict(),
        note=args.note,
        allow_weaker_teacher=base.allow_weaker_teacher,
    )
    write_results(args.name, result, to_markdown(result), folder=target)
    print(to_markdown(result))
    print(f"written to {target / args.name}.{{json,md}}", file=sys.stderr)


if __name__ == "__main__":
    main()
