import numpy as np
import pytest
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.modules import Dense, Normalize, Router, StaticEmbedding

from asym_st import (
    IncompatibleTowersError,
    NotASentenceTransformerError,
    QueryTowerConfig,
    assemble_asymmetric_model,
    build_asymmetric_model,
    extract_tower,
    fingerprint_modules,
    is_asymmetric,
    tower_modules,
)
from asym_st.modeling.layers import num_transformer_layers

TEXTS = ["what is the capital of france?", "a dense retrieval model with a query tower", "protein cell study"]


def test_default_build_is_qed_first_last(tiny_teacher_path):
    teacher = SentenceTransformer(str(tiny_teacher_path))
    model = build_asymmetric_model(tiny_teacher_path)
    assert isinstance(model[0], Router) and len(model) == 1 and is_asymmetric(model)
    query_transformer = tower_modules(model, "query")[0]
    assert num_transformer_layers(query_transformer.auto_model) == 2
    assert model.asym_st_record.query_layers == [0, 3]
    assert model.asym_st_record.teacher_num_layers == 4
    # documents (and plain encode) go through the unchanged teacher, queries through the small tower
    np.testing.assert_allclose(model.encode_document(TEXTS), teacher.encode(TEXTS), atol=1e-6)
    np.testing.assert_allclose(model.encode(TEXTS), teacher.encode(TEXTS), atol=1e-6)
    assert not np.allclose(model.encode_query(TEXTS), teacher.encode(TEXTS), atol=1e-3)


def test_document_tower_is_frozen_and_fingerprint_matches_teacher(tiny_teacher_path):
    teacher = SentenceTransformer(str(tiny_teacher_path))
    model = build_asymmetric_model(tiny_teacher_path)
    assert all(not p.requires_grad for m in tower_modules(model, "document") for p in m.parameters())
    assert all(p.requires_grad for m in tower_modules(model, "query") for p in m.parameters())
    assert model.asym_st_record.document_tower_fingerprint == fingerprint_modules(teacher)
    assert fingerprint_modules(tower_modules(model, "query")) != fingerprint_modules(teacher)
    unfrozen = build_asymmetric_model(tiny_teacher_path, freeze_document_tower=False)
    assert all(p.requires_grad for m in tower_modules(unfrozen, "document") for p in m.parameters())


@pytest.mark.parametrize(
    ("config", "layers"),
    [
        (QueryTowerConfig(strategy="first_k", num_layers=1), [0]),
        (QueryTowerConfig(strategy="evenly_spaced", num_layers=3), [0, 2, 3]),
        (QueryTowerConfig(layers=[1, 2]), [1, 2]),
    ],
)
def test_strategies_reach_the_model(tiny_teacher_path, config, layers):
    model = build_asymmetric_model(tiny_teacher_path, config)
    assert model.asym_st_record.query_layers == layers
    assert num_transformer_layers(tower_modules(model, "query")[0].auto_model) == len(layers)


def test_pooling_normalisation_and_prompts_follow_the_teacher(tiny_teacher_path):
    teacher = SentenceTransformer(str(tiny_teacher_path), prompts={"query": "query: ", "document": "passage: "})
    model = build_asymmetric_model(teacher)
    assert model.prompts["query"] == "query: " and model.prompts["document"] == "passage: "
    assert [type(m).__name__ for m in tower_modules(model, "query")] == ["Transformer", "Pooling", "Normalize"]
    assert tower_modules(model, "query")[1].pooling_mode == teacher[1].pooling_mode
    np.testing.assert_allclose(model.encode_document(TEXTS), teacher.encode_document(TEXTS), atol=1e-6)


def test_heterogeneous_encoder_gets_a_projection(tiny_teacher_path, tiny_wide_path):
    model = build_asymmetric_model(tiny_teacher_path, QueryTowerConfig(encoder=str(tiny_wide_path)))
    modules = tower_modules(model, "query")
    assert any(isinstance(m, Dense) for m in modules) and isinstance(modules[-1], Normalize)
    assert model.encode_query(TEXTS).shape == model.encode_document(TEXTS).shape == (3, 32)
    assert model.asym_st_record.query_encoder == str(tiny_wide_path)


