import numpy as np
import pytest
import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.modules import Dense, Normalize, StaticEmbedding, Transformer

from asym_st import IncompatibleTowersError, fingerprint_modules, save_asymmetric_model, tower_modules
from asym_st.modeling.light_encoders import (
    LightEncoderConfig,
    build_light_asymmetric_model,
    small_transformer_encoder,
    static_embedding_encoder,
)
from tests.conftest import REPO_ROOT
from tests.isolated_load import encode_without_asym_st

TEXTS = ["what is the capital of france", "a protein in the cell", "dense retrieval with a query tower"]


def test_static_encoder_model_loads_without_asym_st(tiny_teacher_path, tmp_path):
    model = build_light_asymmetric_model(tiny_teacher_path, LightEncoderConfig(kind="static"))
    query = tower_modules(model, "query")
    assert [type(m) for m in query] == [StaticEmbedding, Normalize]
    assert query[0].embedding.weight.shape == (query[0].tokenizer.get_vocab_size(), 32)
    assert fingerprint_modules(tower_modules(model, "document")) == fingerprint_modules(
        SentenceTransformer(str(tiny_teacher_path))
    )
    assert model.asym_st_record.query_encoder == "static(random, teacher width)"
    save_asymmetric_model(model, tmp_path / "static")
    isolated = encode_without_asym_st(tmp_path / "static", TEXTS, REPO_ROOT)
    np.testing.assert_allclose(isolated["query"], model.encode_query(TEXTS), atol=1e-5)
    np.testing.assert_allclose(isolated["document"], model.encode_document(TEXTS), atol=1e-5)
    assert not np.allclose(isolated["query"], isolated["document"], atol=1e-3)


def test_static_encoder_from_teacher_token_embeddings(tiny_teacher_path):
    teacher = SentenceTransformer(str(tiny_teacher_path))
    encoder = static_embedding_encoder(teacher, init="teacher")
    static = encoder[0]
    torch.testing.assert_close(static.embedding.weight, teacher[0].auto_model.get_input_embeddings().weight)
    # the same text gives the mean of the teacher's token vectors (no special tokens, no context)
    ids = teacher[0].tokenizer("cat dog", add_special_tokens=False)["input_ids"]
    expected = teacher[0].auto_model.get_input_embeddings().weight[ids].mean(0)
    expected = (expected / expected.norm()).detach().numpy()
    np.testing.assert_allclose(encoder.encode(["cat dog"])[0], expected, atol=1e-5)
    with pytest.raises(ValueError, match="embedding_dim cannot be set with init='teacher'"):
        LightEncoderConfig(kind="static", init="teacher", embedding_dim=8)


def test_width_mismatch_without_projection_explains_how_to_add_one(tiny_teacher_path):
    with pytest.raises(IncompatibleTowersError, match=r"outputs 8 dimensions.*LightEncoderConfig\(dense=True\)"):
        build_light_asymmetric_model(tiny_teacher_path, LightEncoderConfig(kind="static", embedding_dim=8))
    model = build_light_asymmetric_model(
        tiny_teacher_path, LightEncoderConfig(kind="static", embedding_dim=8, dense=True)
    )
    query = tower_modules(model, "query")
    assert isinstance(query[1], Dense) and (query[1].in_features, query[1].out_features) == (8, 32)
    assert model.encode_query(TEXTS).shape == (3, 32)


def test_small_random_transformer_is_initialised_apart(tiny_teacher_path, tmp_path):
    teacher = SentenceTransformer(str(tiny_teacher_path))
    encoder = small_transformer_encoder(teacher, num_layers=1, hidden_size=16, num_attention_heads=2, dense=True)
    transformer = encoder[0]
    assert isinstance(transformer, Transformer)
    assert transformer.auto_model.config.num_hidden_layers == 1 and transformer.auto_model.config.hidden_size == 16
    assert transformer.tokenizer.get_vocab() == teacher[0].tokenizer.get_vocab()
    assert encoder.encode(TEXTS).shape == (3, 32)
    encoder.save(str(tmp_path / "small"))
    reloaded = SentenceTransformer(str(tmp_path / "small"))
    np.testing.assert_allclose(reloaded.encode(TEXTS), encoder.encode(TEXTS), atol=1e-5)


def test_few_layers_of_another_checkpoint(tiny_teacher_path, tiny_wide_path, tmp_path):
    config = LightEncoderConfig(kind="transformer", checkpoint=str(tiny_wide_path), layers=[1])
    model = build_light_asymmetric_model(tiny_teacher_path, config)
    query = tower_modules(model, "query")
    assert query[0].auto_model.config.num_hidden_layers == 1
    assert isinstance(query[2], Dense) and query[2].out_features == 32  # 48 -> 32, added automatically
    save_asymmetric_model(model, tmp_path / "wide")
    reloaded = SentenceTransformer(str(tmp_path / "wide"))
    np.testing.assert_allclose(reloaded.encode_query(TEXTS), model.encode_query(TEXTS), atol=1e-5)


def test_bad_encoder_settings_are_named():
    with pytest.raises(ValueError, match="kind='lstm'"):
        LightEncoderConfig(kind="lstm")
    with pytest.raises(ValueError, match="not divisible"):
        LightEncoderConfig(kind="transformer", hidden_size=30, num_attention_heads=4)


@pytest.mark.real
def test_static_encoder_of_real_minilm(minilm_name):
    model = build_light_asymmetric_model(minilm_name, LightEncoderConfig(kind="static", init="teacher"))
    query, document = model.encode_query(TEXTS), model.encode_document(TEXTS)
    assert query.shape == document.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(query, axis=1), 1.0, atol=1e-5)
    assert tower_modules(model, "query")[0].embedding.weight.shape == (30522, 384)
