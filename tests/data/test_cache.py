import json

import numpy as np
import pytest
from sentence_transformers import SentenceTransformer

from asym_st import build_asymmetric_model
from asym_st.data.cache import EmbeddingCache

TEXTS = [f"document number {i} about protein cell study" for i in range(37)]


@pytest.fixture
def teacher(tiny_teacher_path):
    return SentenceTransformer(str(tiny_teacher_path), device="cpu")


def test_encode_is_cached_and_streamed(teacher, tmp_path, monkeypatch):
    cache = EmbeddingCache(tmp_path)
    first = cache.encode(teacher, TEXTS, route="document", chunk_size=10, show_progress_bar=False)
    np.testing.assert_allclose(first, teacher.encode_document(TEXTS), atol=1e-6)
    calls = []
    monkeypatch.setattr(teacher, "encode_document", lambda *a, **k: calls.append(1))
    again = cache.encode(teacher, TEXTS, route="document")
    assert calls == [] and isinstance(again, np.memmap)
    np.testing.assert_array_equal(again, first)


def test_shared_document_tower_hits_the_teachers_entry(teacher, tiny_teacher_path, tmp_path):
    cache = EmbeddingCache(tmp_path)
    cache.encode(teacher, TEXTS, route="document", show_progress_bar=False)
    student = build_asymmetric_model(tiny_teacher_path)
    assert len(list(tmp_path.glob("*.npy"))) == 1
    cache.encode(student, TEXTS, route="document", show_progress_bar=False)
    assert len(list(tmp_path.glob("*.npy"))) == 1, "same frozen document tower, same entry"
    cache.encode(student, TEXTS, route="query", show_progress_bar=False)
    assert len(list(tmp_path.glob("*.npy"))) == 2, "the query tower is a different function"


def test_other_texts_or_weights_make_other_keys(teacher, tmp_path):
    cache = EmbeddingCache(tmp_path)
    cache.encode(teacher, TEXTS, route="document", show_progress_bar=False)
    cache.encode(teacher, TEXTS[:-1], route="document", show_progress_bar=False)
    with __import__("torch").no_grad():
        next(teacher.parameters()).add_(0.01)
    cache.encode(teacher, TEXTS, route="document", show_progress_bar=False)
    assert len(list(tmp_path.glob("*.npy"))) == 3


@pytest.mark.parametrize("damage", ["flip_bytes", "truncate", "bad_meta", "wrong_shape"])
def test_corrupt_entries_are_detected_and_rebuilt(teacher, tmp_path, damage):
    cache = EmbeddingCache(tmp_path)
    good = np.array(cache.encode(teacher, TEXTS, route="document", show_progress_bar=False))
    array_path = next(tmp_path.glob("*.npy"))
    meta_path = array_path.with_suffix(".json")
    if damage == "flip_bytes":
        data = bytearray(array_path.read_bytes())
        data[-8:] = b"\xff" * 8
        array_path.write_bytes(bytes(data))
    elif damage == "truncate":
        array_path.write_bytes(array_path.read_bytes()[:-100])
    elif damage == "bad_meta":
        meta_path.write_text("{not json")
    else:
        meta = json.loads(meta_path.read_text())
        meta["shape"] = [1, 1]
        meta_path.write_text(json.dumps(meta))
    rebuilt = cache.encode(teacher, TEXTS, route="document", show_progress_bar=False)
    np.testing.assert_allclose(rebuilt, good, atol=1e-6)
    assert cache.load(array_path.stem) is not None, "the rebuilt entry is valid again"


def test_empty_text_list_is_refused(teacher, tmp_path):
    with pytest.raises(ValueError, match="empty"):
        EmbeddingCache(tmp_path).encode(teacher, [], route="document")


def test_entry_written_by_another_teacher_is_rebuilt(teacher, tmp_path):
    cache = EmbeddingCache(tmp_path)
    good = np.array(cache.encode(teacher, TEXTS, route="query", show_progress_bar=False))
    meta_path = next(tmp_path.glob("*.json"))
    meta = json.loads(meta_path.read_text())
    meta["tower_fingerprint"] = "0" * 64  # as if another teacher had written this key
    meta_path.write_text(json.dumps(meta))
    rebuilt = cache.encode(teacher, TEXTS, route="query", show_progress_bar=False)
    np.testing.assert_allclose(rebuilt, good, atol=1e-6)
    assert json.loads(meta_path.read_text())["tower_fingerprint"] != "0" * 64
