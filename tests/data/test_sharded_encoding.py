"""Sharded, resumable, multi-process corpus encoding (asym_st.data.sharded_encoding through EmbeddingCache)."""

import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from datasets import Dataset
from sentence_transformers import SentenceTransformer

from asym_st.data.cache import EmbeddingCache, texts_hash

REPO = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("encoding_worker.py")
TEXTS = [f"document {i} about {' '.join(['protein', 'cell', 'study', 'gene'][: 1 + i % 4])}" for i in range(37)]
SHARD, CHUNK = 8, 4  # 37 texts: 5 shards, the last one of 5 texts


@pytest.fixture
def teacher(tiny_teacher_path):
    return SentenceTransformer(str(tiny_teacher_path), device="cpu")


class Interrupted(Exception):
    pass


def _record_encodings(monkeypatch, model, fail_after: int | None = None) -> list[str]:
    """Record the texts ``model.encode_document`` is called with; raise after ``fail_after`` calls (a crash)."""
    seen: list[str] = []
    calls = []
    original = model.encode_document

    def recording(chunk, **kwargs):
        if fail_after is not None and len(calls) == fail_after:
            raise Interrupted
        calls.append(1)
        seen.extend(chunk)
        return original(chunk, **kwargs)

    monkeypatch.setattr(model, "encode_document", recording)
    return seen


def _encode(cache, model, texts=TEXTS, **kwargs):
    kwargs = {"chunk_size": CHUNK, "shard_size": SHARD, "show_progress_bar": False, **kwargs}
    return cache.encode(model, texts, route="document", **kwargs)


def _partial_folder(root: Path) -> Path:
    (folder,) = root.glob("*.shards")
    return folder


