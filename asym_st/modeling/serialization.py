"""Saving and loading asymmetric models and their towers, atomically and with provenance."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from sentence_transformers import SentenceTransformer

from asym_st.modeling.config import RECORD_FILE_NAME, AsymmetricModelRecord
from asym_st.modeling.fingerprint import fingerprint_modules
from asym_st.modeling.towers import (
    DOCUMENT_ROUTE,
    QUERY_ROUTE,
    extract_tower,
    freeze_tower,
    is_asymmetric,
    tower_modules,
)
from asym_st.utils.io import atomic_directory, atomic_write_json

__all__ = ["save_asymmetric_model", "load_asymmetric_model", "save_tower", "refresh_record", "index_is_compatible"]


def _version() -> str:
    from asym_st import __version__

    return __version__


def refresh_record(model: SentenceTransformer) -> AsymmetricModelRecord:
    """The model's record with fingerprints recomputed from its current weights (after training, say)."""
    record = getattr(model, "asym_st_record", None) or AsymmetricModelRecord()
    record.document_tower_fingerprint = fingerprint_modules(tower_modules(model, DOCUMENT_ROUTE))
    record.query_tower_fingerprint = fingerprint_modules(tower_modules(model, QUERY_ROUTE))
    record.asym_st_version = _version()
    model.asym_st_record = record
    return record


def save_asymmetric_model(
    model: SentenceTransformer,
    path: str | os.PathLike,
    overwrite: bool = False,
    create_model_card: bool = True,
    before_commit: Callable[[Path], None] | None = None,
) -> Path:
    """Save ``model`` to ``path`` so that plain ``SentenceTransformer(path)`` loads it, with its record.

    The folder is written into a temporary sibling and renamed into place, so a crash leaves either no folder
    or the previous one, never a half-written one. An existing non-empty ``path`` needs ``overwrite=True``.
    ``before_commit(folder)`` may add files (evaluation results, a training config) to the folder before it is
    renamed into place, so they appear together with the model or not at all.

    Example::

        save_asymmetric_model(model, "minilm-qed-2l")
        SentenceTransformer("minilm-qed-2l").encode_query(["fast query"])
    """
    record = refresh_record(model)
    with atomic_directory(path, overwrite=overwrite) as tmp:
        model.save(str(tmp), create_model_card=create_model_card)
        atomic_write_json(tmp / RECORD_FILE_NAME, record.to_dict())
        if before_commit is not None:
            before_commit(tmp)
    return Path(path)


def save_tower(model: SentenceTransformer, route: str, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Save one tower (``"query"`` or ``"document"``) as a standalone sentence-transformers folder.

    The record is saved too, with ``extra["tower"]`` naming the route, so that an index built with a saved
    document tower can be matched to asymmetric models by fingerprint.
    """
    tower = extract_tower(model, route, copy_modules=False)
    record = (
        AsymmetricModelRecord.from_dict(refresh_record(model).to_dict())
        if is_asymmetric(model)
        else AsymmetricModelRecord()
    )
    record.extra["tower"] = route
    with atomic_directory(path, overwrite=overwrite) as tmp:
        tower.save(str(tmp))
        atomic_write_json(tmp / RECORD_FILE_NAME, record.to_dict())
    return Path(path)


def load_asymmetric_model(path: str | os.PathLike, **kwargs) -> SentenceTransformer:
    """``SentenceTransformer(path, **kwargs)`` plus the asym-st record (``model.asym_st_record``), if any.

    The document tower is frozen again when the record says it was frozen (``requires_grad`` is not saved).
    """
    model = SentenceTransformer(os.fspath(path), **kwargs)
    model._asym_st_source = os.fspath(path)
    record = AsymmetricModelRecord.read(path) if os.path.isdir(path) else None
    if record is not None:
        model.asym_st_record = record
        if record.document_tower_frozen and is_asymmetric(model):
            freeze_tower(model, DOCUMENT_ROUTE)
    return model


def index_is_compatible(model: SentenceTransformer, index_fingerprint: str) -> bool:
    """True if a document index built by a tower with ``index_fingerprint`` is valid for ``model``'s documents."""
    return fingerprint_modules(tower_modules(model, DOCUMENT_ROUTE)) == index_fingerprint
