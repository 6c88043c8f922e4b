import json

import numpy as np
import pytest
import torch
from sentence_transformers.cross_encoder import CrossEncoder

from asym_st import build_asymmetric_model
from asym_st.data.teacher_attention import (
    AttentionCache,
    AttentionConfig,
    CrossEncoderAttention,
    TokenizerMismatchError,
    content_token_ids,
    pair_attention,
)

QUERIES = ["what is the capital of france", "cat dog", "protein"]
PASSAGES = ["paris is the capital city of france", "the cat and the dog", "a gene study of protein and cell"]


@pytest.fixture(scope="module")
def student(tiny_teacher_path):
    return build_asymmetric_model(tiny_teacher_path)


@pytest.fixture(scope="module")
def cross_encoder(tiny_teacher_path):
    torch.manual_seed(0)
    model = CrossEncoder(str(tiny_teacher_path.parent / "hf"), num_labels=1)  # the tiny BERT + a fresh head
    # A random tiny BERT attends almost uniformly; sharper query/key weights make layers and heads differ.
    with torch.no_grad():
        for layer in model[0].auto_model.bert.encoder.layer:
            layer.attention.self.query.weight.mul_(25.0)
            layer.attention.self.key.weight.mul_(25.0)
    return model


def _by_hand(cross_encoder, query_ids, passage_ids, layers, heads):
    """The module docstring's aggregation, computed directly with the transformers model."""
    tokenizer = cross_encoder.tokenizer
    ids = [tokenizer.cls_token_id, *query_ids, tokenizer.sep_token_id, *passage_ids, tokenizer.sep_token_id]
    types = [0] * (len(query_ids) + 2) + [1] * (len(passage_ids) + 1)
    model = cross_encoder[0].auto_model
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            attentions = model(
                input_ids=torch.tensor([ids]), token_type_ids=torch.tensor([types]), output_attentions=True
            ).attentions
    finally:
        model.set_attn_implementation("sdpa")
    mean = torch.stack([attentions[layer][0, heads] for layer in layers]).mean(dim=(0, 1))
    block = mean[1 : 1 + len(query_ids), len(query_ids) + 2 : len(query_ids) + 2 + len(passage_ids)]
    return (block / block.sum(dim=1, keepdim=True)).numpy()


def test_summaries_are_the_documented_aggregation_on_the_students_tokens(student, cross_encoder, tmp_path):
    config = AttentionConfig(layers=[0, -1], heads=[1, 3], show_progress_bar=False)
    summaries = pair_attention(
        CrossEncoderAttention(cross_encoder, config), student, QUERIES, PASSAGES, 6, AttentionCache(tmp_path)
    )
    query_ids = content_token_ids(student, QUERIES, "query")
    passage_ids = content_token_ids(student, PASSAGES, "document", max_length=6)
    assert summaries.query_lengths.tolist() == [len(q) for q in query_ids]
    assert summaries.passage_lengths.tolist() == [4, 4, 4]  # 6 tokens minus [CLS] and [SEP]
    assert summaries.matrices.shape == (3, max(map(len, query_ids)), 4)
    assert summaries.matrices.dtype == np.float16
    for row in range(3):
        expected = _by_hand(cross_encoder, query_ids[row], passage_ids[row], layers=[0, -1], heads=[1, 3])
        assert np.allclose(summaries.matrix(row), expected, atol=2e-3)
        other_choice = _by_hand(cross_encoder, query_ids[row], passage_ids[row], layers=[1], heads=[0, 2])
        assert np.abs(summaries.matrix(row) - other_choice).max() > 0.05  # the check can tell choices apart
        assert np.allclose(summaries.matrix(row).sum(axis=1), 1.0, atol=3e-3)
    # padding stays zero
    assert not summaries.matrices[2, len(query_ids[2]) :].any()
    # the cross-encoder's own attention implementation is restored
    assert cross_encoder[0].auto_model.config._attn_implementation == "sdpa"