def _interrupt_after_shards(cache, model, monkeypatch, shards: int) -> Path:
    """A run that crashes once ``shards`` shards are written (``SHARD / CHUNK`` encoding calls per shard)."""
    _record_encodings(monkeypatch, model, fail_after=shards * SHARD // CHUNK)
    with pytest.raises(Interrupted):
        _encode(cache, model)
    monkeypatch.undo()
    return _partial_folder(cache.root)


def test_sharded_encoding_equals_one_shot_encoding(teacher, tmp_path):
    cache = EmbeddingCache(tmp_path)
    sharded = _encode(cache, teacher)
    np.testing.assert_allclose(sharded, teacher.encode_document(TEXTS), atol=1e-6)
    # shard_size a multiple of chunk_size: the same encoding calls as an unsharded run, so the same bits
    unsharded = _encode(EmbeddingCache(tmp_path / "one"), teacher, shard_size=len(TEXTS) * 10)
    np.testing.assert_array_equal(sharded, unsharded)
    (entry,) = tmp_path.glob("*.npy")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([entry.name, f"{entry.stem}.json", "one"])
    # no KEY.shards/ left: the partial folder is removed once the entry is committed


def test_a_datasets_column_is_read_slice_by_slice_and_hits_the_same_entry(teacher, tmp_path, monkeypatch):
    cache = EmbeddingCache(tmp_path)
    from_list = np.array(_encode(cache, teacher))
    column = Dataset.from_dict({"text": TEXTS})["text"]
    assert texts_hash(column) == texts_hash(TEXTS)
    seen = _record_encodings(monkeypatch, teacher)
    np.testing.assert_array_equal(_encode(cache, teacher, texts=column), from_list)
    assert seen == [], "the same texts from a column are the same cache entry"

    class SliceOnly:
        """Only len() and bounded slices: iterating (or listing) the whole corpus fails."""

        def __len__(self):
            return len(TEXTS)

        def __getitem__(self, key):
            assert isinstance(key, slice) and key.stop - key.start <= 4096
            return TEXTS[key]

    monkeypatch.undo()
    np.testing.assert_array_equal(_encode(EmbeddingCache(tmp_path / "fresh"), teacher, texts=SliceOnly()), from_list)


def test_resume_keeps_the_finished_shards(teacher, tmp_path, monkeypatch, caplog):
    clean = np.array(_encode(EmbeddingCache(tmp_path / "clean"), teacher))
    cache = EmbeddingCache(tmp_path / "resumed")
    folder = _interrupt_after_shards(cache, teacher, monkeypatch, shards=2)
    assert sorted(p.name for p in folder.glob("shard-*.npy")) == ["shard-00000.npy", "shard-00001.npy"]
    assert not list(cache.root.glob("*.npy")), "no entry before every shard is done"
    seen = _record_encodings(monkeypatch, teacher)
    with caplog.at_level(logging.INFO, logger="asym_st.data.sharded_encoding"):
        resumed = _encode(cache, teacher)
    assert seen == TEXTS[2 * SHARD :], "only the missing shards are encoded"
    assert "kept 2 shards, encoding 3" in caplog.text
    np.testing.assert_array_equal(resumed, clean)
    assert not folder.exists()


@pytest.mark.slow
def test_a_killed_process_keeps_its_finished_shards(tiny_teacher_path, teacher, tmp_path, monkeypatch):
    texts_file = tmp_path / "texts.txt"
    texts_file.write_text("\n".join(TEXTS) + "\n")
    cache_dir = tmp_path / "cache"
    command = [sys.executable, str(WORKER), str(tiny_teacher_path), str(texts_file), str(cache_dir), str(tmp_path)]
    command += ["--shard_size", str(SHARD), "--chunk_size", str(CHUNK), "--die_after", "3"]
    done = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == -signal.SIGKILL, done.stderr[-3000:]
    folder = _partial_folder(cache_dir)
    assert sorted(p.name for p in folder.glob("shard-*.npy")) == [f"shard-0000{i}.npy" for i in range(3)]
    assert not list(cache_dir.glob("*.npy")) and not list(cache_dir.glob("*.json")), "no final entry"
    seen = _record_encodings(monkeypatch, teacher)
    resumed = _encode(EmbeddingCache(cache_dir), teacher)
    assert seen == TEXTS[3 * SHARD :], "the 3 finished shards are not encoded again"
    monkeypatch.undo()
    # atol: the killed process ran with one thread, this one with several (float sums in another order)
    np.testing.assert_allclose(resumed, _encode(EmbeddingCache(tmp_path / "clean"), teacher), atol=1e-6)


@pytest.mark.slow
def test_two_processes_share_the_shards_and_match_one_process(tiny_teacher_path, teacher, tmp_path):
    texts_file = tmp_path / "texts.txt"
    texts_file.write_text("\n".join(TEXTS) + "\n")
    cache_dir, out = tmp_path / "cache", tmp_path / "out"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    command = [*torchrun, str(WORKER), str(tiny_teacher_path), str(texts_file), str(cache_dir), str(out)]
    command += ["--shard_size", str(SHARD), "--chunk_size", str(CHUNK), "--distributed"]
    done = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    per_rank = [json.loads((out / f"rank-{rank}.json").read_text()) for rank in (0, 1)]
    # split_between_processes: rank 0 gets shards 0-2, rank 1 shards 3-4; no text is encoded twice
    assert per_rank == [TEXTS[: 3 * SHARD], TEXTS[3 * SHARD :]]
    one_process = _encode(EmbeddingCache(tmp_path / "one"), teacher)
    np.testing.assert_allclose(np.load(out / "result.npy"), one_process, atol=1e-6)
    assert len(list(cache_dir.glob("*.npy"))) == 1 and not list(cache_dir.glob("*.shards"))


def test_a_partial_folder_of_another_job_is_rebuilt(teacher, tmp_path, monkeypatch, caplog):
    cache = EmbeddingCache(tmp_path)
    folder = _interrupt_after_shards(cache, teacher, monkeypatch, shards=2)
    seen = _record_encodings(monkeypatch, teacher)
    with caplog.at_level(logging.WARNING, logger="asym_st.data.sharded_encoding"):
        rebuilt = _encode(cache, teacher, shard_size=2 * SHARD)  # another shard size: the shards do not fit
    assert "belongs to another encoding job (['shard_size'] differ); rebuilding it" in caplog.text
    assert seen == TEXTS and not folder.exists()
    np.testing.assert_allclose(rebuilt, teacher.encode_document(TEXTS), atol=1e-6)


def test_an_unreadable_manifest_is_rebuilt(teacher, tmp_path, monkeypatch):
    cache = EmbeddingCache(tmp_path)
    folder = _interrupt_after_shards(cache, teacher, monkeypatch, shards=2)
    (folder / "manifest.json").write_text("{not json")
    seen = _record_encodings(monkeypatch, teacher)
    _encode(cache, teacher)
    assert seen == TEXTS


@pytest.mark.parametrize("damage", ["flip_bytes", "truncate", "no_metadata", "temporary_file"])
def test_a_damaged_shard_is_encoded_again(teacher, tmp_path, monkeypatch, caplog, damage):
    clean = np.array(_encode(EmbeddingCache(tmp_path / "clean"), teacher))
    cache = EmbeddingCache(tmp_path / "damaged")
    folder = _interrupt_after_shards(cache, teacher, monkeypatch, shards=3)
    shard = folder / "shard-00001.npy"
    if damage == "flip_bytes":
        data = bytearray(shard.read_bytes())
        data[-8:] = b"\xff" * 8
        shard.write_bytes(bytes(data))
    elif damage == "truncate":
        shard.write_bytes(shard.read_bytes()[:-100])
    elif damage == "no_metadata":  # killed between the array and its metadata
        shard.with_suffix(".json").unlink()
    else:  # killed while writing: only the temporary file exists
        os.replace(shard, folder / ".shard-00001.npy.abc.tmp")
    seen = _record_encodings(monkeypatch, teacher)
    with caplog.at_level(logging.WARNING, logger="asym_st.data.sharded_encoding"):
        repaired = _encode(cache, teacher)
    assert seen == TEXTS[SHARD : 2 * SHARD] + TEXTS[3 * SHARD :], "shard 1 and the missing ones, nothing else"
    if damage in ("flip_bytes", "truncate"):
        assert "shard-00001.npy is unusable" in caplog.text
    np.testing.assert_array_equal(repaired, clean)


def test_invalid_shard_size_is_refused(teacher, tmp_path):
    with pytest.raises(ValueError, match="shard_size"):
        _encode(EmbeddingCache(tmp_path), teacher, shard_size=0)


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(REPO)}
