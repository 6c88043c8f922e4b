"""Fixtures for evaluation tests: a tiny BEIR folder and tiny asymmetric models (fast, no real data)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

DOCUMENTS = {
    "d1": ("Paris", "paris is the capital city of france"),
    "d2": ("", "the cat is a small dog"),
    "d3": ("Protein", "a protein in the cell is a gene result"),
    "d4": ("Covid", "the covid vaccine study"),
    "d5": ("Search", "dense retrieval with a query encoder and a document index"),
    "d6": ("", "science of the city"),
    "d7": ("Teacher", "a teacher model and a student model"),
    "d8": ("Tower", "the query tower and the document tower"),
}
QUERIES = {
    "q1": "what is the capital of france",
    "q2": "covid vaccine",
    "q3": "dense retrieval index",
    "q4": "which protein is in the cell",
}
QRELS = [("q1", "d1", 1), ("q2", "d4", 2), ("q2", "d6", 1), ("q3", "d5", 1), ("q3", "d8", 1), ("q4", "d3", 1)]


def write_beir(folder: Path, qrels=QRELS, split: str = "test", documents=DOCUMENTS, queries=QUERIES) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "corpus.jsonl").open("w") as handle:
        for doc_id, (title, text) in documents.items():
            handle.write(json.dumps({"_id": doc_id, "title": title, "text": text}) + "\n")
    with (folder / "queries.jsonl").open("w") as handle:
        for query_id, text in queries.items():
            handle.write(json.dumps({"_id": query_id, "text": text}) + "\n")
    (folder / "qrels").mkdir(exist_ok=True)
    lines = ["query-id\tcorpus-id\tscore"] + [f"{q}\t{d}\t{s}" for q, d, s in qrels]
    (folder / "qrels" / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    return folder


@pytest.fixture
def tiny_beir(tmp_path) -> Path:
    return write_beir(tmp_path / "tiny_beir")


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    # Never touch the shared cache from unit tests.
    monkeypatch.setenv("ASYM_ST_CACHE", str(tmp_path / "asym_st_cache"))


@pytest.fixture(scope="module")
def tiny_students(tiny_teacher_path):
    """Two asymmetric models sharing the teacher's document tower, with different query towers."""
    from asym_st import QueryTowerConfig, build_asymmetric_model

    first = build_asymmetric_model(str(tiny_teacher_path), QueryTowerConfig(layers=[0, 3]))
    second = build_asymmetric_model(str(tiny_teacher_path), QueryTowerConfig(layers=[0]))
    return first, second
