"""Atomic writes for files and folders.

Every model folder, cache and result file that asym-st writes goes through these helpers, so an interrupted
run (a crash, ``kill -9``, a full disk) never leaves a half-written artefact where a reader would pick it up.
The trick is always the same: write into a temporary sibling on the same filesystem, then ``os.replace`` it
into place, which POSIX guarantees to be atomic.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "atomic_directory",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "file_checksum",
    "OutputExistsError",
]

_CHECKSUM_BLOCK = 1 << 22


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


def file_checksum(path: str | os.PathLike) -> str:
    """BLAKE2 (128-bit) of a file's bytes, read block by block: what the metadata of a written array records, so
    that a reader can tell a complete file from a damaged one."""
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as handle:
        while block := handle.read(_CHECKSUM_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def _is_nonempty_dir(path: Path) -> bool:
    return path.is_dir() and any(path.iterdir())


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder; on success it replaces ``path`` in one rename.

    If the body raises, the temporary folder is removed and ``path`` is untouched. An existing non-empty
    ``path`` is only replaced when ``overwrite=True``; the old folder is moved aside first and deleted after
    the new one is in place, so at every instant ``path`` is either the complete old or the complete new folder
    (or, for the instant between two renames, absent).

    The temporary folders are hidden siblings, ``.NAME.HOST-PID.XXXXXXXX.partial`` (and ``.old``). A process
    killed with ``kill -9`` cannot remove its own; the next successful commit to the same ``path`` removes those
    of processes of this host that are no longer running (a live process's, or another host's on a shared
    filesystem, are never touched).

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
    prefix = f".{path.name}.{_owner()}."
    tmp = Path(tempfile.mkdtemp(prefix=prefix, suffix=".partial", dir=path.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if path.exists():
        old = Path(tempfile.mkdtemp(prefix=prefix, suffix=".old", dir=path.parent))
        os.replace(path, old / "content")
    os.replace(tmp, path)
    _fsync_dir(path.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    _remove_stale_siblings(path)


def _host() -> str:
    # No dots: they separate the parts of a temporary folder's name.
    return re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname())[:64] or "host"


def _owner() -> str:
    return f"{_host()}-{os.getpid()}"


def _process_is_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it exists, as another user's process
        return True
    return True


def _remove_stale_siblings(path: Path) -> None:
    """Remove the temporary folders that killed processes of this host left next to ``path`` (best effort)."""
    prefix, host = f".{path.name}.", _host()
    with contextlib.suppress(OSError):
        for entry in os.scandir(path.parent):
            if not entry.name.startswith(prefix) or not entry.is_dir(follow_symlinks=False):
                continue
            parts = entry.name[len(prefix) :].split(".")  # HOST-PID, random part, partial|old
            if len(parts) != 3 or parts[2] not in ("partial", "old"):
                continue
            owner_host, _, pid = parts[0].rpartition("-")
            if owner_host != host or not pid.isdigit() or int(pid) == os.getpid():
                continue
            if not _process_is_running(int(pid)):
                shutil.rmtree(entry.path, ignore_errors=True)
