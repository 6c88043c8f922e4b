"""Render the example model card of a real asymmetric model, check its dry run, and push it to a local Hub.

Writes ``benchmarks/example_card.md`` (the card, exactly as ``asym-st push`` would upload it for the asymmetric
repo) and ``benchmarks/example_card.json`` (what was measured, the dry-run operations, the local push/download check,
the command and the hardware).

The card only reports results stored in ``MODEL_DIR/eval/``. A model without results can get cheap ones here:
``--evaluate BEIR_FOLDER`` runs the evaluation engineer's ``retention_report`` (teacher = the model's own document
tower, student = the model) on a sub-sample, and ``--latency-queries FILE`` measures query latency of both towers;
both are saved into ``MODEL_DIR/eval/`` with ``save_results`` before rendering. A distilled student (``asym-st
distill``) already has its results and needs neither.

Usage (offline, from the repository root)::

    export HF_HUB_CACHE=$PWD/../shared/hf-hub HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
    asym-st build sentence-transformers/all-MiniLM-L6-v2 --query-layers 0,5 -o /tmp/minilm-2l
    python benchmarks/example_card.py /tmp/minilm-2l --repo asym-st/all-MiniLM-L6-v2-2l \
        --evaluate ../shared/data/beir/scifact --max-queries 300 \
        --latency-queries ../shared/data/queries/msmarco-dev-small/queries.dev.small.tsv --push-local
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))  # tests.hub.local_hub (the local Hub server) lives in the source tree

OUTPUT = REPO_ROOT / "benchmarks" / "example_card.md"
SUMMARY = REPO_ROOT / "benchmarks" / "example_card.json"


def evaluate(model_dir: Path, beir: str, max_queries: int | None, max_documents: int | None) -> dict:
    from asym_st import extract_tower, load_asymmetric_model
    from asym_st.data.sources import load_retrieval_source
    from asym_st.evaluation import RetrievalEvalConfig, retention_report, save_results

    model = load_asymmetric_model(model_dir, device="cpu")
    teacher = extract_tower(model, "document")  # the teacher itself: same fingerprint, so cached embeddings are shared
    dataset = load_retrieval_source(beir)
    if max_queries or max_documents:
        dataset = dataset.subsample(max_queries=max_queries, max_documents=max_documents)
    start = time.perf_counter()
    report = retention_report(
        teacher,
        model,
        [dataset],
        RetrievalEvalConfig(batch_size=32),
        teacher_name=model.asym_st_record.teacher,
        student_name=model_dir.name,
    )
    save_results(model_dir, retrieval=report.student_results, retention=report)
    print(report.to_markdown())
    return {
        "dataset": beir,
        "queries": len(dataset.queries),
        "documents": len(dataset.corpus),
        "seconds": round(time.perf_counter() - start, 1),
        "rows": [row.to_dict() for row in report.rows],
    }


def latency(model_dir: Path, queries_file: str, num_queries: int) -> dict:
    from asym_st import extract_tower, load_asymmetric_model
    from asym_st.data.queries import read_query_file
    from asym_st.evaluation import LatencyConfig, latency_report, measure_latency, save_results

    model = load_asymmetric_model(model_dir, device="cpu")
    texts = read_query_file(queries_file).texts
    config = LatencyConfig(batch_sizes=(1, 32), num_queries=num_queries, repeats=3)
    query_results = measure_latency(extract_tower(model, "query"), texts, config, name="query tower")
    teacher_results = measure_latency(extract_tower(model, "document"), texts, config, name="teacher")
    report = latency_report(query_results, teacher_results)
    save_results(model_dir, latency=report)
    return report


def dry_run(model_dir: Path, repo: str) -> dict:
    from asym_st.hub import PushConfig, push_model

    with tempfile.TemporaryDirectory(prefix="example-card-") as tmp:
        report = push_model(
            model_dir,
            PushConfig(repo_id=repo, towers=("asymmetric", "query", "document"), dry_run=True, output_dir=f"{tmp}/out"),
        )
        card = (Path(report.output_dir) / "asymmetric" / "README.md").read_text(encoding="utf-8")
    repos = [
        {
            "kind": r.kind,
            "repo_id": r.repo_id,
            "files": len(r.operations),
            "bytes": sum(op["size"] for op in r.operations),
            "card_merged_from": r.card_merged_from,
        }
        for r in report.repos
    ]
    return {"repos": repos, "card": card}


def push_local(model_dir: Path, repo: str) -> dict:
    """``asym-st push`` to a local Hub, then ``SentenceTransformer(repo)`` from it, in a client process."""
    import numpy as np
    from sentence_transformers import SentenceTransformer

    from tests.hub.local_hub import LocalHub

    texts = ["what is the capital of france", "a small query encoder and a large document encoder"]
    with LocalHub() as hub, tempfile.TemporaryDirectory(prefix="example-card-client-") as cache:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_OFFLINE"))}
        env.update(
            HF_ENDPOINT=hub.url,
            HF_HUB_OFFLINE="0",
            HF_HUB_DISABLE_XET="1",
            HF_TOKEN=hub.token,
            HF_HOME=f"{cache}/home",
            HF_HUB_CACHE=f"{cache}/hub",
            HF_HUB_DISABLE_PROGRESS_BARS="1",
            PYTHONPATH=str(REPO_ROOT),
        )
        arguments = json.dumps({"model_dir": str(model_dir), "repo": repo, "texts": texts})
        done = subprocess.run(
            [sys.executable, "-m", "tests.hub.round_trip_client", arguments],
            capture_output=True,
            text=True,
            cwd=REPO_ROOT,
            env=env,
            timeout=1800,
        )
        if done.returncode != 0:
            raise SystemExit(f"local push failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
        result = json.loads(next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))[7:])
        stored = {repo_id: sorted(hub.files(repo_id)) for repo_id in hub.repos}
        unhandled = list(hub.unhandled)
    local = SentenceTransformer(str(model_dir), device="cpu")
    diff = {
        "query": float(np.abs(np.asarray(result["query"]) - local.encode_query(texts)).max()),
        "document": float(np.abs(np.asarray(result["document"]) - local.encode_document(texts)).max()),
        "query_tower_repo": float(np.abs(np.asarray(result["query_tower"]) - local.encode_query(texts)).max()),
    }
    return {
        "push_seconds": result["push_seconds"],
        "download_and_load_seconds": result["download_and_load_seconds"],
        "max_abs_embedding_difference": diff,
        "routes": result["routes"],
        "card_results_parsed_back": result["card_results"],
        "files_per_repo": {repo_id: len(files) for repo_id, files in stored.items()},
        "unhandled_endpoints": unhandled,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--repo", required=True, help="the repo id the card is rendered for")
    parser.add_argument("--evaluate", default=None, help="BEIR folder to evaluate on (when MODEL_DIR has no results)")
    parser.add_argument("--max-queries", type=int, default=None)
    parser.add_argument("--max-documents", type=int, default=None)
    parser.add_argument("--latency-queries", default=None, help="query file for the latency measurement")
    parser.add_argument("--latency-num-queries", type=int, default=200)
    parser.add_argument("--push-local", action="store_true", help="push to a local Hub and load it back")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    parser.add_argument("--summary", type=Path, default=SUMMARY)
    args = parser.parse_args()

    from asym_st.evaluation.latency import hardware_description
    from asym_st.hub import read_model_facts
    from asym_st.utils.io import atomic_write_json, atomic_write_text

    command = "python benchmarks/example_card.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    summary: dict = {
        "command": command,
        "hardware": hardware_description("cpu"),
        "cpu_count": os.cpu_count(),
        # The project machine is shared: a high load makes latency numbers meaningless, so it is recorded.
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "model_dir": args.model_dir.name,
    }
    facts = read_model_facts(args.model_dir)
    summary["model"] = {
        "teacher": facts.record.teacher,
        "teacher_revision": facts.record.teacher_revision,
        "query_layers": facts.record.query_layers,
        "method": facts.record.method,
        "query_tower_parameters": facts.query.parameters,
        "document_tower_parameters": facts.document.parameters,
        "document_tower_fingerprint": facts.record.document_tower_fingerprint,
    }
    if args.evaluate:
        summary["evaluation"] = evaluate(args.model_dir, args.evaluate, args.max_queries, args.max_documents)
    if args.latency_queries:
        summary["latency"] = latency(args.model_dir, args.latency_queries, args.latency_num_queries)

    from asym_st.evaluation import load_results

    stored = load_results(args.model_dir)
    summary["stored_results"] = {
        "retrieval": [
            {k: r.get(k) for k in ("dataset", "split", "metrics", "num_queries", "num_documents")}
            for r in stored["retrieval"]
        ],
        "retention": stored["retention"],
        "latency": "stored" if stored["latency"] else "not measured",
        "tradeoff": "stored" if stored["tradeoff"] else "not measured",
        "training_config": "stored" if stored["training_config"] else "none (untrained model)",
    }
    preview = dry_run(args.model_dir, args.repo)
    summary["dry_run"] = preview["repos"]
    # The provenance note sits outside the generated sections, where a user's own text would go.
    card = preview["card"]
    end = card.index("\n---\n", 4) + 5
    note = f"\n<!-- Example card, rendered by `{command}` on {summary['hardware'].get('cpu', 'this CPU')}. -->\n"
    atomic_write_text(args.output, card[:end] + note + card[end:])
    if args.push_local:
        summary["local_push"] = push_local(args.model_dir, args.repo)
    atomic_write_json(args.summary, summary)
    print(json.dumps({k: v for k, v in summary.items() if k != "hardware"}, indent=2)[:4000])


if __name__ == "__main__":
    main()
