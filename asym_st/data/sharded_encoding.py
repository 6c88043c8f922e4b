"""Sharded, resumable, multi-process encoding of a long text list into one embedding matrix, in bounded memory.

A corpus is cut into fixed-size shards of ``shard_size`` texts. Each shard is encoded chunk by chunk and streamed
into its own ``.npy`` file in a partial folder (for :class:`~asym_st.data.cache.EmbeddingCache`,
``ROOT/KEY.shards/``)::

    KEY.shards/manifest.json        what the job is: key, tower fingerprint, text hash, count, shard size, dtype
    KEY.shards/shard-00007.npy      rows [7 * shard_size, 8 * shard_size) of the matrix
    KEY.shards/shard-00007.json     its row count, dimension and BLAKE2 checksum, written after the array

A shard file only ever appears complete (written to a temporary sibling, then renamed), and counts as finished
only once its metadata exists and matches; so a run killed at any point (``kill -9``, a pre-empted node) keeps
the finished shards and the next run encodes only the others. A partial folder whose manifest belongs to another
job (other texts, shard size or dtype) is rebuilt, and a shard that is truncated, mis-shaped or fails its checksum
is encoded again.

When every shard is on disk they are concatenated, by a streaming file copy, into one ``.npy`` that the caller
commits (the cache keeps its atomic array-then-metadata commit and its checksum). Memory stays bounded by one
chunk of texts and embeddings whatever the corpus size: texts are sliced chunk by chunk from any object with
``len()`` and slicing (a list, or a memory-mapped ``datasets`` column such as ``dataset["text"]``), embeddings are
written as they come, and nothing is memory-mapped while writing. (On glibc, the peak of the forward passes
themselves is flat only with a fixed mmap threshold, ``MALLOC_MMAP_THRESHOLD_=131072``; see
:func:`_release_freed_memory`.)

Multi-process: under ``torchrun`` / ``accelerate launch`` every process calls :meth:`ShardedEncoding.encode` with
the same texts; the main process validates the partial folder, the shards still missing are split between the
processes with accelerate's ``PartialState.split_between_processes``, every process writes its own shards, and
all wait for each other before the merge. The processes must share the folder (one machine, or a shared
filesystem). Independent jobs must not encode the same folder at the same time (the first to finish removes it).
"""

from __future__ import annotations

import ctypes
import functools
import json
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm.auto import tqdm

from asym_st.utils.io import atomic_write_json, file_checksum

if TYPE_CHECKING:
    from accelerate import PartialState

__all__ = ["DEFAULT_SHARD_SIZE", "ShardedEncoding", "iter_text_slices"]

logger = logging.getLogger(__name__)

DEFAULT_SHARD_SIZE = 8192
_FORMAT = 1  # bump when the folder layout changes: an old partial folder is then rebuilt, never misread
_COPY_BLOCK = 1 << 22


def iter_text_slices(texts: Sequence[str], size: int, start: int = 0, stop: int | None = None) -> Iterator[list[str]]:
    """``texts[start:stop]`` as consecutive lists of at most ``size`` texts.

    Only one slice is in memory at a time, so a memory-mapped ``datasets`` column is never materialised (and
    slicing it reads arrow batches, much faster than iterating it row by row).

    Example::

        for chunk in iter_text_slices(dataset["text"], 1024):
            ...
    """
    stop = len(texts) if stop is None else stop
    for begin in range(start, stop, size):
        yield list(texts[begin : min(begin + size, stop)])


