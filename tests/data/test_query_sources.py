import json

import pytest

from asym_st.data.beir import load_beir
from asym_st.data.queries import QueryFileError
from asym_st.data.query_generation import SpanQueryGenerator
from asym_st.data.query_sources import collect_training_queries, load_query_source, parse_query_source
from tests.data.test_beir import write_beir


@pytest.fixture
def beir(tmp_path):
    folder = write_beir(tmp_path / "toy")
    (folder / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\nq3\td3\t1\n")
    return folder


def test_parse_sources(beir, tmp_path):
    (tmp_path / "q.txt").write_text("hello\n")
    assert parse_query_source(f"{beir}:train").kind == "beir"
    assert parse_query_source(str(beir)).split == "train"
    assert parse_query_source(str(tmp_path / "q.txt")).kind == "file"
    hub = parse_query_source("hf:org/data:validation:question")
    assert (hub.kind, hub.location, hub.split, hub.column) == ("hub", "org/data", "validation", "question")
    pseudo = parse_query_source(f"pseudo:{beir}:3")
    assert (pseudo.kind, pseudo.per_passage) == ("pseudo", 3)
    with pytest.raises(FileNotFoundError, match="neither a query file nor a BEIR folder"):
        parse_query_source(str(tmp_path / "missing.tsv"))
    with pytest.raises(ValueError, match="only applies to BEIR folders"):
        parse_query_source(f"{tmp_path / 'q.txt'}:train")


def test_beir_split_and_all(beir):
    assert load_query_source(f"{beir}:train").texts == ["unjudged"]
    assert len(load_query_source(f"{beir}:all")) == 3


def test_leakage_guard_excludes_evaluation_queries(beir, tmp_path):
    (tmp_path / "q.txt").write_text("Capital of  FRANCE\nsomething new\nwhat is a cat\n")
    evaluation = load_beir(beir, split="test")
    queries = collect_training_queries([str(tmp_path / "q.txt"), f"{beir}:train"], exclude=[evaluation])
    assert queries.texts == ["something new", "unjudged"]
    assert "2 evaluation queries excluded" in queries.report()
    kept = collect_training_queries([str(tmp_path / "q.txt")])
    assert len(kept) == 3, "without evaluation sets nothing is excluded"
    with pytest.raises(QueryFileError, match="No training queries left"):
        collect_training_queries([f"{beir}:test"], exclude=[evaluation])


def test_hub_dataset_through_datasets(tmp_path):
    # A local dataset folder goes through the same datasets.load_dataset path as a Hub id.
    folder = tmp_path / "hub_like"
    folder.mkdir()
    rows = [
        {"question": "first question", "answer": "a"},
        {"question": "", "answer": "b"},
        {"question": "first question", "answer": "c"},
    ]
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    queries = load_query_source(f"hf:{folder}:train")
    assert queries.texts == ["first question"]
    assert (queries.dropped_empty, queries.dropped_duplicates) == (1, 1)
    with pytest.raises(QueryFileError, match="has no query column 'nope'"):
        load_query_source(f"hf:{folder}:train:nope")


def test_span_generator_is_seeded_and_filters(beir):
    corpus = load_beir(beir).corpus
    first = SpanQueryGenerator(queries_per_passage=2, min_words=2, seed=1).generate(corpus, show_progress_bar=False)
    again = SpanQueryGenerator(queries_per_passage=2, min_words=2, seed=1).generate(corpus, show_progress_bar=False)
    assert first.texts == again.texts and len(first) >= 3
    assert all(2 <= len(t.split()) <= 16 for t in first.texts)
    assert load_query_source(f"pseudo:{beir}:1").texts[0].startswith("Paris")
    with pytest.raises(ValueError, match="min_words"):
        SpanQueryGenerator(min_words=5, max_words=3)


def test_labelled_training_queries_lose_evaluation_queries(tmp_path):
    from asym_st.data.query_sources import without_evaluation_queries

    write_beir(
        tmp_path / "data",
        queries=[{"_id": "q1", "text": "What is the capital of France?"}, {"_id": "q2", "text": "cats"}],
    )
    evaluation = load_beir(tmp_path / "data", split="test")
    kept, dropped = without_evaluation_queries(
        {"t1": "what is  the capital of france?", "t2": "dogs", "t3": "CATS"}, [evaluation]
    )
    assert kept == {"t2": "dogs"} and dropped == ["t1", "t3"]
