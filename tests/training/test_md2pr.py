import importlib
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from datasets import Dataset
from sentence_transformers import SentenceTransformer
from sentence_transformers.cross_encoder import CrossEncoder

from asym_st import build_asymmetric_model, fingerprint_modules, save_asymmetric_model, tower_modules
from asym_st.data.beir import load_beir
from asym_st.data.cache import EmbeddingCache
from asym_st.data.mining import MiningConfig, mine_from_dataset
from asym_st.sampling import DynamicFalseNegativeFilter, FalseNegativeFilterConfig
from asym_st.training import ConfigError, MD2PRConfig, md2pr
from asym_st.training.md2pr import FalseNegativeFilterCallback, build_rows, retriever_row_scores
from tests.conftest import LEAKED


@pytest.fixture(scope="module")
def labelled(beir, tmp_path_factory) -> Path:
    """The training BEIR folder plus a train query whose text is a test query (for the leakage guard)."""
    folder = tmp_path_factory.mktemp("labelled") / "beir"
    shutil.copytree(beir, folder)
    with (folder / "queries.jsonl").open("a") as queries:
        queries.write(json.dumps({"_id": "train_leak", "text": LEAKED.upper()}) + "\n")
    with (folder / "qrels" / "train.tsv").open("a") as qrels:
        qrels.write("train_leak\td5\t1\n")
    return folder


