import gzip
import json
import pickle

import numpy as np
import pytest
import torch
from datasets import Dataset
from sentence_transformers import CrossEncoder, SentenceTransformer

from asym_st.data import EmbeddingCache
from asym_st.data.teacher_scores import (
    BiEncoderScorer,
    CrossEncoderScorer,
    ScoreCache,
    ScoreFileError,
    ScoreFileScorer,
    ScoringConfig,
    add_teacher_scores,
    load_score_file,
    score_pairs,
)

QUERIES = {"q1": "capital of france", "q2": "cat and dog", "q3": "protein cell"}
CORPUS = {"p1": "paris is the capital", "p2": "the dog", "p3": "a cell protein", "p4": "covid vaccine study"}
PAIRS = (["q1", "q1", "q2", "q2", "q3", "q3", "q1"], ["p1", "p2", "p2", "p3", "p3", "p4", "p4"])


class CountingScorer:
    """Deterministic fake teacher: len(query) - len(passage); counts the pairs it scored."""

    def __init__(self, fail_after_calls=None):
        self.calls = 0
        self.scored = 0
        self.fail_after_calls = fail_after_calls

    def fingerprint(self):
        return "counting-v1"

    def score(self, query_ids, passage_ids, queries, corpus):
        if self.fail_after_calls is not None and self.calls >= self.fail_after_calls:
            raise KeyboardInterrupt("simulated kill")
        self.calls += 1
        self.scored += len(query_ids)
        return np.array([len(queries[q]) - len(corpus[p]) for q, p in zip(query_ids, passage_ids, strict=True)])


def _expected():
    return np.array([len(QUERIES[q]) - len(CORPUS[p]) for q, p in zip(*PAIRS, strict=True)], dtype=np.float32)


def test_shards_are_cached_and_an_interrupted_run_resumes(tmp_path):
    cache = ScoreCache(tmp_path)
    config = ScoringConfig(shard_size=2, show_progress_bar=False)
    with pytest.raises(KeyboardInterrupt):
        score_pairs(CountingScorer(fail_after_calls=2), *PAIRS, QUERIES, CORPUS, cache, config)
    (entry,) = list(tmp_path.iterdir())
    assert sorted(p.name for p in entry.iterdir()) == ["shard-000000.npy", "shard-000001.npy"]
    resumed = CountingScorer()
    scores = score_pairs(resumed, *PAIRS, QUERIES, CORPUS, cache, config)
    np.testing.assert_array_equal(scores, _expected())
    assert resumed.scored == 3  # only shards 2 and 3 (2 + 1 pairs)
    assert sorted(p.name for p in entry.iterdir()) == ["meta.json", "scores.npy"]
    again = CountingScorer()
    np.testing.assert_array_equal(score_pairs(again, *PAIRS, QUERIES, CORPUS, cache, config), _expected())
    assert again.scored == 0


def test_corrupt_shard_is_recomputed_and_texts_key_the_cache(tmp_path):
    cache = ScoreCache(tmp_path)
    config = ScoringConfig(shard_size=2, show_progress_bar=False)
    with pytest.raises(KeyboardInterrupt):
        score_pairs(CountingScorer(fail_after_calls=2), *PAIRS, QUERIES, CORPUS, cache, config)
    (entry,) = list(tmp_path.iterdir())
    (entry / "shard-000001.npy").write_bytes(b"garbage")
    scorer = CountingScorer()
    np.testing.assert_array_equal(score_pairs(scorer, *PAIRS, QUERIES, CORPUS, cache, config), _expected())
    assert scorer.scored == 5  # shard 1 again, then 2 and 3
    changed = dict(CORPUS, p4="another text")
    scorer = CountingScorer()
    score_pairs(scorer, *PAIRS, QUERIES, changed, cache, config)
    assert scorer.scored == len(PAIRS[0])  # a different text is a different entry