def test_cache_hit_miss_and_rebuild_on_another_teacher(
    student, cross_encoder, tiny_teacher_path, tmp_path, monkeypatch
):
    cache = AttentionCache(tmp_path)
    calls = []
    original = CrossEncoderAttention.summarize

    def counting(self, query_ids, passage_ids):
        calls.append(len(query_ids))
        return original(self, query_ids, passage_ids)

    monkeypatch.setattr(CrossEncoderAttention, "summarize", counting)
    summarizer = CrossEncoderAttention(cross_encoder, AttentionConfig(batch_size=2, show_progress_bar=False))
    first = pair_attention(summarizer, student, QUERIES, PASSAGES, 16, cache)
    assert calls == [2, 1]  # batches of 2 pairs
    hit = pair_attention(summarizer, student, QUERIES, PASSAGES, 16, cache)
    assert calls == [2, 1] and isinstance(hit.matrices, np.memmap)  # read back memory-mapped, no forward pass
    assert np.array_equal(hit.matrices, first.matrices)

    pair_attention(summarizer, student, QUERIES[:2], PASSAGES[:2], 16, cache)  # other pairs: a miss
    assert calls == [2, 1, 2]
    pair_attention(summarizer, student, QUERIES, PASSAGES, 8, cache)  # another truncation: other tokens, a miss
    assert calls == [2, 1, 2, 2, 1]

    other_teacher = CrossEncoder(str(tiny_teacher_path.parent / "hf"), num_labels=1)
    with torch.no_grad():
        other_teacher[0].auto_model.bert.encoder.layer[-1].attention.self.query.weight.mul_(3.0)
    other = pair_attention(
        CrossEncoderAttention(other_teacher, AttentionConfig(batch_size=2, show_progress_bar=False)),
        student,
        QUERIES,
        PASSAGES,
        16,
        cache,
    )
    assert calls == [2, 1, 2, 2, 1, 2, 1]  # another fingerprint: rebuilt
    assert not np.allclose(other.matrices, first.matrices)
    other_layers = CrossEncoderAttention(cross_encoder, AttentionConfig(layers=[0], show_progress_bar=False))
    assert other_layers.fingerprint() != summarizer.fingerprint()
    assert len(list(tmp_path.iterdir())) == 4


def test_a_damaged_entry_is_rebuilt(student, cross_encoder, tmp_path):
    cache = AttentionCache(tmp_path)
    summarizer = CrossEncoderAttention(cross_encoder, AttentionConfig(show_progress_bar=False))
    first = pair_attention(summarizer, student, QUERIES, PASSAGES, 16, cache)
    (entry,) = list(tmp_path.iterdir())
    meta = json.loads((entry / "meta.json").read_text())
    (entry / "meta.json").write_text(json.dumps({**meta, "key": "something else"}))
    rebuilt = pair_attention(summarizer, student, QUERIES, PASSAGES, 16, cache)
    assert np.array_equal(np.asarray(rebuilt.matrices), np.asarray(first.matrices))
    assert json.loads((entry / "meta.json").read_text())["key"] == meta["key"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left behind


def test_another_vocabulary_is_refused(tiny_cased_path, cross_encoder):
    cased_student = build_asymmetric_model(tiny_cased_path)
    with pytest.raises(TokenizerMismatchError, match="vocabulary .* differs from the student's query tower"):
        pair_attention(CrossEncoderAttention(cross_encoder), cased_student, QUERIES, PASSAGES)


def test_bad_settings_are_named(student, cross_encoder, tmp_path):
    with pytest.raises(ValueError, match="layers=\\[7\\]: the cross-encoder has 4 layers"):
        pair_attention(
            CrossEncoderAttention(cross_encoder, AttentionConfig(layers=[7], show_progress_bar=False)),
            student,
            QUERIES,
            PASSAGES,
            cache=AttentionCache(tmp_path),
        )
    with pytest.raises(ValueError, match="AttentionConfig.heads is empty"):
        AttentionConfig(heads=[])
    with pytest.raises(ValueError, match="3 queries but 2 passages"):
        pair_attention(CrossEncoderAttention(cross_encoder), student, QUERIES, PASSAGES[:2])
