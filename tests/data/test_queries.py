import pytest

from asym_st.data.queries import QueryFileError, read_query_file
from tests.conftest import shared_path


def test_formats_dedupe_and_report(tmp_path):
    (tmp_path / "q.jsonl").write_text(
        '{"_id": "1", "text": "a  query"}\n\n{"id": "2", "query": "a query"}\n{"_id": "3", "text": " "}\n'
    )
    queries = read_query_file(tmp_path / "q.jsonl")
    assert queries.ids == ["1"] and queries.texts == ["a query"]
    assert (queries.dropped_duplicates, queries.dropped_empty) == (1, 1)
    assert "1 duplicates dropped" in queries.report() and "1 empty dropped" in queries.report()
    (tmp_path / "q.tsv").write_text("10\tfirst\n11\tsecond\n")
    assert read_query_file(tmp_path / "q.tsv").ids == ["10", "11"]
    (tmp_path / "q.txt").write_text("one\n\ntwo\n")
    assert read_query_file(tmp_path / "q.txt").texts == ["one", "two"]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("q.jsonl", '{"_id": "1", "text": "ok"}\n{"_id": "2", "text": "broken\n', r"q.jsonl, line 2: not valid JSON"),
        ("q.jsonl", '{"_id": "1", "title": "no text"}\n', r"line 1: missing field 'text'"),
        ("q.jsonl", '["a list"]\n', r"line 1: expected a JSON object"),
        ("q.tsv", "1\tok\n2\ttoo\tmany\n", r"q.tsv, line 2: expected 'id<TAB>text'"),
        ("q.txt", "\n \n", r"holds no queries"),
        ("q.csv", "a,b\n", r"unknown query file format"),
    ],
)
def test_broken_files_name_the_line(tmp_path, name, content, message):
    (tmp_path / name).write_text(content)
    with pytest.raises(QueryFileError, match=message):
        read_query_file(tmp_path / name)


@pytest.mark.real
def test_real_msmarco_dev_queries():
    queries = read_query_file(shared_path("data", "queries", "msmarco-dev-small", "queries.dev.small.tsv"))
    assert len(queries) + queries.dropped_duplicates + queries.dropped_empty == 6980
    assert queries.ids[0] == "1048585" and queries.texts[0] == "what is paula deen's brother"