def test_cross_encoder_gives_raw_logits(tiny_teacher_path, tmp_path):
    model = CrossEncoder(str(tiny_teacher_path.parent / "hf"), num_labels=1, device="cpu")
    scores = score_pairs(
        CrossEncoderScorer(model, batch_size=3), *PAIRS, QUERIES, CORPUS, ScoreCache(tmp_path), ScoringConfig(3)
    )
    logits = model.predict(
        [(QUERIES[q], CORPUS[p]) for q, p in zip(*PAIRS, strict=True)], activation_fn=torch.nn.Identity()
    )
    np.testing.assert_allclose(scores, logits, atol=1e-5)
    sigmoid = model.predict([(QUERIES[q], CORPUS[p]) for q, p in zip(*PAIRS, strict=True)])
    assert not np.allclose(scores, sigmoid, atol=1e-3)  # the default activation is not used


def test_bi_encoder_scores_with_its_similarity(tiny_teacher_path, tmp_path):
    model = SentenceTransformer(str(tiny_teacher_path))
    scorer = BiEncoderScorer(model, cache=EmbeddingCache(tmp_path / "emb"))
    scores = score_pairs(scorer, *PAIRS, QUERIES, CORPUS, ScoreCache(tmp_path / "scores"), ScoringConfig(4, False))
    q = model.encode_query([QUERIES[q] for q in PAIRS[0]], convert_to_tensor=True)
    p = model.encode_document([CORPUS[p] for p in PAIRS[1]], convert_to_tensor=True)
    np.testing.assert_allclose(scores, model.similarity_pairwise(q, p).numpy(), atol=1e-5)


def _write(path, text, gz=False):
    data = text.encode()
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def test_score_files_in_all_public_formats(tmp_path):
    table = {"q1": {"p1": 1.5, "p2": -0.5}, "q2": {"p2": 2.0}}
    tsv = "query-id\tcorpus-id\tscore\nq1\tp1\t1.5\nq1\tp2\t-0.5\n\nq2\tp2\t2\n"
    jsonl = '{"qid": "q1", "pid": "p1", "score": 1.5}\n{"query_id": "q1", "doc_id": "p2", "score": -0.5}\n'
    jsonl += '{"qid": "q2", "corpus_id": "p2", "score": 2.0}\n'
    files = [
        _write(tmp_path / "s.tsv", tsv),
        _write(tmp_path / "s.tsv.gz", tsv, gz=True),
        _write(tmp_path / "s.jsonl", jsonl),
        _write(tmp_path / "s.json.gz", json.dumps(table), gz=True),
    ]
    for path in files:
        assert load_score_file(path) == table, path
    # integer ids (as MS MARCO releases use) are compared as strings
    _write(tmp_path / "ints.json", json.dumps({"7": {"11": 0.25}}))
    scorer = ScoreFileScorer(tmp_path / "ints.json")
    np.testing.assert_array_equal(score_pairs(scorer, [7], [11]), [0.25])


def test_unknown_ids_are_named(tmp_path):
    scorer = ScoreFileScorer(_write(tmp_path / "s.tsv", "q1\tp1\t1.0\nq2\tp2\t2.0\n"))
    with pytest.raises(ScoreFileError) as error:
        score_pairs(scorer, ["q1", "q9", "q2"], ["p1", "p1", "p7"], corpus=CORPUS)
    message = str(error.value)
    assert "s.tsv" in message and "['q9']" in message and "q2/p7" in message and "['p7']" in message


