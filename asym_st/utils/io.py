"""Atomic writes for files and folders.

Every model folder, cache and result file that asym-st writes goes through these helpers, so an interrupted
run (a crash, ``kill -9``, a full disk) never leaves a half-written artefact where a reader would pick it up.
The trick is always the same: write into a temporary sibling on the same filesystem, then ``os.replace`` it
into place, which POSIX guarantees to be atomic.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["atomic_directory", "atomic_write_bytes", "atomic_write_json", "atomic_write_text", "OutputExistsError"]


class OutputExistsError(FileExistsError):
    """Raised when a target folder exists, is not empty, and ``overwrite`` was not given."""


def _fsync_dir(path: Path) -> None:
    # Makes the rename itself durable; best effort (not supported on every filesystem).
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temporary file in the same folder, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int = 2) -> Path:
    """Serialise ``obj`` as JSON and write it to ``path`` atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=False, ensure_ascii=False) + "\n")


def _is_nonempty_dir(path: Path) -> bool:
    return path.is_dir() and any(path.iterdir())


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder; on success it replaces ``path`` in one rename.

    If the body raises, the temporary folder is removed and ``path`` is untouched. An existing non-empty
    ``path`` is only replaced when ``overwrite=True``; the old folder is moved aside first and deleted after
    the new one is in place, so at every instant ``path`` is either the complete old or the complete new folder
    (or, for the instant between two renames, absent).

    Example::

        with atomic_directory("out/model", overwrite=True) as tmp:
            model.save(str(tmp))
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputExistsError(f"{path} exists and is not a folder.")
    if _is_nonempty_dir(path) and not overwrite:
        raise OutputExistsError(f"{path} already exists and is not empty; pass overwrite=True to replace it.")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if path.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
        os.replace(path, old / "content")
    os.replace(tmp, path)
    _fsync_dir(path.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
