"""``asym-st evaluate`` and ``asym-st bench``: argument parsing and printing only; the work is in
:mod:`asym_st.evaluation`.

Both print a readable table (to stderr, so that stdout stays the JSON summary the CLI prints) and write JSON:
into ``MODEL/eval/`` when MODEL is a local folder (the shared results schema), and to ``--output`` when given.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

__all__ = ["EVALUATE_SUBCOMMANDS", "add_evaluate", "add_bench"]


def _csv_ints(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 1,32; got {text!r}") from error


def _csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _search_option(text: str) -> tuple[str, object]:
    from asym_st.evaluation.search import parse_search_option

    try:
        return parse_search_option(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from error


def _print(text: str) -> None:
    print(text, file=sys.stderr)


def _save_dir(model: str, no_save: bool) -> Path | None:
    return None if no_save or not os.path.isdir(model) else Path(model)


# --------------------------------------------------------------------------------------------------- evaluate


def add_evaluate(subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="retrieval quality (nDCG@10, Recall@100, MRR@10, MAP) on BEIR folders, Hub datasets or mteb tasks",
        description="Evaluate a model (asymmetric or not): queries through encode_query, documents through "
        "encode_document (cached on disk), exact faiss search, pytrec_eval metrics. With --teacher, also the "
        "retention report (teacher vs model, paired test). With --mteb-task, mteb's own evaluator runs too.",
    )
    parser.add_argument("model", help="model folder or Hub id")
    parser.add_argument(
        "--dataset",
        action="append",
        default=[],
        metavar="SRC",
        help="BEIR folder or .zip, Hub dataset id (BEIR/mteb layout), or mteb:TaskName; repeatable",
    )
    parser.add_argument("--split", default="test", help="qrels split (default: test)")
    parser.add_argument(
        "--mteb-task", action="append", default=[], metavar="NAME", help="official mteb task; repeatable"
    )
    parser.add_argument(
        "--data-mirror",
        action="append",
        default=[],
        metavar="DIR",
        help="local copy of the mteb task's dataset repo, one per --mteb-task in order (offline)",
    )
    parser.add_argument("--mteb-default-path", action="store_true", help="mteb without asym-st's embedding cache")
    parser.add_argument("--teacher", default=None, help="also evaluate this teacher and report retention")
    parser.add_argument("--test", choices=["ttest_rel", "wilcoxon"], default="ttest_rel", help="paired test")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--top-k", type=int, default=100)
    parser.add_argument(
        "--index",
        choices=["flat", "hnsw", "ivf", "ivfpq"],
        default="flat",
        help="faiss index (default flat, exact); the approximate ones are for large corpora",
    )
    parser.add_argument(
        "--search-option",
        action="append",
        default=[],
        type=_search_option,
        metavar="KEY=VALUE",
        help="SearchConfig setting of the index, e.g. hnsw_ef_search=256, ivf_nprobe=32, ivfpq_m=48, "
        "ivfpq_refine=4, ivf_nlist=auto; repeatable",
    )
    parser.add_argument("--relevance-level", type=int, default=1, help="min grade counted relevant (TREC-DL: 2)")
    parser.add_argument("--max-queries", type=int, default=None, help="sub-sample queries (quick runs)")
    parser.add_argument("--max-documents", type=int, default=None, help="sub-sample the corpus (judged docs kept)")
    parser.add_argument("--no-cache", action="store_true", help="do not read or write the embedding cache")
    parser.add_argument("--output", "-o", default=None, help="also write the summary JSON here")
    parser.add_argument("--no-save", action="store_true", help="do not write results into MODEL/eval/")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(handler=run_evaluate)


def _results_table(results) -> str:
    lines = [
        "| model | dataset | split | evaluator | nDCG@10 | Recall@100 | MRR@10 | MAP | queries | seconds |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        m = r.metrics
        seconds = r.timings.get("total_s", r.timings.get("evaluation_s", 0.0))
        lines.append(
            f"| {r.model} | {r.dataset} | {r.split} | {r.evaluator} | {m['ndcg_at_10'] * 100:.2f} | "
            f"{m['recall_at_100'] * 100:.2f} | {m['mrr_at_10'] * 100:.2f} | {m['map'] * 100:.2f} | {r.num_queries} | "
            f"{seconds:.1f} |"
        )
    return "\n".join(lines)


def run_evaluate(args: argparse.Namespace) -> dict:
    from asym_st.evaluation import RetrievalEvalConfig, evaluate_retrieval, load_retrieval_source, retention_report
    from asym_st.evaluation.mteb_integration import mteb_to_retrieval_result, run_mteb
    from asym_st.evaluation.results import save_results
    from asym_st.evaluation.retrieval import load_model, model_name
    from asym_st.utils.io import atomic_write_json

    if not args.dataset and not args.mteb_task:
        raise ValueError("nothing to evaluate: give --dataset SRC and/or --mteb-task NAME.")
    if args.data_mirror and len(args.data_mirror) != len(args.mteb_task):
        raise ValueError(
            f"give one --data-mirror per --mteb-task ({len(args.mteb_task)} tasks, {len(args.data_mirror)} mirrors)."
        )
    config = RetrievalEvalConfig(
        batch_size=args.batch_size,
        top_k=args.top_k,
        index=args.index,
        search_options=dict(args.search_option),
        relevance_level=args.relevance_level,
        use_cache=not args.no_cache,
        show_progress_bar=not args.quiet,
    )
    model = load_model(args.model)
    name = model_name(args.model)
    results, retention, mteb_results = [], None, []
    datasets = []
    for source in args.dataset:
        dataset = load_retrieval_source(source, split=args.split)
        if dataset.report:  # dropped or repaired while loading: say so, never silently
            _print(f"{dataset.name}/{dataset.split}: {dataset.report}")
        if args.max_queries or args.max_documents:
            dataset = dataset.subsample(args.max_queries, args.max_documents)
        datasets.append(dataset)
    if datasets and args.teacher:
        retention = retention_report(args.teacher, model, datasets, config, test=args.test, student_name=name)
        results += retention.student_results
        teacher_results = retention.teacher_results
    else:
        results += [evaluate_retrieval(model, dataset, config, name=name) for dataset in datasets]
        teacher_results = []
    for index, task in enumerate(args.mteb_task):
        mirror = args.data_mirror[index] if args.data_mirror else None
        sizes: dict = {}
        task_results = run_mteb(
            model,
            [task],
            mirror=mirror,
            use_cache=not (args.no_cache or args.mteb_default_path),
            batch_size=args.batch_size,
            show_progress_bar=not args.quiet,
            name=name,
            sizes=sizes,
        )
        mteb_results += task_results
        for r in task_results:
            counts = sizes.get(r.task_name, {}).get(args.split, {})
            results.append(mteb_to_retrieval_result(r, name, split=args.split, source=mirror, **counts))

    _print(_results_table(results + teacher_results))
    if retention is not None:
        _print("\n" + retention.to_markdown())
    summary = {
        "model": name,
        "results": [r.to_dict() for r in results],
        "teacher_results": [r.to_dict() for r in teacher_results],
        "retention": retention.to_dict() if retention is not None else None,
    }
    save_dir = _save_dir(args.model, args.no_save)
    if save_dir is not None:
        summary["written"] = save_results(save_dir, retrieval=results, retention=retention, mteb=mteb_results or None)
    if args.output:
        summary["output"] = str(atomic_write_json(args.output, summary))
    return summary


# --------------------------------------------------------------------------------------------------- bench


def add_bench(subparsers) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="query-encoding latency (p50/p95 at batch 1, throughput at batch 32) vs the teacher; trade-off sweep",
        description="Time the query tower and the teacher on real query texts (warm-up, repeats, median; "
        "tokenisation reported separately; threads and device recorded). With --sweep, also the quality/speed "
        "trade-off of untrained towers of 1..L teacher layers (plus MODEL and --students) on --dataset.",
    )
    parser.add_argument("model", help="model folder or Hub id (an asymmetric model, or a teacher for --sweep)")
    parser.add_argument("--teacher", default=None, help="baseline (default: the model's own document tower)")
    parser.add_argument("--queries", default=None, help="query file (.jsonl/.tsv/.txt) to time")
    parser.add_argument("--dataset", default=None, help="retrieval source: its queries are timed; needed by --sweep")
    parser.add_argument("--split", default="test")
    parser.add_argument("--batch-sizes", type=_csv_ints, default=[1, 32], help="default 1,32")
    parser.add_argument("--num-queries", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=10, help="warm-up batches")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--devices", type=_csv, default=None, help="e.g. cpu,cuda (default: cpu, plus cuda if present)")
    parser.add_argument("--sweep", action="store_true", help="also run the retention vs speed-up sweep")
    parser.add_argument("--layers", type=_csv_ints, default=None, help="sweep depths (default 1..L)")
    parser.add_argument("--strategies", type=_csv, default=["first_last"], help="e.g. first_last,first_k")
    parser.add_argument("--students", nargs="*", default=[], help="extra trained students for the sweep")
    parser.add_argument("--output", "-o", default=None, help="also write the summary JSON here")
    parser.add_argument("--no-save", action="store_true", help="do not write results into MODEL/eval/")
    parser.set_defaults(handler=run_bench)


def _latency_table(results) -> str:
    lines = [
        "| model | device | threads | batch | p50 ms | p95 ms | tokenize p50 ms | forward p50 ms | ms/query | queries/s "
        "| CPU ms/query |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r.model} | {r.hardware.get('device')} | {r.hardware.get('torch_threads')} | {r.batch_size} | "
            f"{r.p50_ms:.2f} | {r.p95_ms:.2f} | {r.tokenize_p50_ms:.2f} | {r.forward_p50_ms:.2f} | "
            f"{r.per_query_p50_ms:.3f} | {r.queries_per_second:.1f} | {r.cpu_per_query_p50_ms or 0:.3f} |"
        )
    return "\n".join(lines)


def _bench_queries(args) -> list[str]:
    if args.queries:
        from asym_st.data import read_query_file

        return list(read_query_file(args.queries).texts)
    if args.dataset:
        from asym_st.evaluation import load_retrieval_source

        return list(load_retrieval_source(args.dataset, split=args.split).queries.values())
    raise ValueError("give real query texts to time: --queries FILE or --dataset SRC.")


def run_bench(args: argparse.Namespace) -> dict:
    import torch

    from asym_st.evaluation import LatencyConfig, latency_report, measure_latency
    from asym_st.evaluation.results import save_results
    from asym_st.evaluation.retrieval import load_model, model_name
    from asym_st.modeling import extract_tower, is_asymmetric
    from asym_st.utils.io import atomic_write_json

    model = load_model(args.model)
    name = model_name(args.model)
    queries = _bench_queries(args)
    if args.teacher:
        teacher, teacher_name = load_model(args.teacher), args.teacher
    elif is_asymmetric(model):
        record = getattr(model, "asym_st_record", None)
        teacher = extract_tower(model, "document")
        teacher_name = (record.teacher if record is not None and record.teacher else None) or f"{name} (document tower)"
    else:
        teacher, teacher_name = None, None
    devices = args.devices or (["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    summary: dict = {"model": name, "teacher": teacher_name, "latency": {}}
    student_all, teacher_all = [], []
    for device in devices:
        config = LatencyConfig(
            batch_sizes=tuple(args.batch_sizes),
            num_queries=args.num_queries,
            warmup_batches=args.warmup,
            repeats=args.repeats,
            threads=args.threads,
            device=device,
            route="query",
        )
        student_results = measure_latency(model, queries, config, name=name)
        teacher_results = measure_latency(teacher, queries, config, name=teacher_name) if teacher is not None else []
        student_all += student_results
        teacher_all += teacher_results
        summary["latency"][device] = latency_report(student_results, teacher_results)
    _print(_latency_table(student_all + teacher_all))
    for device, report in summary["latency"].items():
        if report["speedup"]:
            _print(f"speed-up on {device}: " + ", ".join(f"batch {b}: {s:.2f}x" for b, s in report["speedup"].items()))
            cpu = report.get("cpu_speedup", {})
            _print("  in CPU time: " + ", ".join(f"batch {b}: {s:.2f}x" for b, s in cpu.items()))
    # eval/latency.json holds the first device's report (CPU by default), the one model cards quote.
    latency_payload = summary["latency"][devices[0]]
    tradeoff = png = None
    if args.sweep:
        tradeoff, png = _sweep(args, model, teacher, teacher_name)
        summary["tradeoff"] = tradeoff.to_dict()
    save_dir = _save_dir(args.model, args.no_save)
    if save_dir is not None:
        summary["written"] = save_results(
            save_dir, latency=latency_payload if teacher is not None else None, tradeoff=tradeoff, tradeoff_png=png
        )
    if args.output:
        summary["output"] = str(atomic_write_json(args.output, summary))
    return summary


def _sweep(args, model, teacher, teacher_name):
    from asym_st.evaluation.tradeoff import TradeoffConfig, plot_tradeoff, tradeoff_sweep
    from asym_st.modeling import is_asymmetric

    if not args.dataset:
        raise ValueError("--sweep needs --dataset SRC (retention is measured on it).")
    students = list(args.students)
    if is_asymmetric(model):
        students.insert(0, args.model)
    base = teacher if teacher is not None else model
    from asym_st.evaluation import LatencyConfig, load_retrieval_source

    latency = LatencyConfig(
        batch_sizes=(1,),
        num_queries=args.num_queries,
        warmup_batches=args.warmup,
        repeats=1,
        threads=args.threads,
        device=(args.devices or ["cpu"])[0],
    )
    # --repeats becomes the number of interleaved timing rounds over all models of the sweep.
    config = TradeoffConfig(
        layers=args.layers,
        strategies=tuple(args.strategies),
        latency=latency,
        latency_rounds=args.repeats,
        latency_queries=args.num_queries,
    )

    dataset = load_retrieval_source(args.dataset, split=args.split)
    result = tradeoff_sweep(base, dataset, config, students=students, teacher_name=teacher_name or args.model)
    _print("\n" + result.to_markdown())
    return result, plot_tradeoff(result)


EVALUATE_SUBCOMMANDS = [add_evaluate, add_bench]
