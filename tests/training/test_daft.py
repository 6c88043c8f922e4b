import json
import random
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from sentence_transformers import SentenceTransformer
from transformers import TrainerCallback

from asym_st import IncompatibleTowersError, fingerprint_modules, tower_modules
from asym_st.modeling.light_encoders import LightEncoderConfig, build_light_asymmetric_model
from asym_st.training.collapse import CollapseWarning
from asym_st.training.daft import (
    _reusable_stage1,
    align_stage,
    build_daft_model,
    load_stage1_checkpoint,
    prepare_daft_data,
    train_daft,
)
from asym_st.training.daft_config import DAFTConfig
from asym_st.training.qed_config import ConfigError
from tests.evaluation.conftest import write_beir
from tests.tiny_models import _WORDS

PROBE = ["what is the capital of france", "covid vaccine study", "the query tower and the document tower"]


@pytest.fixture(scope="module")
def tiny_collection(tmp_path_factory) -> Path:
    """60 documents, 48 queries (36 train, 12 test), one relevant document each: enough for both stages."""
    rng = random.Random(0)
    documents = {f"d{i}": ("", " ".join(rng.sample(_WORDS, 8))) for i in range(60)}
    queries = {f"q{i}": " ".join(rng.sample(documents[f"d{i}"][1].split(), 3)) for i in range(48)}
    folder = tmp_path_factory.mktemp("daft") / "beir"
    write_beir(folder, [(f"q{i}", f"d{i}", 1) for i in range(36)], "train", documents, queries)
    write_beir(folder, [(f"q{i}", f"d{i}", 1) for i in range(36, 48)], "test", documents, queries)
    return folder


def _config(root: Path, collection: Path, teacher: Path, **overrides) -> DAFTConfig:
    values = dict(
        teacher=str(teacher),
        train_dataset=f"{collection}:train",
        eval_datasets=[f"{collection}:test"],
        dev_holdout_queries=8,
        heldout_texts=40,
        output_dir=str(root / "model"),
        cache_dir=str(root / "cache"),
        align_max_steps=8,
        align_eval_steps=4,
        align_batch_size=16,
        finetune_max_steps=8,
        finetune_eval_steps=4,
        finetune_batch_size=8,
        logging_steps=2,
        measure_latency=False,
        teacher_batch_size=16,
    )
    values.update(overrides)
    return DAFTConfig(**values)


@pytest.fixture(scope="module")
def daft_runs(tmp_path_factory, tiny_collection, tiny_teacher_path):
    """Both stages in one run, then stage 2 alone from the stage-1 folder that the first run wrote."""
    root = tmp_path_factory.mktemp("daft_runs")
    together_config = _config(root / "together", tiny_collection, tiny_teacher_path)
    together = train_daft(together_config)
    handover_config = _config(
        root / "handover",
        tiny_collection,
        tiny_teacher_path,
        stages=["finetune"],
        stage1_checkpoint=together_config.resolved_stage1_dir,
    )
    handover = train_daft(handover_config, evaluate=False)
    return together_config, together, handover_config, handover


def test_stage1_lowers_the_divergence_and_keeps_the_best_checkpoint(daft_runs, tiny_teacher_path):
    config, result, _, _ = daft_runs
    align = result.stages["align"]
    assert align.divergence_after["kl_divergence"] < align.divergence_before["kl_divergence"] - 1
    logged = [e["eval_align_kl_divergence"] for e in align.log_history if "eval_align_kl_divergence" in e]
    assert len(logged) == 2 and align.best_metric == pytest.approx(min(logged))
    # the model after stage 1 is the best checkpoint: re-estimating gives the best logged value
    assert align.divergence_after["kl_divergence"] == pytest.approx(min(logged), rel=1e-4)
    stage1 = Path(config.resolved_stage1_dir)
    record = json.loads((stage1 / "training_config.json").read_text())
    assert record["method"] == "DAFT stage 1 (alignment)" and record["stages"]["align"]["steps"] == 8
    teacher = SentenceTransformer(str(tiny_teacher_path))
    saved = SentenceTransformer(str(stage1))
    assert fingerprint_modules(tower_modules(saved, "document")) == fingerprint_modules(teacher)


