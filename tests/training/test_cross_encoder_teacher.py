import json
import math

import numpy as np
import pytest
from datasets import Dataset
from sentence_transformers import SentenceTransformer
from sentence_transformers.cross_encoder import CrossEncoder

from asym_st.data.beir import load_beir
from asym_st.data.teacher_scores import PairScorer
from asym_st.training import CrossEncoderTeacherConfig, rerank_evaluation, train_cross_encoder
from asym_st.training.cross_encoder_teacher import TEACHER_RECORD_FILE, cross_encoder_training_pairs, loss_left_constant


class OracleScorer:
    """Scores a pair by its qrels grade: a perfect reranker."""

    def __init__(self, qrels):
        self.qrels = qrels

    def fingerprint(self):
        return None

    def score(self, query_ids, passage_ids, queries, corpus):
        return np.array([self.qrels.get(q, {}).get(p, 0) for q, p in zip(query_ids, passage_ids, strict=True)])


def _teacher_config(teacher, beir, tmp_path, name: str, **overrides) -> CrossEncoderTeacherConfig:
    values = dict(
        train_dataset=f"{beir}:train",
        output_dir=str(tmp_path / name),
        base_model=str(teacher),  # a sentence-transformers folder: its encoder + a fresh head
        num_candidates=5,
        num_negatives=2,
        max_length=32,
        per_device_train_batch_size=8,
        learning_rate=1e-3,
        batch_size=16,
        cache_dir=str(tmp_path / "cache"),
    )
    return CrossEncoderTeacherConfig(**{**values, **overrides})


def test_training_pairs_are_positives_and_sampled_candidates(beir):
    train = load_beir(beir, split="train")
    candidates = Dataset.from_dict(
        {
            "query_id": ["train0", "train1"],
            "positive_ids": [["d0"], ["d1", "d2"]],
            "candidate_ids": [["d5", "d6", "d7"], []],
        }
    )
    pairs = cross_encoder_training_pairs(train, candidates, num_negatives=2, seed=0)
    assert pairs["label"] == [1.0, 0.0, 0.0, 1.0, 1.0]  # train1 has no candidate: positives only
    assert pairs["query"][:3] == [train.queries["train0"]] * 3
    negatives = set(pairs["passage"][1:3])
    assert len(negatives) == 2 and negatives <= {train.corpus[d] for d in ("d5", "d6", "d7")}


def test_trains_saves_and_measures_a_cross_encoder(tiny_teacher_path, beir, tmp_path):
    test = load_beir(beir, split="test")
    config = _teacher_config(tiny_teacher_path, beir, tmp_path, "cross-encoder", max_steps=3, logging_steps=1)
    result = train_cross_encoder(config, excluded=[test])
    assert result.details["training_queries"] == 24 and result.details["training_pairs"] == 24 * 3
    assert result.details["positive_pairs"] == 24 and result.details["pos_weight"] == pytest.approx(2.0)
    assert result.details["steps"] == 3 and any("loss" in entry for entry in result.details["log_history"])
    # 24 positives, 48 negatives, pos_weight 2: a constant logit 0 scores ln 2 · (2·24 + 48) / 72
    assert result.details["constant_prediction_loss"] == pytest.approx(math.log(2) * 96 / 72)
    assert result.details["learned"] is loss_left_constant(
        [e["loss"] for e in result.details["log_history"] if "loss" in e], result.details["constant_prediction_loss"]
    )

    loaded = CrossEncoder(str(tmp_path / "cross-encoder"))  # a plain sentence-transformers load
    assert loaded.num_labels == 1
    pairs = [("what is the capital of france", "paris is the capital"), ("cat", "dog")]
    assert np.allclose(loaded.predict(pairs), result.model.predict(pairs), atol=1e-5)
    record = json.loads((tmp_path / "cross-encoder" / TEACHER_RECORD_FILE).read_text())
    assert record["base_model"] == str(tiny_teacher_path) and record["train_dataset"] == f"{beir}:train"

    retriever = SentenceTransformer(str(tiny_teacher_path))
    assert not isinstance(loaded, PairScorer)
    measured = rerank_evaluation(loaded, retriever, test, top_k=100, cache_dir=str(tmp_path / "cache"))
    assert measured.num_queries == 4 and measured.top_k == 100
    assert set(measured.reranked) == {"ndcg_at_10", "recall_at_100", "mrr_at_10", "map"}
    # every document is in the top 100 of this 30-document corpus: reranking keeps recall, reorders the list
    assert measured.reranked["recall_at_100"] == measured.retriever["recall_at_100"] == 1.0
    oracle = rerank_evaluation(OracleScorer(test.qrels), retriever, test, cache_dir=str(tmp_path / "cache"))
    assert oracle.reranked["ndcg_at_10"] == pytest.approx(1.0)
    assert oracle.retriever == measured.retriever and oracle.cross_encoder == "OracleScorer"


