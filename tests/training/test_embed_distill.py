import json
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
from sentence_transformers import SentenceTransformer

from asym_st import build_asymmetric_model, fingerprint_modules, tower_modules
from asym_st.training import ConfigError, EmbedDistillConfig, embed_distill
from asym_st.training.config_io import parse_recipe_args
from asym_st.training.embed_distill import select_candidates
from tests.conftest import LEAKED
from tests.tiny_seq2seq import make_tiny_t5

REPO = Path(__file__).resolve().parents[2]


def _config(tmp_path, teacher, beir, **overrides) -> EmbedDistillConfig:
    values = dict(
        teacher=str(teacher),
        train_queries=[f"{beir}:train"],
        candidate_corpora=[str(beir)],
        num_candidates=3,
        random_candidates=1,
        eval_datasets=[f"{beir}:test"],
        output_dir=str(tmp_path / "student"),
        cache_dir=str(tmp_path / "cache"),
        max_steps=6,
        per_device_train_batch_size=8,
        learning_rate=3e-4,
        warmup_ratio=0.0,
        save_steps=100,
        logging_steps=2,
        measure_latency=False,
        teacher_batch_size=16,
    )
    return EmbedDistillConfig(**{**values, **overrides})


def _logged(result, key) -> list[float]:
    return [entry[key] for entry in result.log_history if key in entry]


def test_embed_distill_with_score_matching_and_generated_queries(tiny_teacher_path, beir, tmp_path):
    config = _config(tmp_path, tiny_teacher_path, beir, generate_queries_from=[str(beir)], queries_per_passage=2)
    result = embed_distill(config)
    model = result.model

    # real + generated queries, the test query found verbatim in a passage excluded by the leakage guard
    texts = set(result.training_queries.texts)
    assert LEAKED not in texts and "evaluation queries excluded" in result.training_queries.report()
    assert sum(query_id.split(":", 1)[0] == "1" for query_id in result.training_queries.ids) > 30  # generated
    # both terms trained and logged; the student moved towards the teacher's query embeddings
    assert _logged(result, "query_embedding") and _logged(result, "score")
    teacher = SentenceTransformer(str(tiny_teacher_path))
    queries = sorted(texts)[:32]
    untrained = build_asymmetric_model(tiny_teacher_path)
    target = teacher.encode_query(queries)
    before = np.linalg.norm(untrained.encode_query(queries) - target, axis=1).mean()
    after = np.linalg.norm(model.encode_query(queries) - target, axis=1).mean()
    assert after < before
    # the document tower is still the teacher: the index stays valid
    assert fingerprint_modules(tower_modules(model, "document")) == fingerprint_modules(teacher)

    record = json.loads((tmp_path / "student" / "training_config.json").read_text())
    assert record["method"] == "EmbedDistill"
    assert record["loss"]["score_loss"] == "kl" and record["loss"]["distance_metric"] == "l2"
    assert record["candidates_per_query"] == 4 and record["candidate_pool_size"] == 30
    assert "SpanQueryGenerator" in record["generated_queries"][0]
    retention = json.loads((tmp_path / "student" / "eval" / "retention.json").read_text())
    assert retention["rows"][0]["num_queries"] == 4
    assert json.loads((tmp_path / "student" / "asym_st_config.json").read_text())["method"] == "EmbedDistill"


def test_generated_queries_alone_from_a_seq2seq_generator(tiny_teacher_path, beir, tmp_path):
    generator = make_tiny_t5(tmp_path / "t5")
    config = _config(
        tmp_path,
        tiny_teacher_path,
        beir,
        train_queries=[],
        generate_queries_from=[str(beir)],
        query_generator=str(generator),
        queries_per_passage=2,
        score_weight=0.0,
        distance="mse",
        max_steps=4,
    )
    result = embed_distill(config, evaluate=False)
    assert len(result.training_queries) > 10
    assert all("#gen" in query_id for query_id in result.training_queries.ids)
    assert _logged(result, "query_embedding") and not _logged(result, "score")
    assert list((tmp_path / "cache" / "generated_queries").glob("*/chunk-*.json")), "generated queries are cached"


def test_trained_document_tower_and_smaller_query_encoder(tiny_teacher_path, tiny_wide_path, beir, tmp_path):
    config = _config(
        tmp_path,
        tiny_teacher_path,
        beir,
        query_encoder=str(tiny_wide_path),  # 48 wide: a Dense projection to the teacher's 32 is added
        train_document_tower=True,
        document_weight=1.0,
        score_loss="margin_mse",
        max_steps=4,
    )
    result = embed_distill(config, evaluate=False)
    model = result.model
    teacher = SentenceTransformer(str(tiny_teacher_path))
    assert fingerprint_modules(tower_modules(model, "document")) != fingerprint_modules(teacher)
    assert _logged(result, "document_embedding") and _logged(result, "score")
    assert "Dense" in [type(module).__name__ for module in tower_modules(model, "query")]
    saved = SentenceTransformer(str(tmp_path / "student"))
    assert saved.encode_query(["capital of france"]).shape == (1, 32)
    assert json.loads((tmp_path / "student" / "asym_st_config.json").read_text())["document_tower_frozen"] is False


def test_select_candidates_top_then_random():
    documents = np.eye(6, dtype=np.float32)
    queries = np.array([[0.9, 0.5, 0, 0, 0, 0], [0, 0, 0, 0, 0.2, 1.0]], dtype=np.float32)
    chosen = select_candidates(queries, documents, top_k=2, random_k=3, similarity="dot", seed=1)
    assert chosen.shape == (2, 5)
    assert chosen[:, :2].tolist() == [[0, 1], [5, 4]]
    assert ((chosen[:, 2:] >= 0) & (chosen[:, 2:] < 6)).all()


def test_config_errors_name_the_field(tiny_teacher_path, beir, tmp_path):
    with pytest.raises(ConfigError, match="document_weight > 0 needs train_document_tower"):
        EmbedDistillConfig(document_weight=1.0)
    with pytest.raises(ConfigError, match="score_loss='hinge'"):
        EmbedDistillConfig(score_loss="hinge")
    with pytest.raises(ConfigError, match="num_candidates \\+ random_candidates >= 2"):
        EmbedDistillConfig(num_candidates=1, random_candidates=0)
    with pytest.raises(ConfigError, match="need candidate_corpora"):
        _config(tmp_path, tiny_teacher_path, beir, candidate_corpora=[]).require_sources()
    with pytest.raises(ConfigError, match="No training queries"):
        _config(tmp_path, tiny_teacher_path, beir, train_queries=[]).require_sources()
    with pytest.raises(ConfigError, match="generate_queries_from: .*nope does not exist"):
        _config(tmp_path, tiny_teacher_path, beir, generate_queries_from=[str(tmp_path / "nope")]).require_sources()


@pytest.mark.parametrize("name", ["embed_distill_minilm", "embed_distill_scifact"])
def test_recipe_configs_parse(name, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["embed_distill.py"])
    recipe = runpy.run_path(str(REPO / "recipes" / "embed_distill.py"))  # not __main__: only defines CONFIG
    config = parse_recipe_args(
        recipe["CONFIG"], ["--config", str(REPO / "recipes" / "configs" / f"{name}.yaml"), "--score_weight", "0"]
    )
    assert isinstance(config, EmbedDistillConfig) and config.query_layers == [0, 5] and config.score_weight == 0.0
    assert config.candidate_corpora and config.distance == "l2"