@pytest.fixture(scope="module")
def qed_student(tiny_teacher_path, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("qed") / "student"
    save_asymmetric_model(build_asymmetric_model(tiny_teacher_path), folder)
    return folder


@pytest.fixture(scope="module")
def untrained_cross_encoder(tiny_teacher_path, tmp_path_factory) -> Path:
    """A cross-encoder folder (the tiny encoder + a random one-logit head): the ``cross_encoder: PATH`` case."""
    folder = tmp_path_factory.mktemp("cross_encoder") / "model"
    CrossEncoder(str(tiny_teacher_path.parent / "hf"), num_labels=1).save_pretrained(str(folder))
    return folder


def _config(tmp_path, teacher, data, **overrides) -> MD2PRConfig:
    values = dict(
        teacher=str(teacher),
        train_dataset=f"{data}:train",
        eval_datasets=[f"{data}:test"],
        cross_encoder_base=str(teacher),  # the tiny teacher's encoder + a fresh head
        cross_encoder_output_dir=str(tmp_path / "cross-encoder"),
        cross_encoder_max_steps=2,
        cross_encoder_batch_size=8,
        cross_encoder_max_length=48,
        num_candidates=5,
        num_negatives=3,
        passage_max_length=16,
        output_dir=str(tmp_path / "student"),
        cache_dir=str(tmp_path / "cache"),
        max_steps=4,
        per_device_train_batch_size=4,
        learning_rate=3e-4,
        warmup_ratio=0.0,
        save_steps=100,
        logging_steps=1,
        measure_latency=False,
        teacher_batch_size=16,
        allow_weaker_teacher=True,  # a 2-step cross-encoder on random weights: plumbing, not a useful teacher
    )
    return MD2PRConfig(**{**values, **overrides})


def _logged(result, key) -> list[float]:
    return [entry[key] for entry in result.log_history if key in entry]


def test_full_md2pr_run_then_an_ablation_reusing_the_teacher(tiny_teacher_path, labelled, qed_student, tmp_path):
    config = _config(
        tmp_path,
        tiny_teacher_path,
        labelled,
        init_from=str(qed_student),
        fn_schedule="step",
        fn_quantile=1.0,
        fn_final_quantile=0.0,
    )
    result = md2pr(config)

    assert LEAKED.upper() not in result.training_queries.texts and len(result.training_queries) == 24
    assert _logged(result, "sentence_kl") and _logged(result, "word_kl") and _logged(result, "fn_seen")
    facts = result.details
    assert facts["trained"] is True and facts["rows"] == 24 and facts["num_negatives"] == 3
    assert facts["word_level"] is True and facts["attention_pairs"] == facts["distinct_pairs"] == 24 * 4
    assert facts["loss"]["class"] == "TokenInteractionLoss" and facts["loss"]["frozen_documents"] is True
    assert facts["loss"]["sentence_loss"]["false_negative_filter"] is True
    signal = facts["teacher_signal"]  # the teacher's ranking of the rows vs the retriever's, recorded
    assert signal["rows"] == 24 and signal["candidates"] == 4 and 0 <= signal["teacher_top1"] <= 1
    # the threshold schedule ran once a step: quantile 1.0 -> 0.0 of the positives' scores over the 4 steps
    fn = facts["false_negative_filter"]
    assert [p["quantile"] for p in fn["periods"]] == pytest.approx([1.0, 2 / 3, 1 / 3, 0.0])
    assert [p["seen"] for p in fn["periods"]] == [12, 12, 12, 12]  # 4 rows × 3 negatives a step
    assert fn["dropped_negatives"] == sum(p["dropped"] for p in fn["periods"])
    assert _logged(result, "fn_dropped")[-1] == fn["dropped_negatives"]
    thresholds = [p["threshold"] for p in fn["periods"]]
    assert thresholds == sorted(thresholds, reverse=True)

    saved = SentenceTransformer(str(tmp_path / "student"))  # a plain sentence-transformers load
    teacher = SentenceTransformer(str(tiny_teacher_path))
    assert fingerprint_modules(tower_modules(saved, "document")) == fingerprint_modules(teacher)  # index valid
    start = SentenceTransformer(str(qed_student))
    assert fingerprint_modules(tower_modules(saved, "query")) != fingerprint_modules(tower_modules(start, "query"))
    record = json.loads((tmp_path / "student" / "training_config.json").read_text())
    assert record["method"] == "MD2PR" and record["config"]["word_weight"] == 1.0
    assert json.loads((tmp_path / "student" / "eval" / "retention.json").read_text())["rows"][0]["num_queries"] == 4
    assert (tmp_path / "cross-encoder" / "teacher_training.json").is_file()

    # Sentence level only: the same teacher (reused, not retrained), cached scores, no word term, no filter.
    ablation = md2pr(
        _config(
            tmp_path,
            tiny_teacher_path,
            labelled,
            init_from=str(qed_student),
            word_weight=0.0,
            false_negative_filter=False,
            overwrite_output_dir=True,
            seed=7,  # another seed of the ablation: the same teacher serves it
        ),
        evaluate=False,
    )
    assert ablation.details["trained"] is False and ablation.details["cross_encoder"] == str(tmp_path / "cross-encoder")
    assert ablation.details["loss"]["class"] == "MD2PRSentenceLoss" and ablation.details["attention_pairs"] == 0
    assert _logged(ablation, "sentence_kl") and not _logged(ablation, "word_kl") and not _logged(ablation, "fn_seen")
    assert ablation.details["teacher_positive_score_mean"] == pytest.approx(facts["teacher_positive_score_mean"])

    # The saved teacher was trained at another learning rate: refused, not silently reused (nor overwritten).
    other = _config(
        tmp_path,
        tiny_teacher_path,
        labelled,
        init_from=str(qed_student),
        cross_encoder_learning_rate=1e-3,
        overwrite_output_dir=True,
    )
    with pytest.raises(
        ConfigError, match=r"other settings \(cross_encoder_learning_rate: trained with 2e-05, asked 0\.001\)"
    ):
        md2pr(other)


def test_both_towers_train_and_the_teacher_stays(tiny_teacher_path, labelled, untrained_cross_encoder, tmp_path):
    config = _config(
        tmp_path, tiny_teacher_path, labelled, towers="both", max_steps=2, cross_encoder=str(untrained_cross_encoder)
    )
    result = md2pr(config, evaluate=False)
    teacher = SentenceTransformer(str(tiny_teacher_path))
    assert result.details["loss"]["frozen_documents"] is False
    assert result.details["trained"] is False and result.details["cross_encoder"] == str(untrained_cross_encoder)
    assert not (tmp_path / "cross-encoder").exists()
    assert fingerprint_modules(tower_modules(result.model, "document")) != fingerprint_modules(teacher)
    record = json.loads((tmp_path / "student" / "asym_st_config.json").read_text())
    assert record["document_tower_frozen"] is False and record["method"] == "MD2PR"


def test_rows_sample_negatives_from_the_candidates():
    candidates = Dataset.from_dict(
        {
            "query_id": ["q1", "q2", "q3"],
            "positive_ids": [["a", "b"], ["c"], []],
            "candidate_ids": [["n1", "n2", "n3", "n4"], ["n5"], ["n6"]],
        }
    )
    rows = build_rows(candidates, num_negatives=2, max_positives_per_query=None, seed=0)
    assert rows.query_ids == ["q1", "q1", "q2"] and rows.skipped_no_positive == ["q3"]
    pairs = rows.pairs
    assert [pairs[i] for i in rows.columns[:, 0]] == [("q1", "a"), ("q1", "b"), ("q2", "c")]
    assert rows.columns[0, 1:].tolist() == rows.columns[1, 1:].tolist()  # a query's rows share its negatives
    assert {pairs[i][1] for i in rows.columns[0, 1:]} <= {"n1", "n2", "n3", "n4"}
    assert rows.columns[2, 2] == -1 and pairs[rows.columns[2, 1]] == ("q2", "n5")  # an empty slot
    assert len(pairs) == len(set(pairs)) == 6
    assert build_rows(candidates, 2, max_positives_per_query=1).query_ids == ["q1", "q2"]


def test_the_callback_recomputes_the_threshold_per_epoch_and_logs_counts():
    keep = DynamicFalseNegativeFilter(FalseNegativeFilterConfig(quantile=1.0, final_quantile=0.0), [0.0, 10.0])
    callback = FalseNegativeFilterCallback(keep)
    state = SimpleNamespace(max_steps=10, num_train_epochs=3, epoch=0.0, global_step=0, log_history=[])
    callback.on_train_begin(None, state, None)
    thresholds = []
    for epoch in range(3):
        state.epoch = float(epoch)
        callback.on_epoch_begin(None, state, None)
        callback.on_step_begin(None, state, None)  # the epoch schedule ignores steps
        thresholds.append(keep.threshold)
    assert thresholds == pytest.approx([10.0, 5.0, 0.0])
    keep.keep_mask(np.array([1.0]), np.array([[1.0, -1.0]]))
    state.global_step = 7
    state.log_history.append({"loss": 0.5, "step": 7})
    logs = {"loss": 0.5}
    callback.on_log(None, state, None, logs=logs)
    assert logs["fn_dropped"] == 1 and logs["fn_seen"] == 2 and logs["fn_threshold"] == 0.0
    assert state.log_history[-1]["fn_dropped"] == 1


def test_config_errors_name_the_field(tiny_teacher_path, labelled, tmp_path):
    with pytest.raises(ConfigError, match="train_queries is not used"):
        _config(tmp_path, tiny_teacher_path, labelled, train_queries=["x.tsv"]).require_sources()
    with pytest.raises(ConfigError, match="train_dataset is empty"):
        _config(tmp_path, tiny_teacher_path, labelled, train_dataset=None).require_sources()
    with pytest.raises(ConfigError, match="teacher_train_dataset .*nope does not exist"):
        _config(tmp_path, tiny_teacher_path, labelled, teacher_train_dataset=f"{tmp_path}/nope:train").require_sources()
    with pytest.raises(ConfigError, match="cross_encoder ./missing: no such model folder"):
        _config(tmp_path, tiny_teacher_path, labelled, cross_encoder="./missing").require_sources()
    with pytest.raises(ConfigError, match="towers='all'"):
        _config(tmp_path, tiny_teacher_path, labelled, towers="all")
    with pytest.raises(ConfigError, match="both 0: nothing to train"):
        _config(tmp_path, tiny_teacher_path, labelled, sentence_weight=0.0, word_weight=0.0)
    with pytest.raises(ConfigError, match="num_negatives \\(6\\) exceeds num_candidates \\(5\\)"):
        _config(tmp_path, tiny_teacher_path, labelled, num_negatives=6)
    with pytest.raises(ConfigError, match="fn_schedule='batch'"):
        _config(tmp_path, tiny_teacher_path, labelled, fn_schedule="batch")
    with pytest.raises(ConfigError, match=r"fn_quantile must be in \[0, 1\]"):
        _config(tmp_path, tiny_teacher_path, labelled, fn_quantile=2.0)
    with pytest.raises(ConfigError, match="teacher_temperature must be positive"):
        _config(tmp_path, tiny_teacher_path, labelled, teacher_temperature=0.0)


def test_md2pr_refuses_an_inverted_teacher_before_training(
    tiny_teacher_path, labelled, untrained_cross_encoder, tmp_path, monkeypatch
):
    def inverted(rows, scorer, train, config):  # positives scored lowest: a teacher worse than any retriever
        scores = np.full(len(rows.pairs), 5.0, dtype=np.float32)
        scores[rows.columns[:, 0]] = -5.0
        return scores

    # the package re-exports the md2pr function under the module's name: fetch the module itself
    monkeypatch.setattr(importlib.import_module("asym_st.training.md2pr"), "_teacher_scores", inverted)
    config = _config(
        tmp_path, tiny_teacher_path, labelled, cross_encoder=str(untrained_cross_encoder), allow_weaker_teacher=False
    )
    with pytest.raises(ConfigError, match=r"first in 0\.0% of 24 training rows"):
        md2pr(config)
    assert not (tmp_path / "student").exists()


def test_retriever_row_scores_are_the_scores_mining_ranked_by(tiny_teacher_path, labelled, tmp_path):
    retriever = SentenceTransformer(str(tiny_teacher_path))
    train = load_beir(labelled, split="train")
    cache = EmbeddingCache(tmp_path / "cache")
    candidates = mine_from_dataset(retriever, train, MiningConfig(top_k=5, include_texts=False), cache=cache)
    rows = build_rows(candidates, num_negatives=3, seed=0)
    scores = retriever_row_scores(rows, retriever, train, cache)  # from the cached embeddings, no re-encoding
    mined = {
        (row["query_id"], doc_id): score
        for row in candidates
        for doc_id, score in zip(row["candidate_ids"], row["candidate_scores"], strict=True)
    }
    negatives = [(r, c) for r in range(len(rows.query_ids)) for c in range(1, 4) if rows.columns[r, c] >= 0]
    assert negatives
    for r, c in negatives:
        assert scores[r, c] == pytest.approx(mined[rows.pairs[rows.columns[r, c]]], abs=1e-5)
    assert np.isfinite(scores[:, 0]).all()  # positives are scored too (mining leaves them out of the candidates)
