import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from sentence_transformers import SentenceTransformer

from asym_st import build_asymmetric_model, fingerprint_modules, save_asymmetric_model, tower_modules
from asym_st.training import ConfigError, TASBalancedConfig, tas_balanced
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


def _config(tmp_path, teacher, data, **overrides) -> TASBalancedConfig:
    values = dict(
        teacher=str(teacher),
        train_dataset=f"{data}:train",
        eval_datasets=[f"{data}:test"],
        num_candidates=5,
        num_clusters=3,
        output_dir=str(tmp_path / "student"),
        cache_dir=str(tmp_path / "cache"),
        max_steps=6,
        per_device_train_batch_size=4,
        learning_rate=3e-4,
        warmup_ratio=0.0,
        save_steps=3,
        logging_steps=1,
        measure_latency=False,
        teacher_batch_size=16,
    )
    return TASBalancedConfig(**{**values, **overrides})


def _logged(result, key) -> list[float]:
    return [entry[key] for entry in result.log_history if key in entry]


def test_query_tower_run_keeps_the_index_and_logs_both_terms(tiny_teacher_path, labelled, tmp_path):
    start = build_asymmetric_model(tiny_teacher_path)
    save_asymmetric_model(start, tmp_path / "qed")
    result = tas_balanced(_config(tmp_path, tiny_teacher_path, labelled, init_from=str(tmp_path / "qed")))

    assert LEAKED.upper() not in result.training_queries.texts and len(result.training_queries) == 24
    assert _logged(result, "pair_margin_mse") and _logged(result, "inbatch_margin_mse")
    facts = result.details
    assert facts["pair_rows"] == 24 * 5 and facts["queries_with_pairs"] == 24 and facts["clusters"] >= 1
    assert facts["loss"]["class"] == "FrozenDocumentMarginMSELoss" and facts["loss"]["alpha"] == 0.75
    assert facts["sampler_epoch_seconds"] >= 0

    saved = SentenceTransformer(str(tmp_path / "student"))  # a plain sentence-transformers load
    teacher = SentenceTransformer(str(tiny_teacher_path))
    assert fingerprint_modules(tower_modules(saved, "document")) == fingerprint_modules(teacher)  # index valid
    assert fingerprint_modules(tower_modules(saved, "query")) != fingerprint_modules(tower_modules(start, "query"))
    record = json.loads((tmp_path / "student" / "training_config.json").read_text())
    assert record["method"] == "TAS-Balanced" and record["pairwise_teacher_kind"] == "bi_encoder"
    assert json.loads((tmp_path / "student" / "eval" / "retention.json").read_text())["rows"][0]["num_queries"] == 4
    # the clusters are saved next to the checkpoints and reused by a resumed run
    assert list((tmp_path / "student.checkpoints").glob("clusters-k3-s42-*.npz"))


def test_plain_margin_mse_baseline_and_resume(tiny_teacher_path, labelled, tmp_path):
    config = _config(
        tmp_path,
        tiny_teacher_path,
        labelled,
        alpha=0.0,
        topic_aware=False,
        num_margin_bins=1,
        resume_from_checkpoint="auto",
        overwrite_output_dir=True,
    )
    first = tas_balanced(config, evaluate=False)
    assert _logged(first, "pair_margin_mse") and not _logged(first, "inbatch_margin_mse")
    assert first.details["clusters"] == 1
    # A second run finds checkpoint-6 and resumes there: the history is the checkpoint's, no step is added.
    second = tas_balanced(config, evaluate=False)
    assert _logged(second, "pair_margin_mse") == _logged(first, "pair_margin_mse")
    assert max(entry.get("step", 0) for entry in second.log_history) == 6
    queries = ["alpha beta", "gamma delta"]
    assert np.allclose(first.model.encode_query(queries), second.model.encode_query(queries), atol=1e-6)


def test_both_towers_train_and_the_teacher_stays(tiny_teacher_path, labelled, tmp_path):
    result = tas_balanced(_config(tmp_path, tiny_teacher_path, labelled, towers="both", max_steps=3), evaluate=False)
    teacher = SentenceTransformer(str(tiny_teacher_path))
    assert result.details["loss"]["class"] == "DualTeacherMarginMSELoss"
    assert fingerprint_modules(tower_modules(result.model, "document")) != fingerprint_modules(teacher)
    record = json.loads((tmp_path / "student" / "asym_st_config.json").read_text())
    assert record["document_tower_frozen"] is False


def test_config_errors_name_the_field(tiny_teacher_path, labelled, tmp_path):
    with pytest.raises(ConfigError, match="train_queries is not used"):
        _config(tmp_path, tiny_teacher_path, labelled, train_queries=["x.tsv"]).require_sources()
    with pytest.raises(ConfigError, match="train_dataset is empty"):
        _config(tmp_path, tiny_teacher_path, labelled, train_dataset=None).require_sources()
    with pytest.raises(ConfigError, match="folder .*nope does not exist"):
        _config(tmp_path, tiny_teacher_path, labelled, train_dataset=f"{tmp_path}/nope:train").require_sources()
    with pytest.raises(ConfigError, match="init_from .*: no such model folder"):
        _config(tmp_path, tiny_teacher_path, labelled, init_from=str(tmp_path / "missing")).require_sources()
    with pytest.raises(ConfigError, match="towers='all'"):
        _config(tmp_path, tiny_teacher_path, labelled, towers="all")
    with pytest.raises(ConfigError, match="pairwise_teacher_kind='colbert'"):
        _config(tmp_path, tiny_teacher_path, labelled, pairwise_teacher_kind="colbert")
    with pytest.raises(ConfigError, match="num_clusters must be at least 1"):
        _config(tmp_path, tiny_teacher_path, labelled, num_clusters=0)
    with pytest.raises(ConfigError, match="score file not found"):
        _config(
            tmp_path, tiny_teacher_path, labelled, pairwise_teacher_kind="score_file", pairwise_teacher="none.tsv"
        ).require_sources()