def test_the_leakage_guard_and_bad_settings(tiny_teacher_path, beir, tmp_path):
    with pytest.raises(ValueError, match="num_negatives \\(9\\) exceeds num_candidates \\(5\\)"):
        CrossEncoderTeacherConfig(train_dataset="x", output_dir="y", num_candidates=5, num_negatives=9)
    test = load_beir(beir, split="test")
    # training on the evaluation split itself: the leakage guard removes every query
    with pytest.raises(ValueError, match="no training query left after the leakage guard"):
        train_cross_encoder(
            CrossEncoderTeacherConfig(
                train_dataset=f"{beir}:test", output_dir=str(tmp_path / "ce"), base_model=str(tiny_teacher_path)
            ),
            excluded=[test],
        )


def test_an_interrupted_teacher_training_resumes_from_its_checkpoint(tiny_teacher_path, beir, tmp_path, monkeypatch):
    from sentence_transformers.cross_encoder import CrossEncoderTrainer

    def config(name: str) -> CrossEncoderTeacherConfig:
        return _teacher_config(tiny_teacher_path, beir, tmp_path, name, max_steps=4, save_steps=2)

    uninterrupted = train_cross_encoder(config("whole"))
    step = CrossEncoderTrainer.training_step
    calls = []

    def dies_at_the_third_step(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # after checkpoint-2 was written
        return step(self, *args, **kwargs)

    monkeypatch.setattr(CrossEncoderTrainer, "training_step", dies_at_the_third_step)
    with pytest.raises(KeyboardInterrupt):
        train_cross_encoder(config("resumed"))
    assert not (tmp_path / "resumed").exists()  # no model folder from the interrupted run
    assert (tmp_path / "resumed.checkpoints" / "checkpoint-2").is_dir()
    monkeypatch.setattr(CrossEncoderTrainer, "training_step", step)
    resumed = train_cross_encoder(config("resumed"))
    assert resumed.details["steps"] == 4
    assert not any(entry.get("step") == 1 for entry in resumed.details["log_history"] if "loss" in entry)
    pairs = [("what is the capital of france", "paris is the capital"), ("cat", "dog")]
    np.testing.assert_allclose(resumed.model.predict(pairs), uninterrupted.model.predict(pairs), atol=1e-5)


def test_a_loss_stuck_at_a_constant_prediction_is_reported_as_not_learned(tiny_teacher_path, beir, tmp_path, caplog):
    config = _teacher_config(tiny_teacher_path, beir, tmp_path, "cross-encoder", max_steps=2, logging_steps=1)
    config.learning_rate = 0.0  # nothing moves: the fresh head's logits stay near 0, the constant prediction
    with caplog.at_level("WARNING"):
        result = train_cross_encoder(config)
    assert result.details["learned"] is False
    assert "did not learn" in caplog.text


def test_learning_is_judged_on_the_last_logged_losses_against_the_constant_prediction():
    assert loss_left_constant([1.1, 1.0, 0.5, 0.4, 0.3], constant=1.08) is True
    assert loss_left_constant([1.1, 0.5, 1.05, 1.1, 1.0], constant=1.08) is False  # back at the constant
    assert loss_left_constant([], constant=1.08) is True  # nothing logged: no evidence against
