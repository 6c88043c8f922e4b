"""What a model card may say about a saved asymmetric model, read from its folder without loading any weights.

Everything here comes from files that asym-st and sentence-transformers wrote (``asym_st_config.json``,
``router_config.json``, module configs, safetensors headers); nothing is guessed. Parameter counts are read from
the safetensors headers (tensor shapes only), so rendering a card never loads the weights.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from asym_st.modeling.config import RECORD_FILE_NAME, AsymmetricModelRecord

__all__ = ["TowerFacts", "ModelFacts", "read_model_facts", "NotAnAsymmetricModelError"]

ROUTER_CONFIG = "router_config.json"


class NotAnAsymmetricModelError(ValueError):
    """The folder is not an asymmetric sentence-transformers model saved by asym-st (or compatible)."""


@dataclass
class TowerFacts:
    """One route of the Router: its module folders and what they are."""

    route: str
    modules: list[str]
    module_types: list[str]
    parameters: int
    num_layers: int | None = None
    hidden_size: int | None = None
    embedding_dimension: int | None = None
    architecture: str | None = None
    max_seq_length: int | None = None


@dataclass
class ModelFacts:
    """The facts about one asymmetric model folder that its cards are made of."""

    path: Path
    record: AsymmetricModelRecord
    query: TowerFacts
    document: TowerFacts
    similarity_fn_name: str | None = None
    prompts: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.path.resolve().name


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error.msg}, line {error.lineno}).") from error


def _count_safetensors(folder: Path) -> int:
    from safetensors import safe_open

    total = 0
    for file in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(str(file), framework="numpy") as handle:  # reads the header only
                total += sum(math.prod(handle.get_slice(key).get_shape()) for key in handle.keys())
        except Exception as error:  # safetensors raises its own error type for a corrupt header
            raise ValueError(f"{file}: not a readable safetensors file ({error}).") from error
    return total


def _tower_facts(root: Path, route: str, modules: list[str], types: dict[str, str]) -> TowerFacts:
    tower = TowerFacts(
        route=route, modules=modules, module_types=[types.get(m, "?").rsplit(".", 1)[-1] for m in modules], parameters=0
    )
    for module, kind in zip(modules, tower.module_types, strict=True):
        folder = root / module
        if not folder.is_dir():
            raise NotAnAsymmetricModelError(f"{root / ROUTER_CONFIG} names module folder {module!r}, which is missing.")
        tower.parameters += _count_safetensors(folder)
        if kind == "Transformer" and (folder / "config.json").is_file():
            config = _read_json(folder / "config.json")
            tower.num_layers = config.get("num_hidden_layers")
            tower.hidden_size = config.get("hidden_size")
            tower.architecture = config.get("model_type")
            st_config = folder / "sentence_bert_config.json"
            if st_config.is_file():
                tower.max_seq_length = _read_json(st_config).get("max_seq_length")
        elif kind == "Pooling" and (folder / "config.json").is_file():
            config = _read_json(folder / "config.json")
            tower.embedding_dimension = config.get("embedding_dimension") or config.get("word_embedding_dimension")
        elif kind == "Dense" and (folder / "config.json").is_file():
            tower.embedding_dimension = _read_json(folder / "config.json").get("out_features")
    return tower


def read_model_facts(model_dir: str | os.PathLike) -> ModelFacts:
    """Read the facts of an asymmetric model folder (``save_asymmetric_model`` output).

    Raises:
        FileNotFoundError: the folder does not exist.
        NotAnAsymmetricModelError: no Router with ``query`` and ``document`` routes, or no asym-st record.
    """
    root = Path(model_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"Model folder {root} does not exist.")
    router_path = root / ROUTER_CONFIG
    if not router_path.is_file():
        raise NotAnAsymmetricModelError(
            f"{root} is not an asymmetric model: {ROUTER_CONFIG} is missing (build one with `asym-st build`)."
        )
    router = _read_json(router_path)
    structure, types = router.get("structure", {}), router.get("types", {})
    missing = [route for route in ("query", "document") if route not in structure]
    if missing:
        raise NotAnAsymmetricModelError(f"{router_path}: the Router has no {' or '.join(missing)} route.")
    record = AsymmetricModelRecord.read(root)
    if record is None:
        raise NotAnAsymmetricModelError(
            f"{root / RECORD_FILE_NAME} is missing: the card needs the teacher and the document-tower fingerprint."
        )
    st_config_path = root / "config_sentence_transformers.json"
    st_config = _read_json(st_config_path) if st_config_path.is_file() else {}
    return ModelFacts(
        path=root,
        record=record,
        query=_tower_facts(root, "query", list(structure["query"]), types),
        document=_tower_facts(root, "document", list(structure["document"]), types),
        similarity_fn_name=st_config.get("similarity_fn_name"),
        prompts={k: v for k, v in (st_config.get("prompts") or {}).items() if v},
    )
