"""encode_corpus: the corpus read memory-mapped, encoded into the entry the evaluation finds, split over 2 ranks."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sentence_transformers import SentenceTransformer

from asym_st.data.beir import load_beir
from asym_st.data.cache import EmbeddingCache
from asym_st.indexing import CorpusEncodingConfig, corpus_texts, encode_corpus
from asym_st.training.config_io import ConfigError

REPO = Path(__file__).resolve().parents[2]


def _entries(root: Path) -> set[str]:
    return {path.name for path in root.glob("*.npy")}


def test_the_encoded_corpus_is_the_entry_evaluation_looks_up(tiny_teacher_path, beir, tmp_path):
    config = CorpusEncodingConfig(
        model=str(tiny_teacher_path),
        corpus=str(beir),
        batch_size=8,
        chunk_size=4,
        shard_size=8,
        cache_dir=str(tmp_path),
    )
    vectors = encode_corpus(config)
    dataset = load_beir(beir, split="test")
    assert vectors.shape[0] == len(dataset.corpus) == 30
    assert list(corpus_texts(config.corpus_file, tmp_path)) == list(dataset.corpus.values())  # same texts, same order

    cache = EmbeddingCache(tmp_path / "embeddings")
    before = _entries(cache.root)
    model = SentenceTransformer(str(tiny_teacher_path))
    again = cache.encode(model, list(dataset.corpus.values()), "document")  # what evaluate_retrieval asks for
    assert _entries(cache.root) == before  # a hit: nothing encoded, no new entry
    np.testing.assert_array_equal(again, vectors)
    np.testing.assert_allclose(vectors, model.encode_document(list(dataset.corpus.values())), atol=1e-5)


@pytest.mark.slow
def test_two_processes_give_the_same_vectors(tiny_teacher_path, beir, tmp_path):
    arguments = ["--model", str(tiny_teacher_path), "--corpus", str(beir), "--chunk_size", "4", "--shard_size", "8"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(REPO)}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    done = subprocess.run(
        [*launcher, str(REPO / "recipes" / "encode_corpus.py"), *arguments, "--cache_dir", str(tmp_path / "two")],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    assert "30 documents" in done.stdout
    cache = EmbeddingCache(tmp_path / "two" / "embeddings")
    assert len(_entries(cache.root)) == 1 and not list(cache.root.glob("*.shards"))  # merged, shards removed
    two = np.load(next(cache.root.glob("*.npy")))
    one = encode_corpus(
        CorpusEncodingConfig(
            model=str(tiny_teacher_path), corpus=str(beir), chunk_size=4, shard_size=8, cache_dir=str(tmp_path / "one")
        )
    )
    np.testing.assert_allclose(two, one, atol=1e-6)


def test_bad_corpora_and_settings_are_named(tiny_teacher_path, tmp_path):
    with pytest.raises(ConfigError, match="corpus is required"):
        CorpusEncodingConfig(model=str(tiny_teacher_path))
    with pytest.raises(ConfigError, match="multiple of chunk_size"):
        CorpusEncodingConfig(corpus="x", chunk_size=3, shard_size=8)
    with pytest.raises(ConfigError, match="route"):
        CorpusEncodingConfig(corpus="x", route="passage")
    with pytest.raises(ConfigError, match="does not exist"):
        encode_corpus(CorpusEncodingConfig(model=str(tiny_teacher_path), corpus=str(tmp_path / "missing")))
    broken = tmp_path / "corpus.jsonl"
    broken.write_text('{"id": "d1", "body": "no BEIR fields"}\n')
    with pytest.raises(ValueError, match=r"corpus.jsonl: the documents have no \['_id', 'text'\] field"):
        encode_corpus(CorpusEncodingConfig(model=str(tiny_teacher_path), corpus=str(broken), cache_dir=str(tmp_path)))