def test_final_model_is_saved_with_stages_diagnostics_and_evaluation(daft_runs, tiny_teacher_path):
    config, result, _, _ = daft_runs
    folder = Path(config.output_dir)
    loaded = SentenceTransformer(str(folder))
    np.testing.assert_allclose(loaded.encode_query(PROBE), result.model.encode_query(PROBE), atol=1e-5)
    teacher = SentenceTransformer(str(tiny_teacher_path))
    assert fingerprint_modules(tower_modules(loaded, "document")) == fingerprint_modules(teacher)
    record = json.loads((folder / "training_config.json").read_text())
    assert record["method"] == "DAFT" and set(record["stages"]) == {"align", "finetune"}
    finetune = record["stages"]["finetune"]
    assert finetune["metric"] == "eval_dev_ndcg_at_10" and finetune["best_metric"] is not None
    assert finetune["collapse_history"][0]["step"] == 0 and finetune["collapsed"] == {}
    diagnostics = record["diagnostics"]
    assert diagnostics["query_collapsed"] == [] and diagnostics["query"]["effective_rank"] > 2
    assert record["light_encoder"]["kind"] == "static"
    retention = json.loads((folder / "eval" / "retention.json").read_text())
    assert retention["rows"][0]["num_queries"] == 12
    assert json.loads((folder / "asym_st_config.json").read_text())["method"] == "DAFT"


def test_stage2_from_the_stage1_folder_matches_the_single_run(daft_runs):
    _, together, handover_config, handover = daft_runs
    assert set(handover.stages) == {"finetune"}
    # stage 2 starts exactly where stage 1 ended (same held-out split and estimator)
    assert handover.stages["finetune"].divergence_before["kl_divergence"] == pytest.approx(
        together.stages["align"].divergence_after["kl_divergence"], rel=1e-5
    )
    # and, with the same seed, ends where the single run ended
    np.testing.assert_allclose(
        handover.model.encode_query(PROBE), together.model.encode_query(PROBE), atol=1e-4, rtol=1e-3
    )
    record = json.loads((Path(handover_config.output_dir) / "training_config.json").read_text())
    assert record["method"] == "DAFT" and record["config"]["stage1_checkpoint"].endswith("model.stage1")


def test_plain_contrastive_baseline_needs_allow_unaligned(tmp_path, tiny_collection, tiny_teacher_path):
    with pytest.raises(ConfigError, match="allow_unaligned: true"):
        _config(tmp_path, tiny_collection, tiny_teacher_path, stages=["finetune"]).require_sources()
    config = _config(
        tmp_path, tiny_collection, tiny_teacher_path, stages=["finetune"], allow_unaligned=True, finetune_max_steps=4
    )
    result = train_daft(config, evaluate=False)
    assert set(result.stages) == {"finetune"} and result.stages["finetune"].steps == 4
    record = json.loads((tmp_path / "model" / "training_config.json").read_text())
    assert record["method"] == "contrastive fine-tuning (no alignment)"


def test_missing_or_foreign_stage1_checkpoint_is_a_clear_error(daft_runs, tmp_path, tiny_collection, tiny_teacher_path):
    missing = _config(tmp_path, tiny_collection, tiny_teacher_path, stages=["finetune"], stage1_checkpoint="nope/s1")
    with pytest.raises(ConfigError, match=r"stage1_checkpoint nope/s1 does not exist\. Run stage 1 first"):
        missing.require_sources()
    (tmp_path / "empty").mkdir()
    not_a_model = replace(missing, stage1_checkpoint=str(tmp_path / "empty"))
    with pytest.raises(ConfigError, match="is not a saved model"):
        not_a_model.require_sources()
    with pytest.raises(ConfigError, match="does not exist or is not a saved model"):
        load_stage1_checkpoint(tmp_path / "empty", SentenceTransformer(str(tiny_teacher_path)))
    config, _, _, _ = daft_runs
    other_teacher = build_light_asymmetric_model(tiny_teacher_path, LightEncoderConfig(kind="static", seed=5))
    other_teacher = SentenceTransformer(modules=tower_modules(other_teacher, "query"))
    with pytest.raises(ConfigError, match="aligned to another document tower"):
        load_stage1_checkpoint(config.resolved_stage1_dir, other_teacher)


