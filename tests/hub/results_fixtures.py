"""Small result files in the shared results schema (``MODEL_DIR/eval/...``), written the way the evaluation code
writes them, for card and push tests. The numbers are fixtures: tests check that the card reports exactly these."""

from __future__ import annotations

import copy
import struct
import zlib
from pathlib import Path

from asym_st.evaluation.results import save_results
from asym_st.utils.io import atomic_write_json

FAKE_TOKEN = "hf_FixtureTokenThatMustNeverLeak0123456789"

RETRIEVAL = {
    "model": "/home/someone/models/minilm-qed-2l",
    "dataset": "scifact",
    "split": "test",
    "source": "/home/someone/data/beir/scifact",
    "evaluator": "asym-st",
    "metrics": {"ndcg_at_10": 0.61234, "recall_at_100": 0.90123, "mrr_at_10": 0.57, "map": 0.56},
    "num_queries": 300,
    "num_documents": 5183,
    "timings": {"encode_documents": 12.5},
    "date": "2025-01-01T00:00:00+00:00",
}
RETENTION = {
    "teacher": "sentence-transformers/all-MiniLM-L6-v2",
    "student": "/home/someone/models/minilm-qed-2l",
    "rows": [
        {
            "dataset": "scifact",
            "split": "test",
            "teacher": {"ndcg_at_10": 0.64512, "recall_at_100": 0.92501},
            "student": {"ndcg_at_10": 0.61234, "recall_at_100": 0.90123},
            "retention_ndcg_at_10": 0.61234 / 0.64512,
            "p_value": 0.0123,
            "test": "ttest_rel",
            "num_queries": 300,
        }
    ],
}
LATENCY = {
    "results": [
        {
            "model": "query tower",
            "route": "query",
            "batch_size": 1,
            "p50_ms": 7.01,
            "p95_ms": 8.52,
            "tokenize_p50_ms": 0.4,
            "forward_p50_ms": 6.6,
            "per_query_p50_ms": 7.01,
            "queries_per_second": 142.6,
            "num_queries": 200,
            "repeats": 3,
            "hardware": {"device": "cpu", "torch_threads": 2, "cpu": "Fixture CPU @ 2.0GHz", "torch": "2.13.0"},
        },
        {
            "model": "teacher",
            "route": "query",
            "batch_size": 1,
            "p50_ms": 21.7,
            "p95_ms": 25.3,
            "tokenize_p50_ms": 0.4,
            "forward_p50_ms": 21.3,
            "per_query_p50_ms": 21.7,
            "queries_per_second": 46.1,
            "num_queries": 200,
            "repeats": 3,
            "hardware": {"device": "cpu", "torch_threads": 2, "cpu": "Fixture CPU @ 2.0GHz", "torch": "2.13.0"},
        },
    ],
    "speedup": {"1": 3.096},
}
TRADEOFF = {
    "rows": [{"layers": 1, "retention": 0.81, "speedup": 5.2}, {"layers": 2, "retention": 0.949, "speedup": 3.1}]
}
TRAINING = {
    "method": "QED",
    "config": {
        "teacher": "sentence-transformers/all-MiniLM-L6-v2",
        "train_queries": ["/home/someone/data/queries/fiqa/queries.jsonl"],
        "learning_rate": 1e-4,
        "num_train_epochs": 10.0,
        "per_device_train_batch_size": 64,
        "distance": "mse",
        "output_dir": "/home/someone/models/minilm-qed-2l",
        "hub_token": FAKE_TOKEN,
        "note": f"pushed with {FAKE_TOKEN}",
    },
    "training_queries": {"count": 6648, "report": {}},
    "train_seconds": 1234.5,
    "last_logged_loss": 0.0123,
}


def tiny_png() -> bytes:
    """A valid 1x1 PNG (the trade-off plot stand-in)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00\x00")) + chunk(b"IEND", b"")
    )


def training_record(with_token: bool) -> dict:
    record = copy.deepcopy(TRAINING)
    if not with_token:
        record["config"].pop("hub_token")
        record["config"].pop("note")
    return record


def write_results(model_dir: Path, with_training: bool = True, with_token_in_config: bool = True) -> None:
    """Store every part of the schema in ``model_dir`` through the evaluation engineer's ``save_results``."""
    save_results(
        model_dir,
        retrieval=[RETRIEVAL],
        retention=RETENTION,
        latency=LATENCY,
        tradeoff=TRADEOFF,
        tradeoff_png=tiny_png(),
    )
    if with_training:
        atomic_write_json(model_dir / "training_config.json", training_record(with_token_in_config))
