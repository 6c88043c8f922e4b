"""Encode a whole corpus with a model's document tower, once, into the embedding cache.

This is the offline half of an asymmetric retriever: the teacher (document tower) encodes the corpus, the index
is built from the vectors, and every query tower distilled later reuses them. The corpus is read as a memory-mapped
``datasets`` column (never a Python list), encoded in shards that survive a kill, and, under ``torchrun`` /
``accelerate launch``, split between the processes (:class:`~asym_st.data.sharded_encoding.ShardedEncoding`). The
entry is the one :func:`~asym_st.evaluation.retrieval.evaluate_retrieval` and mining look up (same tower
fingerprint, same texts in the same order), so they find it instead of encoding again.

Example (2 processes on a CPU machine; one per GPU with ``recipes/accelerate/multi_gpu.yaml``)::

    accelerate launch --config_file recipes/accelerate/cpu.yaml recipes/encode_corpus.py \\
        --model sentence-transformers/all-MiniLM-L6-v2 --corpus ../shared/data/beir/trec-dl-2019-passage
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from asym_st.data.beir import document_text
from asym_st.data.cache import EmbeddingCache
from asym_st.data.sharded_encoding import DEFAULT_SHARD_SIZE
from asym_st.modeling import load_sentence_transformer
from asym_st.training.config_io import ConfigError, YamlConfigMixin
from asym_st.training.trainer_setup import distributed_state

__all__ = ["CorpusEncodingConfig", "corpus_texts", "encode_corpus"]

logger = logging.getLogger(__name__)

_ROUTES = ("document", "query")


@dataclass
class CorpusEncodingConfig(YamlConfigMixin):
    """What to encode, with what, and how.

    Args:
        model: the model (Hub id or path) whose ``route`` tower encodes: for an asymmetric model, the document tower.
        corpus: a BEIR folder (its ``corpus.jsonl``) or a ``corpus.jsonl`` file with ``title`` and ``text`` fields.
        route: ``document`` (``encode_document``, the default) or ``query``.
        batch_size: texts per forward pass.
        chunk_size: texts per encoding call (the memory bound).
        shard_size: texts per shard, the unit of resumption and of the split between processes.
        max_seq_length: truncate the tower's inputs (``None``: the model's own setting).
        max_documents: encode only the first N documents (a smoke run).
        cache_dir: the cache root (default ``$ASYM_ST_CACHE``, ``~/.cache/asym_st``); ``embeddings/`` holds the
            vectors, ``corpora/`` the memory-mapped corpus.
        trust_remote_code: allow custom code in the model (off by default).
    """

    model: str = "sentence-transformers/all-MiniLM-L6-v2"
    corpus: str = ""
    route: str = "document"
    batch_size: int = 64
    chunk_size: int = 256
    shard_size: int = DEFAULT_SHARD_SIZE
    max_seq_length: int | None = None
    max_documents: int | None = None
    cache_dir: str | None = None
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        if not self.corpus:
            raise ConfigError("CorpusEncodingConfig.corpus is required: a BEIR folder or a corpus.jsonl file.")
        if self.route not in _ROUTES:
            raise ConfigError(f"CorpusEncodingConfig.route={self.route!r}; choose one of {_ROUTES}.")
        for name in ("batch_size", "chunk_size", "shard_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"CorpusEncodingConfig.{name} must be at least 1, got {getattr(self, name)}.")
        if self.shard_size % self.chunk_size:
            raise ConfigError(
                f"CorpusEncodingConfig.shard_size ({self.shard_size}) must be a multiple of chunk_size "
                f"({self.chunk_size})."
            )

    @property
    def corpus_file(self) -> Path:
        path = Path(self.corpus)
        path = path / "corpus.jsonl" if path.is_dir() else path
        if not path.is_file():
            raise ConfigError(f"CorpusEncodingConfig.corpus: {path} does not exist.")
        return path


def corpus_texts(corpus_file: str | Path, cache_dir: str | Path | None = None, max_documents: int | None = None):
    """The documents of a ``corpus.jsonl`` as a memory-mapped ``datasets`` column of ``title + " " + text``, in file
    order: the texts, and the order, that :func:`~asym_st.data.beir.load_beir` gives the evaluation.

    ``datasets`` writes the column to an Arrow file once (main process first, the other ranks reuse it), so the
    corpus is never held in memory whatever its size."""
    from datasets import load_dataset

    from asym_st.data.beir import default_cache_dir

    root = Path(cache_dir) if cache_dir else default_cache_dir()
    state = distributed_state()
    with state.main_process_first():
        corpus = load_dataset("json", data_files=str(corpus_file), split="train", cache_dir=str(root / "corpora"))
        missing = [field for field in ("_id", "text") if field not in corpus.column_names]
        if missing:
            raise ValueError(f"{corpus_file}: the documents have no {missing} field (BEIR's corpus.jsonl has both).")
        if max_documents is not None:
            corpus = corpus.select(range(min(max_documents, len(corpus))))
        titles = "title" in corpus.column_names
        corpus = corpus.map(
            lambda batch: {
                "passage": [
                    document_text(title, text)
                    for title, text in zip(
                        batch["title"] if titles else [None] * len(batch["text"]), batch["text"], strict=True
                    )
                ]
            },
            batched=True,
            remove_columns=corpus.column_names,
            desc="joining title and text",
        )
    return corpus["passage"]


def encode_corpus(config: CorpusEncodingConfig) -> np.ndarray:
    """Encode ``config.corpus`` with ``config.model``'s ``route`` tower into the embedding cache and return the
    ``(documents, dimension)`` matrix (memory-mapped). A second call, or an evaluation of the same tower on the same
    corpus, reads it back; a killed run keeps its finished shards."""
    state = distributed_state()
    model = load_sentence_transformer(config.model, trust_remote_code=config.trust_remote_code)
    if config.max_seq_length:
        model.max_seq_length = config.max_seq_length
    texts = corpus_texts(config.corpus_file, config.cache_dir, config.max_documents)
    if len(texts) == 0:
        raise ValueError(f"{config.corpus_file}: the corpus is empty.")
    cache = EmbeddingCache(Path(config.cache_dir) / "embeddings" if config.cache_dir else None)
    started = time.perf_counter()
    vectors = cache.encode(
        model,
        texts,
        config.route,
        batch_size=config.batch_size,
        chunk_size=config.chunk_size,
        shard_size=config.shard_size,
        distributed=state.num_processes > 1,
        show_progress_bar=state.is_local_main_process,
        description=f"encoding {config.corpus_file.parent.name or 'corpus'} ({state.num_processes} process(es))",
    )
    seconds = time.perf_counter() - started
    if state.is_main_process:
        logger.info(
            "%d documents × %d dimensions in %.0fs (%.1f documents/s over %d process(es)), cache %s",
            vectors.shape[0], vectors.shape[1], seconds, vectors.shape[0] / max(seconds, 1e-9), state.num_processes,
            cache.root,
        )  # fmt: skip
    return vectors