def test_heterogeneous_plain_transformers_checkpoint(tiny_teacher_path, tiny_wide_path):
    # the folder's hf/ subfolder is a plain transformers checkpoint (no modules.json)
    hf_checkpoint = tiny_wide_path.parent / "hf"
    model = build_asymmetric_model(tiny_teacher_path, QueryTowerConfig(encoder=str(hf_checkpoint)))
    assert [type(m).__name__ for m in tower_modules(model, "query")] == ["Transformer", "Pooling", "Dense", "Normalize"]
    assert model.encode_query(TEXTS).shape == (3, 32)


def test_different_tokenizers_are_refused_unless_allowed(tiny_teacher_path, tiny_cased_path):
    with pytest.raises(IncompatibleTowersError, match="different tokenizers.*allow_different_tokenizers"):
        build_asymmetric_model(tiny_teacher_path, QueryTowerConfig(encoder=str(tiny_cased_path)))
    model = build_asymmetric_model(
        tiny_teacher_path, QueryTowerConfig(encoder=str(tiny_cased_path), allow_different_tokenizers=True)
    )
    assert model.encode_query(TEXTS).shape == (3, 32)


def test_not_a_sentence_transformer_is_named(tiny_teacher_path, tmp_path):
    with pytest.raises(NotASentenceTransformerError, match="no modules.json"):
        build_asymmetric_model(tiny_teacher_path.parent / "hf")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_asymmetric_model(tmp_path / "missing" / "model")


def test_bad_layers_and_zero_layer_tower(tiny_teacher_path):
    with pytest.raises(ValueError, match="out of range"):
        build_asymmetric_model(tiny_teacher_path, QueryTowerConfig(layers=[0, 4]))
    with pytest.raises(ValueError, match="duplicated"):
        build_asymmetric_model(tiny_teacher_path, QueryTowerConfig(layers=[2, 2]))
    with pytest.raises(ValueError, match="at least one layer"):
        build_asymmetric_model(tiny_teacher_path, QueryTowerConfig(num_layers=0))


def test_teacher_without_transformer_layers_is_refused(tiny_teacher_path, tmp_path):
    static_teacher = SentenceTransformer(
        modules=[StaticEmbedding(SentenceTransformer(str(tiny_teacher_path)).tokenizer, embedding_dim=16)]
    )
    static_teacher.save(str(tmp_path / "static"))
    with pytest.raises(ValueError, match="not a Transformer"):
        build_asymmetric_model(tmp_path / "static")


def test_assemble_checks_widths_and_extract_round_trips(tiny_teacher_path, tiny_wide_path):
    with pytest.raises(IncompatibleTowersError, match="add_projection=True"):
        assemble_asymmetric_model(tiny_wide_path, tiny_teacher_path)
    model = assemble_asymmetric_model(tiny_wide_path, tiny_teacher_path, add_projection=True)
    assert model.encode_query(TEXTS).shape == (3, 32)
    query_tower = extract_tower(model, "query")
    document_tower = extract_tower(model, "document")
    assert not is_asymmetric(query_tower)
    np.testing.assert_allclose(query_tower.encode(TEXTS), model.encode_query(TEXTS), atol=1e-6)
    np.testing.assert_allclose(document_tower.encode(TEXTS), model.encode_document(TEXTS), atol=1e-6)
    # the assembled model can itself be re-assembled from its extracted towers
    again = assemble_asymmetric_model(query_tower, document_tower)
    np.testing.assert_allclose(again.encode_query(TEXTS), model.encode_query(TEXTS), atol=1e-6)


def test_teacher_without_a_document_route_is_refused(tiny_teacher_path, tmp_path):
    teacher = SentenceTransformer(str(tiny_teacher_path))
    router = Router(sub_modules={"a": list(teacher), "b": list(SentenceTransformer(str(tiny_teacher_path)))})
    SentenceTransformer(modules=[router]).save(str(tmp_path / "two_routes"))
    with pytest.raises(ValueError, match="no 'document' route"):
        build_asymmetric_model(tmp_path / "two_routes")
