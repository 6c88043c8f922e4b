import numpy as np
import pytest
import torch
from datasets import Dataset
from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

from asym_st.modeling.light_encoders import LightEncoderConfig, build_light_asymmetric_model
from asym_st.modeling.towers import tower_modules
from asym_st.training.collapse import (
    CollapseCallback,
    CollapseDetector,
    CollapseWarning,
    embedding_diagnostics,
    tower_diagnostics,
)
from tests.tiny_models import _WORDS

rng = np.random.default_rng(0)
TEXTS = [" ".join(rng.choice(_WORDS, size=6)) for _ in range(64)]


def test_a_constant_encoder_is_flagged():
    constant = np.tile(rng.normal(size=(1, 16)), (100, 1))
    diagnostics = embedding_diagnostics(constant)
    assert diagnostics.mean_pairwise_cosine == pytest.approx(1.0)
    assert diagnostics.total_variance == pytest.approx(0.0, abs=1e-12)
    assert diagnostics.dead_dimensions == 16
    assert diagnostics.effective_rank == pytest.approx(1.0)
    verdict = CollapseDetector().check(diagnostics)
    assert verdict.collapsed and len(verdict.reasons) == 2, verdict.reasons


def test_spread_embeddings_are_not_flagged():
    spread = rng.normal(size=(400, 16))
    diagnostics = embedding_diagnostics(spread)
    assert abs(diagnostics.mean_pairwise_cosine) < 0.05
    assert diagnostics.effective_rank > 12
    assert diagnostics.dead_dimensions == 0
    assert diagnostics.mean_dimension_variance == pytest.approx(1.0, abs=0.15)
    assert not CollapseDetector().check(diagnostics, reference=diagnostics).collapsed


def test_each_rule_catches_its_own_kind_of_collapse():
    # Texts spread along one line through the origin (both signs): the cosines average ~0, yet there is a single
    # effective dimension.
    direction = rng.normal(size=16)
    line = rng.uniform(-2.0, 2.0, size=(200, 1)) * direction
    rank_one = CollapseDetector().check(embedding_diagnostics(line))
    assert rank_one.collapsed and len(rank_one.reasons) == 1 and "effective rank" in rank_one.reasons[0]
    # Tiny jitter around one point: the cosine and variance rules catch it even though the rank looks high.
    healthy = embedding_diagnostics(rng.normal(size=(200, 16)))
    jitter = embedding_diagnostics(np.ones((200, 16)) + 1e-3 * rng.normal(size=(200, 16)))
    reasons = CollapseDetector().check(jitter, reference=healthy).reasons
    assert any("cosine" in r for r in reasons) and any("variance" in r for r in reasons)
    with pytest.raises(ValueError, match="NaN"):
        embedding_diagnostics(np.full((4, 2), np.nan))
    with pytest.raises(ValueError, match="n >= 2"):
        embedding_diagnostics(np.ones((1, 4)))


def _constant_query_tower(model) -> None:
    static = tower_modules(model, "query")[0]
    with torch.no_grad():
        static.embedding.weight.copy_(torch.ones_like(static.embedding.weight))


def test_tower_diagnostics_flag_a_constant_query_tower(tiny_teacher_path):
    model = build_light_asymmetric_model(tiny_teacher_path, LightEncoderConfig(kind="static"))
    healthy = tower_diagnostics(model, TEXTS, "query")
    assert not CollapseDetector().check(healthy).collapsed
    _constant_query_tower(model)
    collapsed = tower_diagnostics(model, TEXTS, "query")
    document = tower_diagnostics(model, TEXTS, "document")
    verdict = CollapseDetector().check(collapsed, reference=document)
    assert verdict.collapsed and collapsed.mean_pairwise_cosine > 0.999
    with pytest.raises(ValueError, match="route"):
        tower_diagnostics(model, TEXTS, "passage")


def _trainer(model, callback, tmp_path, max_steps=6):
    pairs = Dataset.from_dict({"query": TEXTS[:32], "positive": TEXTS[32:]})
    args = SentenceTransformerTrainingArguments(
        str(tmp_path / "ckpt"),
        max_steps=max_steps,
        per_device_train_batch_size=8,
        learning_rate=1e-9,  # the towers must stay as they are: the test is about detection
        report_to="none",
        save_strategy="no",
        router_mapping={"query": "query", "positive": "document"},
    )
    loss = MultipleNegativesRankingLoss(model)
    return SentenceTransformerTrainer(model, args, train_dataset=pairs, loss=loss, callbacks=[callback])


def test_callback_stops_training_when_the_query_tower_collapses(tiny_teacher_path, tmp_path):
    model = build_light_asymmetric_model(tiny_teacher_path, LightEncoderConfig(kind="static"))
    _constant_query_tower(model)
    # The tiny random teacher is itself very anisotropic; judge the query tower only by rank and variance.
    detector = CollapseDetector(max_mean_cosine=0.999)
    callback = CollapseCallback(TEXTS, check_steps=2, action="stop", detector=detector)
    trainer = _trainer(model, callback, tmp_path)
    with pytest.warns(CollapseWarning, match="query tower collapsed at step 0"):
        trainer.train()
    assert trainer.state.global_step < 6
    assert set(callback.collapsed) == {"query"}
    logged = [e for e in trainer.state.log_history if "collapse/query/effective_rank" in e]
    assert logged and logged[0]["collapse/query/collapsed"] is True
    assert logged[0]["collapse/document/collapsed"] is False


def test_callback_only_warns_and_keeps_going_on_a_healthy_model(tiny_teacher_path, tmp_path):
    model = build_light_asymmetric_model(tiny_teacher_path, LightEncoderConfig(kind="static"))
    callback = CollapseCallback(TEXTS, check_steps=2, action="stop", detector=CollapseDetector(max_mean_cosine=0.99))
    trainer = _trainer(model, callback, tmp_path)
    trainer.train()
    assert trainer.state.global_step == 6 and not callback.collapsed
    # at the start, every 2 steps, and at the end (step 6 once); the frozen document tower is measured once
    assert [e["step"] for e in callback.history] == [0, 2, 4, 6]
    with pytest.raises(ValueError, match="action"):
        CollapseCallback(TEXTS, action="explode")
