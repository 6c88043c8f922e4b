import json

import numpy as np
import pytest
from sentence_transformers import SentenceTransformer

from asym_st import (
    AsymmetricModelRecord,
    OutputExistsError,
    QueryTowerConfig,
    build_asymmetric_model,
    index_is_compatible,
    load_asymmetric_model,
    save_asymmetric_model,
    save_tower,
    tower_modules,
)
from tests.conftest import REPO_ROOT
from tests.isolated_load import encode_without_asym_st

TEXTS = ["what is the capital of france?", "dense retrieval with a small query tower"]


@pytest.fixture
def model(tiny_teacher_path):
    return build_asymmetric_model(tiny_teacher_path, QueryTowerConfig(layers=[0, 3]))


def test_round_trip_with_plain_sentence_transformers(model, tmp_path):
    path = save_asymmetric_model(model, tmp_path / "asym")
    reloaded = SentenceTransformer(str(path))
    np.testing.assert_allclose(reloaded.encode_query(TEXTS), model.encode_query(TEXTS), atol=1e-6)
    np.testing.assert_allclose(reloaded.encode_document(TEXTS), model.encode_document(TEXTS), atol=1e-6)
    np.testing.assert_allclose(reloaded.encode(TEXTS), model.encode_document(TEXTS), atol=1e-6)


def test_saved_model_loads_without_asym_st(model, tmp_path):
    path = save_asymmetric_model(model, tmp_path / "asym")
    modules = json.loads((path / "modules.json").read_text()) + [json.loads((path / "router_config.json").read_text())]
    assert "asym_st" not in json.dumps(modules), "only built-in sentence-transformers modules may be referenced"
    isolated = encode_without_asym_st(path, TEXTS, REPO_ROOT)
    np.testing.assert_allclose(isolated["query"], model.encode_query(TEXTS), atol=1e-5)
    np.testing.assert_allclose(isolated["document"], model.encode_document(TEXTS), atol=1e-5)
    np.testing.assert_allclose(isolated["plain"], isolated["document"], atol=1e-6)


def test_record_is_saved_and_read_back(model, tmp_path, tiny_teacher_path):
    path = save_asymmetric_model(model, tmp_path / "asym")
    record = AsymmetricModelRecord.read(path)
    assert record.teacher == str(tiny_teacher_path)
    assert record.query_layers == [0, 3] and record.teacher_num_layers == 4
    assert len(record.document_tower_fingerprint) == 64 and record.query_tower_fingerprint
    loaded = load_asymmetric_model(path)
    assert loaded.asym_st_record.document_tower_fingerprint == record.document_tower_fingerprint
    assert all(not p.requires_grad for m in tower_modules(loaded, "document") for p in m.parameters())
    teacher_fingerprint = record.document_tower_fingerprint
    assert index_is_compatible(loaded, teacher_fingerprint)
    assert not index_is_compatible(loaded, record.query_tower_fingerprint)


def test_overwrite_is_required_for_a_non_empty_folder(model, tmp_path):
    target = tmp_path / "asym"
    target.mkdir()
    (target / "keep.txt").write_text("user data")
    with pytest.raises(OutputExistsError, match="overwrite=True"):
        save_asymmetric_model(model, target)
    assert (target / "keep.txt").read_text() == "user data"
    save_asymmetric_model(model, target, overwrite=True)
    assert (target / "modules.json").is_file() and not (target / "keep.txt").exists()


def test_a_crash_mid_save_leaves_nothing_half_written(model, tmp_path, monkeypatch):
    target = tmp_path / "asym"
    save_asymmetric_model(model, target)
    before = sorted(p.relative_to(target) for p in target.rglob("*"))
    original_save = SentenceTransformer.save

    def crashing_save(self, path, *args, **kwargs):
        original_save(self, path, *args, **kwargs)  # files are written ...
        raise KeyboardInterrupt("simulated crash")  # ... then the process dies before the save completes

    monkeypatch.setattr(SentenceTransformer, "save", crashing_save)
    with pytest.raises(KeyboardInterrupt):
        save_asymmetric_model(model, target, overwrite=True)
    with pytest.raises(KeyboardInterrupt):
        save_asymmetric_model(model, tmp_path / "fresh")
    assert sorted(p.relative_to(target) for p in target.rglob("*")) == before, "the old folder must be intact"
    assert not (tmp_path / "fresh").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == [], "temporary folders are cleaned up"


def test_towers_save_as_standalone_models(model, tmp_path):
    query_path = save_tower(model, "query", tmp_path / "q")
    document_path = save_tower(model, "document", tmp_path / "d")
    query_tower, document_tower = SentenceTransformer(str(query_path)), SentenceTransformer(str(document_path))
    np.testing.assert_allclose(query_tower.encode(TEXTS), model.encode_query(TEXTS), atol=1e-6)
    np.testing.assert_allclose(document_tower.encode(TEXTS), model.encode_document(TEXTS), atol=1e-6)
    assert AsymmetricModelRecord.read(query_path).extra["tower"] == "query"