def test_paper_contrastive_alignment_trains_only_the_query_tower(tmp_path, tiny_collection, tiny_teacher_path):
    config = _config(tmp_path, tiny_collection, tiny_teacher_path, align_loss="contrastive", align_max_steps=4)
    teacher = SentenceTransformer(str(tiny_teacher_path))
    data = prepare_daft_data(config, teacher)
    model = build_daft_model(config, teacher)
    before = fingerprint_modules(tower_modules(model, "query"))
    report = align_stage(model, data, config)
    assert report.steps == 4 and report.metric == "eval_align_kl_divergence"
    # the checkpoints moved the query tower only (the model itself may have kept its start: see kept_initial)
    checkpoint = SentenceTransformer(report.best_checkpoint)
    assert fingerprint_modules(tower_modules(checkpoint, "query")) != before
    assert fingerprint_modules(tower_modules(checkpoint, "document")) == fingerprint_modules(teacher)
    assert fingerprint_modules(tower_modules(model, "document")) == fingerprint_modules(teacher)
    assert report.kept_initial == (fingerprint_modules(tower_modules(model, "query")) == before)
    # data: dev queries held out of training, held-out texts never trained on
    assert len(data.dev.queries) == 8 and len(data.training_queries) == 28 and len(data.pairs) == 28
    assert not set(data.heldout_texts) & set(data.align_texts)


class _Sabotage(TrainerCallback):
    """Collapses the static query tower after every step: every checkpoint is worse than the start."""

    def on_step_end(self, args, state, control, model=None, **kwargs):
        with torch.no_grad():
            tower_modules(model, "query")[0].embedding.weight.fill_(1.0)


def test_a_stage_that_only_hurts_ends_where_it_started(tmp_path, tiny_collection, tiny_teacher_path):
    config = _config(tmp_path, tiny_collection, tiny_teacher_path, align_max_steps=4)
    teacher = SentenceTransformer(str(tiny_teacher_path))
    data = prepare_daft_data(config, teacher)
    model = build_daft_model(config, teacher)
    start = fingerprint_modules(tower_modules(model, "query"))
    with pytest.warns(CollapseWarning, match="query tower collapsed at step 4"):
        report = align_stage(model, data, config, callbacks=[_Sabotage()])
    assert report.kept_initial and report.best_metric > report.initial_metric
    assert fingerprint_modules(tower_modules(model, "query")) == start
    assert report.divergence_after["kl_divergence"] == pytest.approx(report.divergence_before["kl_divergence"])
    assert set(report.collapsed) == {"query"}


def test_width_mismatch_in_a_config_explains_the_projection(tmp_path, tiny_collection, tiny_teacher_path):
    config = _config(tmp_path, tiny_collection, tiny_teacher_path, query_embedding_dim=8)
    with pytest.raises(IncompatibleTowersError, match="query_dense: true"):
        build_daft_model(config, SentenceTransformer(str(tiny_teacher_path)))


def test_config_errors_name_the_field(tmp_path, tiny_collection, tiny_teacher_path):
    with pytest.raises(ConfigError, match="align_loss='kl'"):
        DAFTConfig(align_loss="kl")
    with pytest.raises(ConfigError, match="stage 1 \\(align\\) runs before stage 2"):
        DAFTConfig(stages=["finetune", "align"])
    with pytest.raises(ConfigError, match="stages="):
        DAFTConfig(stages=["distill"])
    with pytest.raises(ConfigError, match="query encoder: LightEncoderConfig.kind='lstm'"):
        DAFTConfig(query_encoder="lstm")
    with pytest.raises(ConfigError, match="train_dataset is empty"):
        DAFTConfig().require_sources()
    (tmp_path / "bad.yaml").write_text("teacher: x\nfinetune_tower: both\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown field\(s\) \['finetune_tower'\]"):
        DAFTConfig.from_yaml(tmp_path / "bad.yaml")
    stage1 = tmp_path / "model.stage1"
    stage1.mkdir()
    config = _config(tmp_path, tiny_collection, tiny_teacher_path, resume_from_checkpoint="auto")
    assert not _reusable_stage1(config)
    (stage1 / "training_config.json").write_text(json.dumps({"config": config.to_dict()}))
    assert _reusable_stage1(config)
    (stage1 / "training_config.json").write_text(json.dumps({"config": {**config.to_dict(), "align_loss": "cosine"}}))
    with pytest.raises(ConfigError, match=r"finished stage 1 made with other settings \(align_loss differ\)"):
        _reusable_stage1(config)
    assert not _reusable_stage1(replace(config, resume_from_checkpoint=None))
    assert config.stage_settings("align").learning_rate == 0.05  # static default
    assert config.stage_settings("finetune").resolved_checkpoint_dir.endswith("model.checkpoints/finetune")
