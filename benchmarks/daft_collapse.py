"""DAFT benchmark: plain contrastive fine-tuning vs DAFT (align, then fine-tune) for a heterogeneous pair.

Document tower: the config's teacher (all-MiniLM-L6-v2). Query tower: the config's light encoder (a static
token-embedding encoder, random initialisation, in ``recipes/configs/daft_static_scifact.yaml``). Rows:

* ``untrained``: the light encoder as built (the common starting point);
* ``plain contrastive``: stage 2 alone from the unaligned towers (``allow_unaligned``), the baseline that tends to
  collapse;
* ``DAFT stage 1``: after the alignment stage only;
* ``DAFT``: stage 1 then stage 2, same stage-2 settings as the plain run.

For each: nDCG@10 / Recall@100 and retention vs the teacher per evaluation dataset, the collapse diagnostics of
the query tower on held-out texts (mean pairwise cosine, effective rank, total variance, verdict), the k-NN KL
divergence between the towers, whether the collapse callback flagged a tower during training, steps and time.
Plus the query-encoding latency of the light encoder vs the teacher (batch 1 and 32). Every figure is measured
by this script; document embeddings come from the shared cache.

Command for the table in benchmarks/results/daft_collapse_scifact.{md,json} (from the repository root, offline
with ../shared; not yet run on the full data: only --smoke has been run):

    HF_HUB_CACHE=../shared/hf-hub HF_HUB_OFFLINE=1 python benchmarks/daft_collapse.py \\
        --config recipes/configs/daft_static_scifact.yaml --name daft_collapse_scifact --reuse

Add ``--finetune-towers both`` for the paper's setting (both towers trained in stage 2; slow on a CPU, and the
corpus is re-encoded for every evaluation). ``--smoke`` runs everything on a few dozen texts and a handful of
steps (a check that the script works, not a result; written under /tmp unless --results-dir is given).

Writes RESULTS_DIR/NAME.{json,md}.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from results_io import RESULTS, write_results  # benchmarks/ is on sys.path when a benchmark runs

from asym_st.evaluation.divergence import tower_divergence
from asym_st.evaluation.latency import hardware_description
from asym_st.evaluation.results import load_results
from asym_st.evaluation.retention import retention_report
from asym_st.evaluation.retrieval import RetrievalEvalConfig
from asym_st.modeling import load_asymmetric_model, load_sentence_transformer
from asym_st.training.collapse import tower_diagnostics
from asym_st.training.daft import DAFTData, build_daft_model, prepare_daft_data, train_daft
from asym_st.training.daft_config import DAFTConfig

SMOKE = dict(
    train_max_queries=40,
    train_max_documents=100,
    eval_max_queries=20,
    eval_max_documents=80,
    dev_holdout_queries=8,
    dev_max_queries=8,
    heldout_texts=40,
    collapse_probe_texts=40,
    align_max_steps=20,
    align_eval_steps=5,
    finetune_max_steps=10,
    finetune_eval_steps=5,
    align_batch_size=16,
    finetune_batch_size=8,
    latency_queries=8,
)


def _run(config: DAFTConfig, reuse: bool) -> dict[str, Any]:
    output = Path(config.output_dir)
    stored = load_results(output) if reuse and (output / "training_config.json").is_file() else None
    if stored is None or stored.get("retention") is None:
        started = time.perf_counter()
        train_daft(config)
        print(f"{config.output_dir}: {time.perf_counter() - started:.0f}s", file=sys.stderr)
        stored = load_results(output)
    return stored


def _tower_checks(model, data: DAFTData, config: DAFTConfig) -> dict[str, Any]:
    probe = data.heldout_texts[: config.collapse_probe_texts]
    detector = config.collapse_detector()
    document = tower_diagnostics(model, probe, "document", config.teacher_batch_size)
    query = tower_diagnostics(model, probe, "query", config.teacher_batch_size)
    divergence = tower_divergence(
        model, data.heldout_texts, data.heldout_targets, k=config.divergence_k, seed=config.seed
    )
    return {
        "query": query.to_dict(),
        "document": document.to_dict(),
        "query_collapsed": detector.check(query, document).reasons,
        "divergence": divergence.to_dict(),
    }


def _evaluate(model, teacher, data: DAFTData, config: DAFTConfig) -> dict[str, Any]:
    eval_config = RetrievalEvalConfig(batch_size=config.teacher_batch_size, show_progress_bar=False)
    if config.cache_dir:
        from asym_st.data.cache import EmbeddingCache

        eval_config.cache = EmbeddingCache(Path(config.cache_dir) / "embeddings")
    return retention_report(teacher, model, data.eval_datasets, eval_config, teacher_name=config.teacher).to_dict()


def _trained_row(name: str, stored: dict[str, Any]) -> dict[str, Any]:
    record = stored["training_config"]
    stages = record["stages"]
    return {
        "run": name,
        "output": record["config"]["output_dir"],
        "retention": stored["retention"],
        "checks": record["diagnostics"],
        "flagged_during_training": {s: r["collapsed"] for s, r in stages.items()},
        "steps": {s: r["steps"] for s, r in stages.items()},
        "stopped_early": {s: r["stopped_early"] for s, r in stages.items()},
        "train_seconds": record["train_seconds"],
        "latency": stored["latency"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="a DAFT YAML config (both stages)")
    parser.add_argument("--name", default="daft_collapse")
    parser.add_argument("--reuse", action="store_true", help="reuse finished runs found in the output folders")
    parser.add_argument("--finetune-towers", choices=("query", "both"), help="override the config's stage-2 towers")
    parser.add_argument("--smoke", action="store_true", help="tiny sub-sample, a handful of steps (script check)")
    parser.add_argument("--results-dir", help=f"where NAME.json/md go (default {RESULTS}; smoke: a temp folder)")
    args = parser.parse_args()

    config = DAFTConfig.from_yaml(args.config)
    overrides: dict[str, Any] = {"overwrite_output_dir": True, "resume_from_checkpoint": None}
    if args.finetune_towers:
        overrides["finetune_towers"] = args.finetune_towers
    results_dir = Path(args.results_dir) if args.results_dir else RESULTS
    if args.smoke:
        smoke_root = Path(tempfile.mkdtemp(prefix="daft_smoke_"))
        overrides.update(SMOKE, output_dir=str(smoke_root / "model"), cache_dir=str(smoke_root / "cache"))
        results_dir = Path(args.results_dir) if args.results_dir else smoke_root
    config = replace(config, **overrides)
    base = config.output_dir.rstrip("/")
    daft_config = replace(config, stages=["align", "finetune"], output_dir=f"{base}-daft", stage1_checkpoint=None)
    plain_config = replace(
        config, stages=["finetune"], allow_unaligned=True, stage1_checkpoint=None, output_dir=f"{base}-plain"
    )

    teacher = load_sentence_transformer(config.teacher)
    data = prepare_daft_data(config, teacher)
    untrained = build_daft_model(config, teacher)
    rows = [
        {
            "run": "untrained",
            "retention": _evaluate(untrained, teacher, data, config),
            "checks": _tower_checks(untrained, data, config),
        }
    ]
    rows.append(_trained_row("plain contrastive", _run(plain_config, args.reuse)))
    daft_stored = _run(daft_config, args.reuse)
    stage1 = load_asymmetric_model(daft_config.resolved_stage1_dir)
    rows.append(
        {
            "run": "DAFT stage 1 (alignment only)",
            "retention": _evaluate(stage1, teacher, data, config),
            "checks": _tower_checks(stage1, data, config),
            "steps": {"align": daft_stored["training_config"]["stages"]["align"]["steps"]},
        }
    )
    rows.append(_trained_row("DAFT", daft_stored))

    result = {
        "command": "python benchmarks/daft_collapse.py " + " ".join(sys.argv[1:]),
        "smoke": args.smoke,
        "config": config.to_dict(),
        "query_encoder": config.light_encoder().describe(),
        "data": data.summary(),
        "hardware": hardware_description(teacher.device),
        "rows": rows,
    }
    write_results(args.name, result, to_markdown(result), results_dir)
    print(to_markdown(result))
    print(f"written: {results_dir / args.name}.{{json,md}}", file=sys.stderr)


def _cell_metrics(row: dict, dataset: str) -> str:
    entry = next(r for r in row["retention"]["rows"] if r["dataset"] == dataset)
    retention = entry["retention_ndcg_at_10"]
    return (
        f"{100 * entry['student']['ndcg_at_10']:.2f} | {100 * entry['student']['recall_at_100']:.2f} | "
        f"{'n/a' if retention is None else f'{100 * retention:.1f}%'}"
    )


def _flagged(row: dict) -> str:
    flagged = row.get("flagged_during_training")
    if flagged is None:
        return "–"
    hits = [f"{stage}: {', '.join(sorted(towers))}" for stage, towers in flagged.items() if towers]
    return "; ".join(hits) or "no"


def to_markdown(result: dict) -> str:
    rows = result["rows"]
    datasets = [r["dataset"] for r in rows[0]["retention"]["rows"]]
    teacher_rows = {r["dataset"]: r for r in rows[0]["retention"]["rows"]}
    hardware = result["hardware"]
    document = rows[0]["checks"]["document"]
    title = "DAFT vs plain contrastive fine-tuning"
    lines = [
        f"# {title}: {result['query_encoder']} query tower, {result['config']['teacher']} document tower"
        + (" (SMOKE RUN: tiny sub-sample, not a result)" if result["smoke"] else ""),
        "",
        f"Command: `{result['command']}`  ",
        "Data: " + "; ".join(f"{key.replace('_', ' ')}: {value}" for key, value in result["data"].items()) + "  ",
        f"Stage 2 trains: {result['config']['finetune_towers']} tower(s); stage 1 loss: {result['config']['align_loss']}  ",
        f"Hardware: {hardware.get('cpu', '?')}, {hardware.get('torch_threads', '?')} threads, "
        f"torch {hardware.get('torch', '?')}",
        "",
        "| run | "
        + " | ".join(f"{d} nDCG@10 | {d} R@100 | {d} retention" for d in datasets)
        + " | query mean cos | query eff. rank | query total var | KL(doc‖query) | collapsed (final) "
        "| flagged in training | steps |",
        "|---|" + "---:|" * (3 * len(datasets)) + "---:|---:|---:|---:|---|---|---|",
        "| teacher (document tower for both) | "
        + " | ".join(
            f"{100 * teacher_rows[d]['teacher']['ndcg_at_10']:.2f} | "
            f"{100 * teacher_rows[d]['teacher']['recall_at_100']:.2f} | 100%"
            for d in datasets
        )
        + f" | {document['mean_pairwise_cosine']:.3f} | {document['effective_rank']:.1f} | "
        f"{document['total_variance']:.3f} | – | – | – | – |",
    ]
    for row in rows:
        checks = row["checks"]
        query = checks["query"]
        steps = ", ".join(f"{k} {v}" for k, v in row.get("steps", {}).items()) or "0"
        lines.append(
            f"| {row['run']} | "
            + " | ".join(_cell_metrics(row, d) for d in datasets)
            + f" | {query['mean_pairwise_cosine']:.3f} | {query['effective_rank']:.1f} | "
            f"{query['total_variance']:.3f} | {checks['divergence']['kl_divergence']:.1f} | "
            f"{'yes' if checks['query_collapsed'] else 'no'} | {_flagged(row)} | {steps} |"
        )
    floor = rows[0]["checks"]["divergence"]
    lines += [
        "",
        f"Diagnostics on {rows[0]['checks']['query']['num_texts']} held-out texts (documents and training queries, "
        f"never trained on). KL: 1-NN estimator on disjoint halves ({floor['num_texts']} texts); the document "
        f"tower against itself gives {floor['noise_floor']:.1f} (the estimator's floor).",
        "",
        "| run | query tower p50 b=1 | teacher p50 b=1 | speed-up b=1 | speed-up b=32 | training time |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        latency = row.get("latency")
        if not latency:
            continue
        by = {(r["model"], r["batch_size"]): r for r in latency["results"]}
        student, teacher = by.get(("query tower", 1), {}), by.get(("teacher", 1), {})
        lines.append(
            f"| {row['run']} | {student.get('p50_ms', float('nan')):.3f} ms | {teacher.get('p50_ms', float('nan')):.2f} ms"
            f" | ×{latency['speedup'].get('1', '?')} | ×{latency['speedup'].get('32', '?')} | "
            f"{row['train_seconds'] / 60:.1f} min |"
        )
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
