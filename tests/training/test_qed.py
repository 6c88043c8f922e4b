import json

import numpy as np
import pytest
import torch
from datasets import Dataset
from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments
from transformers import TrainerCallback

from asym_st import build_asymmetric_model, extract_tower, fingerprint_modules, tower_modules
from asym_st.losses.embedding_alignment import EmbeddingAlignmentLoss, RouteMappingError
from asym_st.training import ConfigError, QEDConfig, distill_query_tower
from tests.training.tiny_qed import QUERIES, tiny_qed_config

_config = tiny_qed_config


def _query_tower_state(model):
    return {k: v.clone() for m in tower_modules(model, "query") for k, v in m.state_dict().items()}


def test_qed_trains_only_the_query_tower_and_saves(tiny_teacher_path, tmp_path):
    teacher = SentenceTransformer(str(tiny_teacher_path))
    config = _config(tmp_path, tiny_teacher_path)
    result = distill_query_tower(config, evaluate=False)
    model = result.model
    losses = [e["loss"] for e in result.log_history if "loss" in e]
    assert len(losses) >= 3 and losses[-1] < losses[0], losses
    # the document tower is still exactly the teacher: an existing index stays valid
    assert fingerprint_modules(tower_modules(model, "document")) == fingerprint_modules(teacher)
    untrained = build_asymmetric_model(tiny_teacher_path)
    assert fingerprint_modules(tower_modules(model, "query")) != fingerprint_modules(tower_modules(untrained, "query"))
    # the student moved towards the teacher's query embeddings
    targets = teacher.encode_query(QUERIES)
    before = np.mean((untrained.encode_query(QUERIES) - targets) ** 2)
    after = np.mean((model.encode_query(QUERIES) - targets) ** 2)
    assert after < before
    saved = SentenceTransformer(str(tmp_path / "student"))
    np.testing.assert_allclose(saved.encode_query(QUERIES[:4]), model.encode_query(QUERIES[:4]), atol=1e-5)
    record = json.loads((tmp_path / "student" / "training_config.json").read_text())
    assert record["method"] == "QED" and record["training_queries"]["count"] == len(set(QUERIES))
    assert record["config"]["learning_rate"] == 3e-4


class _Crash(TrainerCallback):
    def __init__(self, at_step):
        self.at_step = at_step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.at_step:
            raise KeyboardInterrupt("simulated kill")


def test_interrupted_run_resumes_to_the_same_model(tiny_teacher_path, tmp_path):
    straight = distill_query_tower(_config(tmp_path / "a", tiny_teacher_path), evaluate=False).model
    crashed_config = _config(tmp_path / "b", tiny_teacher_path, resume_from_checkpoint="auto")
    with pytest.raises(KeyboardInterrupt):
        distill_query_tower(crashed_config, callbacks=[_Crash(at_step=6)], evaluate=False)
    assert (tmp_path / "b" / "student.checkpoints" / "checkpoint-4").is_dir()
    assert not (tmp_path / "b" / "student").exists(), "no model folder until the run completes"
    resumed = distill_query_tower(crashed_config, evaluate=False).model
    expected, actual = _query_tower_state(straight), _query_tower_state(resumed)
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], atol=1e-5, rtol=1e-4, msg=name)


def test_queries_routed_to_the_frozen_document_tower_are_caught(tiny_teacher_path, tmp_path):
    model = build_asymmetric_model(tiny_teacher_path)
    teacher = extract_tower(model, "document")
    data = Dataset.from_dict({"query": QUERIES[:8], "label": teacher.encode_query(QUERIES[:8]).tolist()})
    args = SentenceTransformerTrainingArguments(
        str(tmp_path / "ckpt"), max_steps=1, report_to="none", router_mapping={"query": "document"}
    )
    trainer = SentenceTransformerTrainer(model, args, train_dataset=data, loss=EmbeddingAlignmentLoss(model))
    with pytest.raises(RouteMappingError, match="route 'document'.*router_mapping"):
        trainer.train()


def test_teacher_width_mismatch_is_named(tiny_teacher_path):
    model = build_asymmetric_model(tiny_teacher_path)
    loss = EmbeddingAlignmentLoss(model)
    features = model.preprocess(QUERIES[:2], task="query")
    with pytest.raises(ValueError, match="Teacher embeddings are 48-dimensional but the student produces 32"):
        loss([features], torch.zeros(2, 48))


def test_config_errors_name_the_field(tiny_teacher_path, tmp_path):
    with pytest.raises(ConfigError, match="distance"):
        QEDConfig(distance="manhattan")
    with pytest.raises(ConfigError, match="learning_rate"):
        QEDConfig(learning_rate=0)
    with pytest.raises(ConfigError, match="train_queries is empty"):
        QEDConfig(teacher=str(tiny_teacher_path)).require_sources()
    (tmp_path / "bad.yaml").write_text("teacher: x\nlearning_rat: 1\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown field\(s\) \['learning_rat'\]"):
        QEDConfig.from_yaml(tmp_path / "bad.yaml")
    config = _config(tmp_path, tiny_teacher_path, eval_datasets=[str(tmp_path / "nope")])
    with pytest.raises(ConfigError, match="does not exist"):
        config.require_sources()
