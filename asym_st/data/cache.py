"""On-disk embedding cache: teacher query targets and document embeddings, computed once.

Entries are keyed by *what determines the vectors*: the tower's fingerprint (weights + settings, see
:func:`asym_st.modeling.fingerprint.fingerprint_modules`), the route's prompt, and a hash of the exact texts in
order. A second evaluation of another query tower against the same frozen document tower, or a second student
distilled from the same teacher, reads the vectors back instead of re-encoding.

Each entry is ``KEY.npy`` (a plain NumPy array, opened memory-mapped) and ``KEY.json`` (shape, dtype, fingerprint,
text hash and a BLAKE2 checksum of the array file). Both are written atomically; an entry whose metadata,
shape or checksum does not match is treated as absent and rebuilt, never used.

Encoding is sharded and resumable (:mod:`asym_st.data.sharded_encoding`): texts are encoded chunk by chunk into
shards of ``shard_size`` texts under ``KEY.shards/``, each written atomically, so memory stays bounded by one chunk
whatever the number of texts, and a run killed half-way keeps its finished shards and encodes only the rest. With
``distributed=True`` the processes of a ``torchrun`` / ``accelerate launch`` share the shards; the main process
merges them into ``KEY.npy`` and commits the entry.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sentence_transformers import SentenceTransformer

from asym_st.data.beir import default_cache_dir
from asym_st.data.sharded_encoding import DEFAULT_SHARD_SIZE, ShardedEncoding, iter_text_slices
from asym_st.modeling.fingerprint import fingerprint_modules
from asym_st.modeling.towers import tower_modules
from asym_st.utils.io import atomic_write_json, file_checksum

__all__ = ["EmbeddingCache", "CacheEntry", "texts_hash"]

logger = logging.getLogger(__name__)

_HASH_SLICE = 4096


def texts_hash(texts: Sequence[str]) -> str:
    """SHA-256 over the texts in order (separators make ``["ab"]`` and ``["a", "b"]`` differ).

    ``texts`` is anything with ``len()`` and slicing; it is read slice by slice, so a memory-mapped ``datasets``
    column is hashed without being materialised.
    """
    digest = hashlib.sha256()
    for chunk in iter_text_slices(texts, _HASH_SLICE):
        for text in chunk:
            digest.update(text.encode("utf-8"))
            digest.update(b"\x00")
    digest.update(str(len(texts)).encode())
    return digest.hexdigest()


@dataclass
class CacheEntry:
    key: str
    array_path: Path
    meta_path: Path


class EmbeddingCache:
    """A folder of memory-mapped embedding matrices keyed by tower fingerprint and text hash.

    Args:
        root: the cache folder (default ``$ASYM_ST_CACHE/embeddings`` or ``~/.cache/asym_st/embeddings``).
        verify_checksum: re-hash the array file on every read (cheap for BEIR-sized corpora; turn off for
            multi-GB matrices, where the size and metadata checks still apply).

    Example::

        cache = EmbeddingCache()
        doc_embeddings = cache.encode(teacher, corpus_texts, route="document", batch_size=64)
        doc_embeddings = cache.encode(teacher, corpus_texts, route="document")  # read back, no encoding
    """

    def __init__(self, root: str | os.PathLike | None = None, verify_checksum: bool = True) -> None:
        self.root = Path(root) if root is not None else default_cache_dir() / "embeddings"
        self.verify_checksum = verify_checksum

    # ------------------------------------------------------------------------------------------- keys

    @staticmethod
    def tower_fingerprint(model: SentenceTransformer, route: str) -> str:
        return fingerprint_modules(tower_modules(model, route))

    @staticmethod
    def make_key(tower_fingerprint: str, route: str, prompt: str | None, text_hash: str) -> str:
        material = json.dumps([tower_fingerprint, route, prompt or "", text_hash])
        return hashlib.sha256(material.encode()).hexdigest()[:32]

    def _entry(self, key: str) -> CacheEntry:
        return CacheEntry(key, self.root / f"{key}.npy", self.root / f"{key}.json")

    # ------------------------------------------------------------------------------------------- read / write

    def load(self, key: str, expected: dict | None = None) -> np.ndarray | None:
        """The cached matrix (memory-mapped, read-only) or ``None`` if absent, corrupt or mismatched."""
        entry = self._entry(key)
        if not entry.meta_path.is_file() or not entry.array_path.is_file():
            return None
        problem = self._check(entry, expected or {})
        if problem:
            logger.warning("Embedding cache entry %s is unusable (%s); it will be rebuilt.", key, problem)
            self.delete(key)
            return None
        return np.load(entry.array_path, mmap_mode="r")

    def _check(self, entry: CacheEntry, expected: dict) -> str | None:
        try:
            meta = json.loads(entry.meta_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as error:
            return f"metadata unreadable: {error}"
        for name, value in expected.items():
            if meta.get(name) != value:
                return f"{name} is {meta.get(name)!r}, expected {value!r}"
        try:
            array = np.load(entry.array_path, mmap_mode="r")
        except (OSError, ValueError) as error:
            return f"array unreadable: {error}"
        if list(array.shape) != meta.get("shape") or str(array.dtype) != meta.get("dtype"):
            return f"array is {array.shape}/{array.dtype}, metadata says {meta.get('shape')}/{meta.get('dtype')}"
        if self.verify_checksum and file_checksum(entry.array_path) != meta.get("checksum"):
            return "checksum mismatch"
        return None

    def delete(self, key: str) -> None:
        entry = self._entry(key)
        for path in (entry.array_path, entry.meta_path):
            path.unlink(missing_ok=True)

    def _commit(self, key: str, tmp_array: Path, meta: dict) -> None:
        entry = self._entry(key)
        meta = dict(meta, checksum=file_checksum(tmp_array))
        # Array first, metadata last: a reader only trusts an array whose metadata (with checksum) exists.
        os.replace(tmp_array, entry.array_path)
        atomic_write_json(entry.meta_path, meta)

    def save(self, key: str, embeddings: np.ndarray, meta: dict | None = None) -> np.ndarray:
        """Store an already computed matrix under ``key`` (atomically)."""
        self.root.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{key}.", suffix=".npy", dir=self.root)
        os.close(fd)
        try:
            np.save(tmp, np.ascontiguousarray(embeddings))
            self._commit(key, Path(tmp), dict(meta or {}, shape=list(embeddings.shape), dtype=str(embeddings.dtype)))
        finally:
            Path(tmp).unlink(missing_ok=True)
        return np.load(self._entry(key).array_path, mmap_mode="r")

    # ------------------------------------------------------------------------------------------- encode

    def encode(
        self,
        model: SentenceTransformer,
        texts: Sequence[str],
        route: str,
        batch_size: int = 32,
        chunk_size: int = 256,
        show_progress_bar: bool = True,
        description: str | None = None,
        dtype: str = "float32",
        shard_size: int = DEFAULT_SHARD_SIZE,
        distributed: bool = False,
    ) -> np.ndarray:
        """Embeddings of ``texts`` by ``model``'s ``route`` tower: from the cache, or encoded, stored and returned.

        ``route`` is ``"query"`` (``encode_query``) or ``"document"`` (``encode_document``); for a symmetric model
        both are the whole model, with the route's prompt if the model defines one.

        Args:
            model: the model whose ``route`` tower encodes.
            texts: the texts: a list, or any object with ``len()`` and slicing such as a memory-mapped ``datasets``
                column (``dataset["text"]``), which is read chunk by chunk and never materialised.
            route: ``"query"`` or ``"document"``.
            batch_size: texts per forward pass.
            chunk_size: texts per encoding call, the memory bound (keep ``shard_size`` a multiple of it).
            show_progress_bar: a progress bar over texts.
            description: the progress bar's label.
            dtype: the stored dtype.
            shard_size: texts per shard, the unit of resumption: a run killed half-way keeps its finished shards.
            distributed: split the shards between the processes of a ``torchrun`` / ``accelerate launch`` (gloo on
                CPU). Every process must then call ``encode`` with the same arguments, and not inside
                ``main_process_first()``; the main process merges and commits the entry, and all return it.

        Returns:
            The ``(len(texts), dimension)`` matrix, memory-mapped read-only.

        Example::

            cache = EmbeddingCache("cache/embeddings")
            corpus = datasets.load_dataset("json", data_files="corpus.jsonl", split="train")
            documents = cache.encode(teacher, corpus["text"], route="document", batch_size=64, shard_size=8192)
        """
        if len(texts) == 0:
            raise ValueError("Nothing to encode: the list of texts is empty.")
        state = _distributed_state() if distributed else None
        multi = state is not None and state.num_processes > 1
        fingerprint = self.tower_fingerprint(model, route)
        prompt = model.prompts.get(route) or None
        text_hash = texts_hash(texts)
        key = self.make_key(fingerprint, route, prompt, text_hash)
        expected = {"tower_fingerprint": fingerprint, "text_hash": text_hash, "route": route}
        cached = self.load(key, expected) if not multi or state.is_main_process else None
        if multi:
            from accelerate.utils import broadcast_object_list

            # One decision for all processes (the main process validated, or deleted, the entry).
            if broadcast_object_list([cached is not None])[0]:
                cached = np.load(self._entry(key).array_path, mmap_mode="r")
        if cached is not None:
            logger.info("Embedding cache hit: %d %s embeddings (%s).", len(texts), route, key)
            return cached
        encode = model.encode_query if route == "query" else model.encode_document
        encode_fn = functools.partial(encode, batch_size=batch_size, convert_to_numpy=True, show_progress_bar=False)
        shards = ShardedEncoding(
            self.root / f"{key}.shards",
            dict(expected, key=key),
            num_texts=len(texts),
            shard_size=shard_size,
            dtype=dtype,
            verify_checksum=self.verify_checksum,
        )
        description = description or f"encoding {route}s"
        self._encode_into_cache(
            key, shards, encode_fn, texts, expected, chunk_size, show_progress_bar, description, state
        )
        return np.load(self._entry(key).array_path, mmap_mode="r")

    def _encode_into_cache(
        self, key, shards, encode_fn, texts, meta, chunk_size, show_progress_bar, description, state
    ) -> None:
        """Encode the missing shards (split between the processes of ``state``), merge and commit the entry."""
        multi = state is not None and state.num_processes > 1
        shards.encode(encode_fn, texts, chunk_size, show_progress_bar, description, state)
        if not multi or state.is_main_process:
            self._merge_and_commit(key, shards, meta)
        if multi:
            state.wait_for_everyone()  # the other processes read the entry the main process committed

    def _merge_and_commit(self, key: str, shards: ShardedEncoding, meta: dict) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{key}.", suffix=".npy", dir=self.root)
        os.close(fd)
        tmp_path = Path(tmp)
        try:
            shape = shards.merge(tmp_path)
            self._commit(key, tmp_path, dict(meta, shape=list(shape), dtype=str(shards.dtype)))
        finally:
            tmp_path.unlink(missing_ok=True)
        shards.remove()  # only once the entry is committed: until then the shards are the work to resume


def _distributed_state():
    # Imported here: the training package builds on this module.
    from asym_st.training.trainer_setup import distributed_state

    return distributed_state()
