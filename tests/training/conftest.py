"""Shared training fixtures: a small BEIR folder of random words with train and test qrels."""

import json
import random
from pathlib import Path

import pytest

from tests.tiny_models import _WORDS

LEAKED = "what is the capital of france"  # a test query that is also a sentence of a passage


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
