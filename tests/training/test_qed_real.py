"""A short real QED run: all-MiniLM-L6-v2, real MS MARCO queries, a SciFact sub-sample (from ../shared)."""

import json

import pytest

from asym_st.training import QEDConfig, distill_query_tower
from tests.conftest import shared_path

pytestmark = pytest.mark.real


def test_short_real_qed_run(minilm_name, tmp_path):
    queries = shared_path("data", "queries", "msmarco-dev-small", "queries.dev.small.tsv")
    scifact = shared_path("data", "beir", "scifact")
    # a small evaluation collection: 30 SciFact test queries, their judged documents + others up to 120
    from asym_st.data.beir import load_beir

    small = load_beir(scifact, "test").subsample(max_queries=30, max_documents=120)
    folder = tmp_path / "scifact-small"
    (folder / "qrels").mkdir(parents=True)
    (folder / "corpus.jsonl").write_text(
        "".join(json.dumps({"_id": d, "text": t}) + "\n" for d, t in small.corpus.items())
    )
    (folder / "queries.jsonl").write_text(
        "".join(json.dumps({"_id": q, "text": t}) + "\n" for q, t in small.queries.items())
    )
    (folder / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\n"
        + "".join(f"{q}\t{d}\t{s}\n" for q, docs in small.qrels.items() for d, s in docs.items())
    )
    config = QEDConfig(
        teacher=minilm_name,
        query_layers=[0, 5],
        train_queries=[str(queries)],
        max_train_queries=128,
        eval_datasets=[str(folder)],
        output_dir=str(tmp_path / "student"),
        cache_dir=str(tmp_path / "cache"),
        max_steps=12,
        per_device_train_batch_size=32,
        save_steps=100,
        logging_steps=4,
        measure_latency=False,
        teacher_batch_size=32,
    )
    result = distill_query_tower(config)
    losses = [e["loss"] for e in result.log_history if "loss" in e]
    assert losses[-1] < losses[0]
    row = result.retention.to_dict()["rows"][0]
    assert row["teacher"]["ndcg_at_10"] > 0.5, "the real teacher retrieves well on this sub-sample"
    assert row["retention_ndcg_at_10"] > 0.7, "a [0, 5] tower already keeps most of the quality"
    eval_dir = tmp_path / "student" / "eval"
    assert (eval_dir / "retention.json").is_file() and list((eval_dir / "retrieval").glob("*.json"))
