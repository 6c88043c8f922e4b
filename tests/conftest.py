"""Shared fixtures: tiny random sentence-transformers models (fast), a tiny BEIR folder, and the real data/models
in ../shared."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ASYM_ST_SHARED", REPO_ROOT.parent / "shared")).resolve()

# Point the Hub client at the shared offline cache before anything imports huggingface_hub, so that a developer's
# plain `pytest` behaves like CI (which exports the same variables in .ci/run).
if SHARED.is_dir() and "HF_HUB_CACHE" not in os.environ:
    os.environ["HF_HUB_CACHE"] = str(SHARED / "hf-hub")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

from tests.tiny_models import _WORDS, make_tiny_sentence_transformer  # noqa: E402

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
LEAKED = "what is the capital of france"  # a test query of ``beir`` that is also a sentence of a passage


def shared_path(*parts: str) -> Path:
    """A path inside ../shared; the test is skipped when ../shared is not there (e.g. outside CI)."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"needs {path} (real data / weights from ../shared)")
    return path


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def tiny_teacher_path(tmp_path_factory) -> Path:
    """A 4-layer, 32-wide random BERT sentence-transformer (uncased vocabulary), saved to disk."""
    return make_tiny_sentence_transformer(tmp_path_factory.mktemp("tiny_teacher"), layers=4, hidden=32)


@pytest.fixture(scope="session")
def tiny_wide_path(tmp_path_factory) -> Path:
    """Same vocabulary as the teacher, 2 layers, 48 wide: a heterogeneous query encoder needing a projection."""
    return make_tiny_sentence_transformer(tmp_path_factory.mktemp("tiny_wide"), layers=2, hidden=48, seed=1)


@pytest.fixture(scope="session")
def tiny_cased_path(tmp_path_factory) -> Path:
    """A model with a different (cased) vocabulary: its tokenizer is incompatible with the teacher's."""
    return make_tiny_sentence_transformer(
        tmp_path_factory.mktemp("tiny_cased"), layers=2, hidden=32, cased=True, seed=2
    )


@pytest.fixture(scope="session")
def minilm_name() -> str:
    shared_path("hf-hub", "models--sentence-transformers--all-MiniLM-L6-v2")
    return MINILM


def _sentence(rng: random.Random) -> str:
    return " ".join(rng.sample(_WORDS, 6))


@pytest.fixture(scope="module")
def beir(tmp_path_factory) -> Path:
    """A BEIR folder: 30 passages of random words (one contains a test query verbatim), 24 train and 4 test queries."""
    rng = random.Random(0)
    folder = tmp_path_factory.mktemp("beir")
    docs = {f"d{i}": f"{_sentence(rng)}. {_sentence(rng)}." for i in range(30)}
    docs["d0"] = f"{LEAKED}. {_sentence(rng)}."
    queries = {f"train{i}": " ".join(rng.sample(_WORDS, 4)) for i in range(24)}
    queries.update({"test0": LEAKED, **{f"test{i}": " ".join(rng.sample(_WORDS, 4)) for i in range(1, 4)}})
    (folder / "corpus.jsonl").write_text(
        "".join(json.dumps({"_id": d, "title": "", "text": t}) + "\n" for d, t in docs.items())
    )
    (folder / "queries.jsonl").write_text("".join(json.dumps({"_id": q, "text": t}) + "\n" for q, t in queries.items()))
    (folder / "qrels").mkdir()
    for split in ("train", "test"):
        rows = [f"{q}\td{i % 30}\t1" for i, q in enumerate(queries) if q.startswith(split)]
        (folder / "qrels" / f"{split}.tsv").write_text("query-id\tcorpus-id\tscore\n" + "\n".join(rows) + "\n")
    return folder
