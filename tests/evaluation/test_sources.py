"""load_retrieval_source: BEIR folder, zip, Hub/mteb-layout dataset folder, mteb task; bad input named."""

from __future__ import annotations

import json
import shutil
import zipfile

import pytest

from asym_st.data import BeirFormatError
from asym_st.evaluation import load_retrieval_source
from tests.conftest import shared_path
from tests.evaluation.conftest import DOCUMENTS, QRELS, QUERIES, write_beir

HUB_README = """---
configs:
- config_name: corpus
  data_files:
  - split: corpus
    path: corpus/corpus.jsonl
- config_name: queries
  data_files:
  - split: queries
    path: queries/queries.jsonl
- config_name: default
  data_files:
  - split: test
    path: qrels/test.jsonl
---
"""


def _hub_layout(folder, qrels=QRELS):
    (folder / "corpus").mkdir(parents=True)
    (folder / "queries").mkdir()
    (folder / "qrels").mkdir()
    (folder / "README.md").write_text(HUB_README)
    with (folder / "corpus" / "corpus.jsonl").open("w") as handle:
        for doc_id, (title, text) in DOCUMENTS.items():
            handle.write(json.dumps({"_id": doc_id, "title": title, "text": text}) + "\n")
    with (folder / "queries" / "queries.jsonl").open("w") as handle:
        for query_id, text in QUERIES.items():
            handle.write(json.dumps({"_id": query_id, "text": text}) + "\n")
    with (folder / "qrels" / "test.jsonl").open("w") as handle:
        for q, d, s in qrels:
            handle.write(json.dumps({"query-id": q, "corpus-id": d, "score": s}) + "\n")
    return folder


def test_folder_and_zip_give_the_same_collection(tiny_beir, tmp_path):
    folder = load_retrieval_source(tiny_beir)
    archive = tmp_path / "tiny.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        for path in tiny_beir.rglob("*"):
            handle.write(path, f"tiny/{path.relative_to(tiny_beir)}")
    zipped = load_retrieval_source(archive)
    assert zipped.corpus == folder.corpus and zipped.qrels == folder.qrels
    assert folder.corpus["d1"] == "Paris paris is the capital city of france"


def test_hub_layout_folder_through_datasets(tmp_path):
    extra = QRELS + [("q9", "d1", 1), ("q1", "d99", 1)]  # an unknown query and an unknown document
    dataset = load_retrieval_source(_hub_layout(tmp_path / "hub_repo", extra), name="hubby")
    assert dataset.name == "hubby" and len(dataset.corpus) == 8 and len(dataset.queries) == 4
    assert dataset.qrels["q2"] == {"d4": 2, "d6": 1}
    assert dataset.report["qrels_unknown_queries"] == 1 and dataset.report["qrels_unknown_documents"] == 1
    with pytest.raises(BeirFormatError, match="no qrels for split 'dev'"):
        load_retrieval_source(tmp_path / "hub_repo", split="dev")


def test_bad_sources(tmp_path):
    with pytest.raises(BeirFormatError, match="no qrels for split 'dev'"):
        load_retrieval_source(write_beir(tmp_path / "b"), split="dev")
    not_beir = tmp_path / "x.zip"
    with zipfile.ZipFile(not_beir, "w") as handle:
        handle.writestr("readme.txt", "hello")
    with pytest.raises(BeirFormatError, match="not a BEIR zip"):
        load_retrieval_source(not_beir)
    (tmp_path / "empty").mkdir()
    with pytest.raises(BeirFormatError, match="neither a BEIR folder"):
        load_retrieval_source(tmp_path / "empty")
    duplicated = write_beir(tmp_path / "dup")
    with (duplicated / "corpus.jsonl").open("a") as handle:
        handle.write(json.dumps({"_id": "d1", "text": "again"}) + "\n")
    with pytest.raises(BeirFormatError, match="line 9: duplicate document id 'd1'"):
        load_retrieval_source(duplicated)
    with pytest.raises(FileNotFoundError, match="mirror"):
        load_retrieval_source("mteb:SciFact", mirror=tmp_path / "nope")


@pytest.mark.real
def test_mteb_task_from_local_mirror_equals_beir_folder(tmp_path):
    mirror = shared_path("data", "hf-datasets", "mteb", "scifact")
    beir = load_retrieval_source(shared_path("data", "beir", "scifact"))
    via_mteb = load_retrieval_source("mteb:SciFact", mirror=mirror)
    assert via_mteb.source == "mteb:SciFact" and via_mteb.name == "SciFact"
    assert len(via_mteb.corpus) == 5183 and len(via_mteb.queries) == 300
    assert via_mteb.qrels == beir.qrels
    assert via_mteb.corpus == beir.corpus
    shutil.rmtree(tmp_path, ignore_errors=True)


def test_offline_mteb_task_without_mirror_names_the_fix():
    import os

    if os.environ.get("HF_DATASETS_OFFLINE") != "1":
        pytest.skip("needs HF_DATASETS_OFFLINE=1 (as in CI), else datasets would try the network")
    with pytest.raises(BeirFormatError, match="--data-mirror"):
        load_retrieval_source("mteb:SciFact")
