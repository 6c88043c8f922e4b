"""The round trip: ``asym-st push`` -> local Hub -> ``SentenceTransformer("org/name")`` -> same embeddings.

The client runs in a subprocess with its own environment (see tests/hub/round_trip_client.py for why); the local Hub
runs in this process, so the test can look at what the real huggingface_hub client sent and stored.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sentence_transformers import SentenceTransformer

from tests.conftest import REPO_ROOT

TEXTS = ["what is the capital of france", "the query tower and the document tower", "covid vaccine study"]


def _client_env(hub, cache: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING_FACE_", "TRANSFORMERS_OFFLINE"))}
    env.update(
        HF_ENDPOINT=hub.url,
        HF_HUB_OFFLINE="0",
        HF_HUB_DISABLE_XET="1",  # hf_xet is installed; the local Hub speaks LFS only
        HF_TOKEN=hub.token,
        HF_HOME=str(cache / "home"),  # no saved login of the machine's user
        HF_HUB_CACHE=str(cache / "hub"),
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
        PYTHONPATH=str(REPO_ROOT),
        TOKENIZERS_PARALLELISM="false",
    )
    return env


def run_round_trip(hub, model_dir: Path, repo: str, tmp_path: Path) -> dict:
    arguments = json.dumps({"model_dir": str(model_dir), "repo": repo, "texts": TEXTS})
    completed = subprocess.run(
        [sys.executable, "-m", "tests.hub.round_trip_client", arguments],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO_ROOT,
        env=_client_env(hub, tmp_path / "client"),
    )
    if completed.returncode != 0:
        raise AssertionError(f"round trip client failed:\n{completed.stdout[-3000:]}\n{completed.stderr[-5000:]}")
    line = next(line for line in completed.stdout.splitlines() if line.startswith("RESULT "))
    result = json.loads(line[len("RESULT ") :])
    result["stderr"] = completed.stderr
    assert result["push_exit_code"] == 0, result["push_report"]
    return result


def check_round_trip(hub, model_dir: Path, repo: str, result: dict) -> None:
    local = SentenceTransformer(str(model_dir), device="cpu")
    expected = {"query": local.encode_query(TEXTS), "document": local.encode_document(TEXTS)}
    # Same embeddings, through the right routes: queries by the query tower, documents (and plain encode) by the
    # document tower, and the query tower pushed alone gives the asymmetric model's query embeddings.
    np.testing.assert_allclose(np.asarray(result["query"]), expected["query"], atol=1e-5)
    np.testing.assert_allclose(np.asarray(result["document"]), expected["document"], atol=1e-5)
    np.testing.assert_allclose(np.asarray(result["plain"]), expected["document"], atol=1e-5)
    np.testing.assert_allclose(np.asarray(result["query_tower"]), expected["query"], atol=1e-5)
    assert not np.allclose(expected["query"], expected["document"], atol=1e-3)  # the two routes really differ
    assert result["routes"] == ["document", "query"]

    # The files came from the local Hub, LFS objects through the redirect to its storage origin.
    resolved = [path for method, path, status in hub.requests if method == "HEAD" and "/resolve/" in path]
    assert any(path.endswith("query_0_Transformer/model.safetensors") for path in resolved)
    assert any(method == "GET" and path.startswith("/_lfs/objects/") for method, path, _ in hub.requests)
    assert hub.unhandled == []

    # The card, parsed back by ModelCard.load from the Hub.
    metadata = result["card_metadata"]
    assert metadata["library_name"] == "sentence-transformers" and metadata["pipeline_tag"] == "sentence-similarity"
    assert "asym-st" in metadata["tags"]
    assert f'SentenceTransformer("{repo}")' in result["card_text"]
    assert f'SentenceTransformer("{repo}-query")' in result["query_card_text"]


def test_push_then_load_from_the_hub(local_hub, evaluated_model, tmp_path):
    result = run_round_trip(local_hub, evaluated_model, "org/tiny-asym", tmp_path)
    check_round_trip(local_hub, evaluated_model, "org/tiny-asym", result)
    assert result["card_model_name"] == "tiny-asym"
    assert (
        "scifact",
        "test",
        "ndcg_at_10",
        61.23,
        f"{local_hub.url}/org/tiny-asym/blob/main/eval/retrieval/scifact__test.json",
    ) in [tuple(r) for r in result["card_results"]]
    assert local_hub.token not in result["stderr"] and local_hub.token not in json.dumps(result["push_report"])


@pytest.mark.real
def test_real_minilm_student_round_trip(minilm_name, local_hub, tmp_path):
    """all-MiniLM-L6-v2 with query layers [0, 5] (the untrained student; the distilled one uses the same path)."""
    from asym_st import QueryTowerConfig, build_asymmetric_model, save_asymmetric_model

    model_dir = save_asymmetric_model(
        build_asymmetric_model(minilm_name, QueryTowerConfig(layers=[0, 5])), tmp_path / "minilm-2l"
    )
    result = run_round_trip(local_hub, model_dir, "org/minilm-2l", tmp_path)
    check_round_trip(local_hub, model_dir, "org/minilm-2l", result)
    assert result["card_results"] == []  # no stored results: no model-index, the card says so
    assert "**Not evaluated.**" in result["card_text"]
    assert result["card_metadata"]["base_model"] == minilm_name
    sizes = {op["path_in_repo"]: op["size"] for op in result["push_report"]["repos"][-1]["operations"]}
    assert sizes["document_0_Transformer/model.safetensors"] > 80_000_000  # the real weights went through LFS
