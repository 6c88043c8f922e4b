import json

import pytest

from asym_st.data.query_generation import QueryGenerator, Seq2SeqQueryGenerator, SpanQueryGenerator
from tests.tiny_seq2seq import make_tiny_bart, make_tiny_t5

PASSAGES = {
    "d1": "Paris is the capital of France. The city is on the Seine river and has many museums.",
    "d2": "Ribosomes translate messenger RNA into protein. Cells make proteins all the time in ribosomes.",
    "d3": "",  # an empty passage: no query
    "d4": "Dense retrieval encodes queries and documents. A small query tower keeps latency low.",
    "d5": "Paris is the capital of France. The city is on the Seine river and has many museums.",  # duplicate of d1
}


@pytest.fixture(scope="module")
def tiny_t5(tmp_path_factory):
    return make_tiny_t5(tmp_path_factory.mktemp("tiny_t5"))


def _generator(path, tmp_path, cls=Seq2SeqQueryGenerator, **kwargs):
    values = dict(queries_per_passage=3, batch_size=2, max_query_length=6, cache_dir=str(tmp_path / "cache"))
    return cls(str(path), **{**values, **kwargs})


class _Counting(Seq2SeqQueryGenerator):
    """Counts model calls; optionally returns scripted raw outputs instead of sampling."""

    calls: int = 0
    scripted: dict | None = None
    fail_at_call: int | None = None

    def _sample(self, texts, seed):
        self.calls += 1
        if self.fail_at_call == self.calls:
            raise KeyboardInterrupt("simulated kill")
        if self.scripted is not None:
            return [list(self.scripted[text]) for text in texts]
        return super()._sample(texts, seed)


# ------------------------------------------------------------------------------------------- model-free


def test_span_generator_samples_from_passages_with_titles_first():
    generator = SpanQueryGenerator(queries_per_passage=2, min_words=3, seed=3)
    assert isinstance(generator, QueryGenerator)
    queries = generator.generate(PASSAGES, show_progress_bar=False)
    # 2 per non-empty passage; d5 repeats d1, so its spans are duplicates, dropped and counted
    assert len(queries) == 6 and queries.dropped_duplicates == 2
    assert queries.ids[0] == "d1#pseudo0" and queries.texts[0] == "Paris is the capital of France."
    assert all(text in " ".join(PASSAGES.values()) for text in queries.texts)
    assert "2 passages gave no query" in queries.report()  # d3 (empty) and d5 (only duplicates)
    assert SpanQueryGenerator(queries_per_passage=2, min_words=3, seed=3).generate(PASSAGES).texts == queries.texts


# ------------------------------------------------------------------------------------------- seq2seq


def test_seq2seq_generator_samples_k_queries_per_passage_in_batches(tiny_t5, tmp_path, capfd):
    generator = _generator(tiny_t5, tmp_path, _Counting, queries_per_passage=4)
    assert isinstance(generator, QueryGenerator)
    passages = {"a": "the cat is in paris", "b": "protein cell gene study", "c": "dense query tower model"}
    queries = generator.generate(passages)
    assert generator.calls == 2  # 3 passages in batches of 2
    raw = len(queries) + queries.dropped_empty + queries.dropped_duplicates
    assert raw == 4 * len(passages)
    assert {query_id.split("#gen")[0] for query_id in queries.ids} <= set(passages)
    assert all(query_id.rsplit("#gen", 1)[1] in {"0", "1", "2", "3"} for query_id in queries.ids)
    assert "generating queries" in capfd.readouterr().err  # the progress bar
    # seeded: the same passages give the same queries, even without the cache
    again = _generator(tiny_t5, tmp_path, queries_per_passage=4, use_cache=False).generate(passages)
    assert again.texts == queries.texts


def test_seq2seq_generator_caches_and_resumes(tiny_t5, tmp_path):
    passages = {f"p{i}": f"the {word} study of protein cell" for i, word in enumerate(["cat", "dog", "gene", "city"])}
    interrupted = _generator(tiny_t5, tmp_path, _Counting, cache_every=1)
    interrupted.fail_at_call = 2
    with pytest.raises(KeyboardInterrupt):
        interrupted.generate(passages)
    resumed = _generator(tiny_t5, tmp_path, _Counting, cache_every=1)
    first = resumed.generate(passages)
    assert resumed.calls == 1, "the batch generated before the interruption comes from the cache"
    assert "2 passages generated, 2 from cache" in first.report()
    cached = _generator(tiny_t5, tmp_path, _Counting)
    second = cached.generate(passages)
    assert cached.calls == 0 and second.texts == first.texts and second.ids == first.ids
    settings = json.loads((cached.cache_folder() / "settings.json").read_text())
    assert settings["model_name_or_path"] == str(tiny_t5)
    # different sampling settings are a different cache entry
    assert _generator(tiny_t5, tmp_path, top_p=0.5).cache_folder() != cached.cache_folder()


def test_seq2seq_generator_drops_and_counts_empty_and_duplicate_queries(tiny_t5, tmp_path):
    generator = _generator(tiny_t5, tmp_path, _Counting, queries_per_passage=4, use_cache=False)
    generator.scripted = {
        "first passage": ["what is x", "", "what is  x", "who made y"],
        "second passage": ["who made y", "   ", "where is z", "where is z"],
    }
    queries = generator.generate({"a": "first passage", "b": "second passage", "c": ""})
    assert queries.texts == ["what is x", "who made y", "where is z"]
    assert queries.ids == ["a#gen0", "a#gen3", "b#gen2"]
    assert (queries.dropped_empty, queries.dropped_duplicates) == (2, 3)
    assert "2 empty dropped, 3 duplicates dropped" in queries.report()
    assert "1 passages gave no query" in queries.report()  # the empty passage is never sent to the model
    assert generator.calls == 1


def test_seq2seq_generator_loads_bart_too(tmp_path):
    path = make_tiny_bart(tmp_path / "bart")
    queries = _generator(path, tmp_path, queries_per_passage=2).generate({"a": "the cat is in paris"})
    assert len(queries) + queries.dropped_empty + queries.dropped_duplicates == 2


def test_seq2seq_generator_errors_are_clear(tmp_path, tiny_teacher_path):
    with pytest.raises(ValueError, match="queries_per_passage must be at least 1"):
        Seq2SeqQueryGenerator("x", queries_per_passage=0)
    with pytest.raises(ValueError, match="top_p"):
        Seq2SeqQueryGenerator("x", top_p=0)
    # a sentence-transformers (encoder-only) model is not a generator
    with pytest.raises(ValueError, match="Could not load a sequence-to-sequence query generator"):
        Seq2SeqQueryGenerator(str(tiny_teacher_path / ".." / "hf")).load()
