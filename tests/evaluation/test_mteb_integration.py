"""mteb integration on a tiny local task: routing, agreement with asym-st's evaluator, the shared cache, JSON."""

from __future__ import annotations

import pytest

from asym_st.data import EmbeddingCache, load_beir
from asym_st.evaluation import RetrievalEvalConfig, evaluate_retrieval, load_results, save_results
from asym_st.evaluation.mteb_integration import beir_mteb_task, mteb_to_retrieval_result, run_mteb
from tests.conftest import shared_path
from tests.evaluation.test_retrieval import CallCounter


@pytest.fixture
def counted(tiny_students):
    model = tiny_students[0]
    counters = CallCounter(model, "encode_query"), CallCounter(model, "encode_document")
    yield model, counters
    del model.encode_query, model.encode_document


def test_mteb_default_wrapper_routes_queries_and_documents(counted, tiny_beir):
    model, (queries, documents) = counted
    results = run_mteb(model, [str(tiny_beir)], use_cache=False, show_progress_bar=False, name="tiny")
    # mteb's own SentenceTransformerEncoderWrapper called encode_query for the 4 queries and encode_document
    # for the 8 documents: an asymmetric model needs no special wrapper to be routed correctly.
    assert queries.texts == 4 and documents.texts == 8
    assert results[0].task_name == "tiny_beir"


def test_mteb_agrees_with_asym_st_and_shares_the_cache(counted, tiny_beir, tmp_path):
    model, (queries, documents) = counted
    cache = EmbeddingCache(tmp_path / "cache")
    ours = evaluate_retrieval(model, load_beir(tiny_beir), RetrievalEvalConfig(cache=cache, show_progress_bar=False))
    encoded_documents = documents.texts
    results = run_mteb(model, [beir_mteb_task(tiny_beir)], cache=cache, show_progress_bar=False, name="tiny")
    assert documents.texts == encoded_documents  # mteb read the corpus embeddings asym-st had cached
    theirs = mteb_to_retrieval_result(results[0], "tiny")
    assert theirs.evaluator.startswith("mteb 2.")
    for metric in ("ndcg_at_10", "recall_at_100", "mrr_at_10", "map"):
        assert theirs.metrics[metric] == pytest.approx(ours.metrics[metric], abs=1e-4)


def test_mteb_results_kept_as_mteb_json(tiny_students, tiny_beir, tmp_path):
    from mteb.results import TaskResult

    results = run_mteb(
        tiny_students[0],
        [str(tiny_beir)],
        cache=EmbeddingCache(tmp_path / "c"),
        show_progress_bar=False,
        output_folder=tmp_path / "mteb_results",
        name="tiny",
    )
    assert list((tmp_path / "mteb_results").rglob("tiny_beir.json"))  # mteb's own result cache was written
    written = save_results(tmp_path, mteb=results, retrieval=mteb_to_retrieval_result(results[0], "tiny"))
    reloaded = TaskResult.from_disk(next(p for p in map(__import__("pathlib").Path, written["mteb"])))
    assert reloaded.get_score() == pytest.approx(results[0].get_score())
    stored = load_results(tmp_path)
    assert stored["mteb"][0]["task_name"] == "tiny_beir"
    assert stored["retrieval"][0]["evaluator"].startswith("mteb")


@pytest.mark.real
def test_official_task_mirror_does_not_leak():
    import mteb

    from asym_st.data.sources import mteb_task_for_source

    mirror = shared_path("data", "hf-datasets", "mteb", "scifact")
    task = mteb_task_for_source("SciFact", mirror)
    assert task.metadata.dataset["path"] == str(mirror.resolve())
    task.load_data()
    task.unload_data()  # mteb drops instance-level metadata here; the mirror must survive it
    assert task.metadata.dataset["path"] == str(mirror.resolve())
    assert mteb.get_task("SciFact").metadata.dataset["path"] == "mteb/scifact"
