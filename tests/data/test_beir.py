import json
import zipfile

import pytest

from asym_st.data.beir import BeirFormatError, available_splits, load_beir
from tests.conftest import shared_path


def write_beir(
    folder, corpus=None, queries=None, qrels="query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t2\n", split="test"
):
    folder.mkdir(parents=True, exist_ok=True)
    corpus = (
        corpus
        if corpus is not None
        else [
            {"_id": "d1", "title": "Paris", "text": "Paris is the capital of France."},
            {"_id": "d2", "title": "", "text": "Cats are small felines."},
            {"_id": "d3", "title": "Noise", "text": "Unrelated text."},
        ]
    )
    queries = (
        queries
        if queries is not None
        else [
            {"_id": "q1", "text": "capital of france"},
            {"_id": "q2", "text": "what is a cat"},
            {"_id": "q3", "text": "unjudged"},
        ]
    )
    (folder / "corpus.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in corpus) if isinstance(corpus, list) else corpus
    )
    (folder / "queries.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in queries) if isinstance(queries, list) else queries
    )
    (folder / "qrels").mkdir(exist_ok=True)
    (folder / "qrels" / f"{split}.tsv").write_text(qrels)
    return folder


def test_loads_a_valid_folder(tmp_path):
    data = load_beir(write_beir(tmp_path / "toy"))
    assert data.corpus["d1"] == "Paris Paris is the capital of France."
    assert data.corpus["d2"] == "Cats are small felines."
    assert set(data.queries) == {"q1", "q2"}, "only judged queries are evaluation queries"
    assert data.qrels == {"q1": {"d1": 1}, "q2": {"d2": 2}}
    assert data.report == {}
    assert len(data.fingerprint()) == 64


def test_unknown_ids_in_qrels_are_counted_not_silent(tmp_path):
    qrels = "query-id\tcorpus-id\tscore\nq1\td1\t1\nq9\td1\t1\nq2\tdX\t1\nq2\td2\t1\n"
    data = load_beir(write_beir(tmp_path / "toy", qrels=qrels))
    assert data.report == {"qrels_unknown_queries": 1, "qrels_unknown_documents": 1}
    assert data.qrels == {"q1": {"d1": 1}, "q2": {"d2": 1}}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"corpus": '{"_id": "d1", "text": "ok"}\n{"_id": "d2", "text": \n'}, r"corpus.jsonl, line 2: not valid JSON"),
        ({"corpus": [{"_id": "d1", "text": "a"}, {"_id": "d1", "text": "b"}]}, r"line 2: duplicate document id 'd1'"),
        ({"queries": [{"_id": "q1"}]}, r"queries.jsonl, line 1: missing field 'text'"),
        ({"corpus": [{"title": "no id", "text": "x"}]}, r"line 1: missing field '_id'"),
        ({"qrels": "query-id\tcorpus-id\tscore\nq1\td1\n"}, r"test.tsv, line 2: expected query-id, corpus-id, score"),
        ({"qrels": "query-id\tcorpus-id\tscore\nq1\td1\thigh\n"}, r"line 2: score 'high' is not a number"),
        ({"qrels": "query-id\tcorpus-id\tscore\nqX\td1\t1\n"}, r"no judgement names a known query"),
    ],
)
def test_bad_files_name_file_and_line(tmp_path, kwargs, message):
    with pytest.raises(BeirFormatError, match=message):
        load_beir(write_beir(tmp_path / "toy", **kwargs))


def test_missing_split_lists_available_ones(tmp_path):
    folder = write_beir(tmp_path / "toy", split="train")
    assert available_splits(folder) == ["train"]
    with pytest.raises(BeirFormatError, match=r"no qrels for split 'test'; available splits: \['train'\]"):
        load_beir(folder, split="test")


def test_zip_is_unpacked_once_and_non_beir_zip_refused(tmp_path):
    folder = write_beir(tmp_path / "toy")
    archive = tmp_path / "toy.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for file in folder.rglob("*"):
            if file.is_file():
                z.write(file, f"toy/{file.relative_to(folder)}")
    data = load_beir(archive, cache_dir=tmp_path / "cache")
    assert data.qrels == {"q1": {"d1": 1}, "q2": {"d2": 2}}
    assert load_beir(archive, cache_dir=tmp_path / "cache").source == data.source
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(bad, "w") as z:
        z.writestr("readme.txt", "hello")
    with pytest.raises(BeirFormatError, match="not a BEIR zip"):
        load_beir(bad, cache_dir=tmp_path / "cache")
    (tmp_path / "fake.zip").write_text("not a zip")
    with pytest.raises(BeirFormatError, match="not a zip file"):
        load_beir(tmp_path / "fake.zip")


@pytest.mark.real
def test_real_scifact_counts():
    data = load_beir(shared_path("data", "beir", "scifact"), split="test")
    assert (len(data.corpus), len(data.queries), sum(len(v) for v in data.qrels.values())) == (5183, 300, 339)
    small = data.subsample(max_queries=20, max_documents=200)
    assert len(small.queries) == 20 and len(small.corpus) == 200
    assert all(d in small.corpus for q in small.qrels for d in small.qrels[q])


def test_dataset_specs_split_on_the_last_colon(tmp_path):
    from asym_st.data.beir import split_dataset_spec

    assert split_dataset_spec("../shared/data/beir/nfcorpus:train") == ("../shared/data/beir/nfcorpus", "train")
    assert split_dataset_spec("../shared/data/beir/nfcorpus") == ("../shared/data/beir/nfcorpus", "test")
    assert split_dataset_spec("folder", default_split="dev") == ("folder", "dev")
    odd = tmp_path / "a:b"
    odd.mkdir()
    assert split_dataset_spec(str(odd)) == (str(odd), "test")  # a folder whose name has a colon stays whole
