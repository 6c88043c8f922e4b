"""Configs: how to build a query tower, and the provenance record saved with an asymmetric model."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from asym_st.modeling.layers import LAYER_STRATEGIES, LayerStrategy

__all__ = ["QueryTowerConfig", "AsymmetricModelRecord", "RECORD_FILE_NAME"]

# Saved next to modules.json. Plain sentence-transformers ignores it; asym-st reads it back.
RECORD_FILE_NAME = "asym_st_config.json"


@dataclass
class QueryTowerConfig:
    """How the query tower is made.

    Args:
        strategy: which teacher layers to keep: ``first_last`` (QED, default), ``first_k``, ``evenly_spaced``
            or ``explicit``.
        num_layers: how many layers to keep (for every strategy except ``explicit``).
        layers: explicit layer indices, e.g. ``[0, 5]``; setting them implies ``strategy="explicit"``.
        encoder: build the query tower from another model instead of the teacher (heterogeneous towers, as in
            DAFT): a sentence-transformers model or a plain transformers checkpoint (Hub id or path). ``layers``
            / ``num_layers`` then truncate this encoder only when ``truncate_encoder=True``.
        truncate_encoder: apply the layer selection to ``encoder`` as well.
        allow_different_tokenizers: heterogeneous towers whose tokenizers differ (vocabulary, casing) are refused
            unless this is set, because token-level losses and shared-vocabulary tricks silently break then.
        max_seq_length: the query tower's maximum length (queries are short); ``None`` keeps the teacher's.
    """

    strategy: LayerStrategy = "first_last"
    num_layers: int = 2
    layers: list[int] | None = None
    encoder: str | None = None
    truncate_encoder: bool = False
    allow_different_tokenizers: bool = False
    max_seq_length: int | None = None

    def __post_init__(self) -> None:
        if self.strategy not in LAYER_STRATEGIES:
            raise ValueError(
                f"QueryTowerConfig.strategy={self.strategy!r}; choose one of {', '.join(LAYER_STRATEGIES)}."
            )
        if self.layers is not None:
            self.strategy = "explicit"


@dataclass
class AsymmetricModelRecord:
    """What asym-st records about how an asymmetric model was made (``asym_st_config.json``).

    ``document_tower_fingerprint`` identifies the document tower's function (see
    :func:`asym_st.modeling.fingerprint.fingerprint_modules`): an index built by a model with the same
    fingerprint, e.g. by the teacher itself, is valid for this model.
    """

    teacher: str | None = None
    teacher_revision: str | None = None
    query_layers: list[int] | None = None
    teacher_num_layers: int | None = None
    layer_strategy: str | None = None
    query_encoder: str | None = None
    document_tower_fingerprint: str | None = None
    query_tower_fingerprint: str | None = None
    document_tower_frozen: bool = True
    method: str | None = None
    asym_st_version: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AsymmetricModelRecord:
        known = {f.name for f in fields(cls)}
        unknown = {k: v for k, v in data.items() if k not in known}
        record = cls(**{k: v for k, v in data.items() if k in known})
        record.extra.update(unknown)  # written by a newer asym-st: kept, not lost
        return record

    @classmethod
    def read(cls, folder: str | Path) -> AsymmetricModelRecord | None:
        """Read the record from a model folder; ``None`` if the folder has none."""
        path = Path(folder) / RECORD_FILE_NAME
        if not path.is_file():
            return None
        try:
            return cls.from_dict(json.loads(path.read_text(encoding="utf-8")))
        except (json.JSONDecodeError, TypeError) as error:
            raise ValueError(f"{path} is not a valid asym-st record: {error}") from error