def test_pickle_is_refused(tmp_path):
    payload = pickle.dumps({"q1": {"p1": 1.0}})
    (tmp_path / "scores.pkl").write_bytes(payload)
    with pytest.raises(ScoreFileError, match="pickle files are refused"):
        load_score_file(tmp_path / "scores.pkl")
    (tmp_path / "disguised.json.gz").write_bytes(gzip.compress(payload))
    with pytest.raises(ScoreFileError, match="pickle files are refused"):
        load_score_file(tmp_path / "disguised.json.gz")


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("a.tsv", "q1\tp1\n", "a.tsv:1: expected 3 tab-separated fields"),
        ("b.tsv", "q1\tp1\t1\nq1\tp2\thigh\n", "b.tsv:2: score 'high' is not a number"),
        ("c.tsv", "q1\tp1\t1\nq1\tp1\t2\n", "c.tsv:2: pair q1/p1 is scored twice"),
        ("d.jsonl", '{"qid": "q", "score": 1}\n', "d.jsonl:1: no passage id field"),
        ("e.jsonl", "{not json\n", "e.jsonl:1: invalid JSON"),
        ("f.json", '{"q": [1, 2]}', "query 'q' maps to list"),
        ("g.json", '{"q": {"p": NaN}}', "not finite"),
        ("h.csv", "q,p,1\n", "unknown score file type"),
        ("i.json", "{}", "holds no scores"),
    ],
)
def test_malformed_score_files(tmp_path, name, text, message):
    with pytest.raises(ScoreFileError, match=message):
        load_score_file(_write(tmp_path / name, text))


def test_add_teacher_scores_to_mined_candidates(tmp_path):
    candidates = Dataset.from_dict(
        {
            "query_id": ["q1", "q2"],
            "query": [QUERIES["q1"], QUERIES["q2"]],
            "positive_ids": [["p1"], []],
            "positive_texts": [[CORPUS["p1"]], []],
            "candidate_ids": [["p2", "p4"], ["p3"]],
            "candidate_texts": [[CORPUS["p2"], CORPUS["p4"]], [CORPUS["p3"]]],
        }
    )
    scored = add_teacher_scores(
        candidates, CountingScorer(), cache=ScoreCache(tmp_path), config=ScoringConfig(2, False)
    )
    lengths = {k: len(v) for k, v in QUERIES.items()}, {k: len(v) for k, v in CORPUS.items()}
    assert scored["positive_scores"] == [[lengths[0]["q1"] - lengths[1]["p1"]], []]
    assert scored["candidate_scores"] == [
        [lengths[0]["q1"] - lengths[1]["p2"], lengths[0]["q1"] - lengths[1]["p4"]],
        [lengths[0]["q2"] - lengths[1]["p3"]],
    ]
    with pytest.raises(ValueError, match="pass corpus="):
        add_teacher_scores(
            candidates.map(lambda row: {"candidate_texts": []}), CountingScorer(), cache=ScoreCache(tmp_path)
        )


def test_model_scorers_need_texts(tmp_path):
    with pytest.raises(KeyError, match="'q9'"):
        score_pairs(CountingScorer(), ["q9"], ["p1"], QUERIES, CORPUS, ScoreCache(tmp_path))
    with pytest.raises(ValueError, match="one of each per pair"):
        score_pairs(CountingScorer(), ["q1"], [], QUERIES, CORPUS, ScoreCache(tmp_path))


def test_bi_encoder_shares_the_corpus_cache_entry_of_mining_and_evaluation(tiny_teacher_path, tmp_path):
    # When most of the corpus is scored, the whole corpus is encoded in its own order: the same cache entry
    # (keyed by the text list) that mining and evaluation write, so nothing is encoded twice.
    model = SentenceTransformer(str(tiny_teacher_path))
    cache = EmbeddingCache(tmp_path / "emb")
    cache.encode(model, list(CORPUS.values()), route="document", show_progress_bar=False)
    cache.encode(model, list(QUERIES.values()), route="query", show_progress_bar=False)
    entries = sorted(path.name for path in (tmp_path / "emb").glob("*.npy"))
    scorer = BiEncoderScorer(model, cache=cache)
    score_pairs(scorer, *PAIRS, QUERIES, CORPUS, ScoreCache(tmp_path / "scores"), ScoringConfig(4, False))
    assert sorted(path.name for path in (tmp_path / "emb").glob("*.npy")) == entries