class ShardedEncoding:
    """The partial folder of one encoding job: a manifest and one ``.npy`` (+ ``.json``) file per finished shard.

    Args:
        folder: the partial folder (created if needed).
        job: what identifies the job, e.g. ``{"key": ..., "tower_fingerprint": ..., "text_hash": ...}``; it goes
            into the manifest, and a folder whose manifest differs is rebuilt instead of resumed.
        num_texts: the number of texts (rows of the matrix).
        shard_size: texts per shard, the unit of resumption and of the split between processes.
        dtype: the dtype of the stored embeddings.
        verify_checksum: re-hash finished shards before resuming from them (their size and shape are always
            checked).

    Example::

        shards = ShardedEncoding("cache/KEY.shards", {"key": "KEY"}, num_texts=len(texts), shard_size=4096)
        shards.encode(lambda chunk: model.encode_document(chunk, convert_to_numpy=True), texts)
        shards.merge("cache/KEY.npy")
        shards.remove()
    """

    def __init__(
        self,
        folder: str | os.PathLike,
        job: dict,
        num_texts: int,
        shard_size: int = DEFAULT_SHARD_SIZE,
        dtype: str = "float32",
        verify_checksum: bool = True,
    ) -> None:
        if not isinstance(shard_size, int) or shard_size < 1:
            raise ValueError(f"shard_size must be a positive integer, got {shard_size!r}.")
        if num_texts < 1:
            raise ValueError("Nothing to encode: the list of texts is empty.")
        self.folder = Path(folder)
        self.num_texts = num_texts
        self.shard_size = shard_size
        self.dtype = np.dtype(dtype)
        self.verify_checksum = verify_checksum
        self.manifest = dict(job, format=_FORMAT, num_texts=num_texts, shard_size=shard_size, dtype=str(self.dtype))

    # ------------------------------------------------------------------------------------------- layout

    @property
    def num_shards(self) -> int:
        return -(-self.num_texts // self.shard_size)

    def bounds(self, index: int) -> tuple[int, int]:
        """The rows ``[start, stop)`` of shard ``index``."""
        start = index * self.shard_size
        return start, min(start + self.shard_size, self.num_texts)

    def shard_path(self, index: int) -> Path:
        return self.folder / f"shard-{index:05d}.npy"

    def _shard_meta_path(self, index: int) -> Path:
        return self.folder / f"shard-{index:05d}.json"

    @property
    def _manifest_path(self) -> Path:
        return self.folder / "manifest.json"

    # ------------------------------------------------------------------------------------------- validation

    def _shard_problem(self, index: int, check_sum: bool) -> str | None:
        """Why shard ``index`` cannot be used, or ``None`` if it is finished and sound."""
        path, meta_path = self.shard_path(index), self._shard_meta_path(index)
        if not meta_path.is_file() or not path.is_file():
            return "missing"
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            array = np.load(path, mmap_mode="r", allow_pickle=False)  # only the header is read
        except (OSError, ValueError, EOFError) as error:
            return f"unreadable ({error})"
        if not isinstance(meta, dict):
            return "metadata is not an object"
        start, stop = self.bounds(index)
        if array.ndim != 2 or array.shape != (stop - start, meta.get("dimension")) or array.dtype != self.dtype:
            return f"{array.shape}/{array.dtype}, expected ({stop - start}, {meta.get('dimension')})/{self.dtype}"
        if check_sum and file_checksum(path) != meta.get("checksum"):
            return "checksum mismatch"
        return None

    def prepare(self) -> list[int]:
        """Validate the folder for this job and return the finished shards (call from one process only).

        A folder whose manifest belongs to another job is emptied; shards that are truncated, mis-shaped or fail
        their checksum are deleted. (Temporary files left by a killed run go with the folder once the job is done.)
        """
        self.folder.mkdir(parents=True, exist_ok=True)
        try:
            found = json.loads(self._manifest_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            found = None
        except (OSError, json.JSONDecodeError):
            found = {}
        if found is not None and not isinstance(found, dict):
            found = {}
        if found is not None and found != self.manifest:
            differing = sorted(k for k in set(found) | set(self.manifest) if found.get(k) != self.manifest.get(k))
            logger.warning("%s belongs to another encoding job (%s differ); rebuilding it.", self.folder, differing)
            shutil.rmtree(self.folder)
            self.folder.mkdir(parents=True)
        elif found is None and any(self.folder.iterdir()):
            logger.warning("%s has no manifest; rebuilding it.", self.folder)
            shutil.rmtree(self.folder)
            self.folder.mkdir(parents=True)
        finished = []
        for index in range(self.num_shards):
            problem = self._shard_problem(index, self.verify_checksum)
            if problem is None:
                finished.append(index)
            elif problem != "missing":
                logger.warning("Shard %s is unusable (%s); it will be encoded again.", self.shard_path(index), problem)
                self.shard_path(index).unlink(missing_ok=True)
                self._shard_meta_path(index).unlink(missing_ok=True)
        atomic_write_json(self._manifest_path, self.manifest)
        return finished

    # ------------------------------------------------------------------------------------------- encoding

    def encode(
        self,
        encode_fn: Callable[[list[str]], np.ndarray],
        texts: Sequence[str],
        chunk_size: int = 256,
        show_progress_bar: bool = True,
        description: str = "encoding",
        state: PartialState | None = None,
    ) -> None:
        """Encode every shard that is not finished yet; on return all shards are on disk.

        Args:
            encode_fn: ``list of texts -> (n, dimension) array`` (e.g. a ``model.encode_document`` partial).
            texts: the texts, any object with ``len()`` and slicing (a list, a ``datasets`` column, ...).
            chunk_size: texts per ``encode_fn`` call, i.e. the memory bound. When ``shard_size`` is a multiple of
                it the chunks are those of an unsharded run, so the embeddings are identical.
            show_progress_bar: a progress bar over texts (on the main process).
            description: the progress bar's label.
            state: accelerate's ``PartialState`` to split the shards between its processes; every process must
                then call this method with the same texts. ``None`` (or one process): this process encodes all.
        """
        if len(texts) != self.num_texts:
            raise ValueError(f"{len(texts)} texts given, but this job has {self.num_texts}.")
        multi = state is not None and state.num_processes > 1
        is_main = not multi or state.is_main_process
        todo = None
        if is_main:
            finished = set(self.prepare())
            todo = [index for index in range(self.num_shards) if index not in finished]
            if finished:
                logger.info("%s: kept %d shards, encoding %d.", self.folder.name, len(finished), len(todo))
        if multi:
            from accelerate.utils import broadcast_object_list

            # The main process decided which shards are missing; every process splits the same list.
            todo = broadcast_object_list([todo])[0]
            with state.split_between_processes(todo) as share:
                mine = list(share)
        else:
            mine = todo
        rows = sum(stop - start for start, stop in map(self.bounds, mine))
        initial = 0 if multi else self.num_texts - rows
        progress = tqdm(
            total=initial + rows,
            initial=initial,
            desc=description,
            unit="text",
            disable=not (show_progress_bar and is_main),
        )
        for index in mine:
            self._write_shard(index, encode_fn, texts, chunk_size, progress)
        progress.close()
        if multi:
            state.wait_for_everyone()  # the merge needs every process's shards

    def _write_shard(self, index: int, encode_fn, texts, chunk_size: int, progress) -> None:
        """Stream shard ``index`` chunk by chunk into a temporary file, rename it into place, then its metadata."""
        start, stop = self.bounds(index)
        path = self.shard_path(index)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=self.folder)
        dimension = None
        try:
            with os.fdopen(fd, "wb") as handle:
                for chunk in iter_text_slices(texts, chunk_size, start, stop):
                    block = np.ascontiguousarray(encode_fn(chunk), dtype=self.dtype)
                    if block.ndim != 2 or len(block) != len(chunk):
                        raise ValueError(f"The encoder returned {block.shape} for {len(chunk)} texts.")
                    if dimension is None:  # the header needs the dimension, known from the first chunk
                        dimension = block.shape[1]
                        _write_header(handle, (stop - start, dimension), self.dtype)
                    elif block.shape[1] != dimension:
                        raise ValueError(f"The encoder returned dimension {block.shape[1]}, then {dimension}.")
                    handle.write(block.tobytes())
                    del block
                    _release_freed_memory()
                    progress.update(len(chunk))
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        # Array first, metadata last: a shard without metadata is not finished and is encoded again.
        meta = {"index": index, "rows": stop - start, "dimension": dimension, "checksum": file_checksum(path)}
        atomic_write_json(self._shard_meta_path(index), meta)

    # ------------------------------------------------------------------------------------------- merge

    def merge(self, out_path: str | os.PathLike) -> tuple[int, int]:
        """Concatenate the finished shards into the ``.npy`` file ``out_path`` and return its shape.

        A streaming file copy: memory stays bounded by one copy block whatever the size of the matrix.
        """
        sources = []
        for index in range(self.num_shards):
            problem = self._shard_problem(index, check_sum=False)  # just written or verified by prepare()
            if problem is not None:
                raise RuntimeError(f"Cannot merge {self.folder}: shard {index} is {problem}.")
            header = np.load(self.shard_path(index), mmap_mode="r", allow_pickle=False)
            sources.append((self.shard_path(index), header.offset, header.shape[1]))
            del header
        dimensions = {dimension for _, _, dimension in sources}
        if len(dimensions) != 1:
            raise RuntimeError(f"Cannot merge {self.folder}: the shards have dimensions {sorted(dimensions)}.")
        shape = (self.num_texts, dimensions.pop())
        with open(out_path, "wb") as out:
            _write_header(out, shape, self.dtype)
            for path, offset, _ in sources:
                with path.open("rb") as source:
                    source.seek(offset)
                    shutil.copyfileobj(source, out, _COPY_BLOCK)
            out.flush()
            os.fsync(out.fileno())
        return shape

    def remove(self) -> None:
        """Delete the partial folder (once the merged matrix is committed)."""
        shutil.rmtree(self.folder, ignore_errors=True)


def _release_freed_memory() -> None:
    """Give the heap pages freed by the last forward passes back to the OS (glibc only; elsewhere a no-op).

    glibc keeps the freed blocks of the variable-size activation tensors in its arenas, so without this the RSS
    between chunks ratchets up with the number of chunks although nothing is held (measured with all-MiniLM-L6-v2:
    RssAnon 626 MB after 5 chunks, 402 MB after ``malloc_trim``). A call costs microseconds, against the seconds a
    chunk takes to encode. The peak *within* a chunk still climbs over the first chunks, because glibc raises its
    mmap threshold as large blocks are freed (up to 32 MB); ``MALLOC_MMAP_THRESHOLD_=131072`` in the environment
    keeps it flat (benchmarks/results/corpus_encoding_memory.md).
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim():
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc (e.g. musl)
        return None


def _write_header(handle, shape: tuple[int, int], dtype: np.dtype) -> None:
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
    np.lib.format.write_array_header_1_0(handle, header)
