"""Which teacher layers a query tower keeps, and how a transformer is cut down to them.

Strategies (``num_layers`` = n, teacher depth = L):

* ``first_last`` (QED's initialisation, the default): the first n-1 layers and the last one, i.e. ``[0, L-1]``
  for n = 2. Keeping the last layer keeps the teacher's output geometry, which is what the frozen document
  tower's index expects.
* ``first_k``: layers ``0 .. n-1`` (the usual "truncate the top" baseline).
* ``evenly_spaced``: n layers spread evenly from 0 to L-1.
* ``explicit``: a user-given increasing list of layer indices.
"""

from __future__ import annotations

import copy
from typing import Literal

import numpy as np
import torch
from torch import nn

__all__ = ["LayerStrategy", "resolve_layers", "truncate_transformer", "find_layer_list", "num_transformer_layers"]

LayerStrategy = Literal["first_last", "first_k", "evenly_spaced", "explicit"]
LAYER_STRATEGIES: tuple[str, ...] = ("first_last", "first_k", "evenly_spaced", "explicit")

# Config attributes that hold the depth, across architectures (BERT/MPNet/RoBERTa, DistilBERT, T5/others).
_DEPTH_ATTRIBUTES = ("num_hidden_layers", "n_layers", "num_layers")


def resolve_layers(
    num_teacher_layers: int,
    strategy: LayerStrategy = "first_last",
    num_layers: int = 2,
    layers: list[int] | None = None,
) -> list[int]:
    """Return the sorted list of teacher layer indices that the query tower keeps.

    Args:
        num_teacher_layers: depth L of the teacher.
        strategy: one of ``first_last``, ``first_k``, ``evenly_spaced``, ``explicit``.
        num_layers: how many layers to keep (ignored for ``explicit``).
        layers: explicit indices; giving them implies ``strategy="explicit"``. Negative indices count from the end.

    Raises:
        ValueError: unknown strategy, zero layers, indices out of range, duplicated or not increasing.
    """
    if layers is not None:
        strategy = "explicit"
    if strategy not in LAYER_STRATEGIES:
        raise ValueError(f"Unknown layer strategy {strategy!r}; choose one of {', '.join(LAYER_STRATEGIES)}.")
    if strategy == "explicit":
        if layers is None:
            raise ValueError("strategy='explicit' needs a list of layer indices (e.g. layers=[0, 5]).")
        chosen = [int(i) + num_teacher_layers if int(i) < 0 else int(i) for i in layers]
        _validate_explicit(chosen, list(layers), num_teacher_layers)
        return chosen
    if num_layers < 1:
        raise ValueError(f"A query tower needs at least one layer; got num_layers={num_layers}.")
    if num_layers > num_teacher_layers:
        raise ValueError(f"num_layers={num_layers} exceeds the teacher's {num_teacher_layers} layers.")
    if strategy == "first_k":
        return list(range(num_layers))
    if strategy == "first_last":
        return list(range(num_layers - 1)) + [num_teacher_layers - 1] if num_layers > 1 else [num_teacher_layers - 1]
    spaced = np.linspace(0, num_teacher_layers - 1, num_layers).round().astype(int).tolist()
    return sorted(set(spaced))


def _validate_explicit(chosen: list[int], given: list[int], depth: int) -> None:
    if not chosen:
        raise ValueError("The query tower needs at least one layer; the explicit layer list is empty.")
    bad = [g for g, c in zip(given, chosen, strict=True) if not 0 <= c < depth]
    if bad:
        raise ValueError(
            f"Layer indices {bad} are out of range for a teacher with {depth} layers (valid: 0..{depth - 1})."
        )
    duplicates = sorted({c for c in chosen if chosen.count(c) > 1})
    if duplicates:
        raise ValueError(f"Layer indices are duplicated: {duplicates} (given {given}).")
    if chosen != sorted(chosen):
        raise ValueError(f"Layer indices must be increasing (they are applied in order); got {given}.")


def find_layer_list(model: nn.Module) -> tuple[nn.Module, str, nn.ModuleList]:
    """Find the stack of transformer blocks inside a Hugging Face model.

    Returns ``(parent, attribute_name, module_list)``. We look for the ``nn.ModuleList`` whose length equals the
    configured depth, because transformers has no single attribute name for it across architectures
    (``encoder.layer`` for BERT/MPNet, ``transformer.layer`` for DistilBERT, ``layers`` for ModernBERT, ...).
    """
    depth = num_transformer_layers(model)
    candidates = [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent.named_children()
        if isinstance(child, nn.ModuleList) and len(child) == depth
    ]
    if not candidates:
        raise ValueError(f"Could not find the {depth} transformer layers inside {type(model).__name__}.")
    # For encoder-decoder models the first stack in module order is the encoder's, which is the one we want.
    return candidates[0]


def num_transformer_layers(model: nn.Module) -> int:
    """The depth of a Hugging Face model, read from its config."""
    config = getattr(model, "config", None)
    for attribute in _DEPTH_ATTRIBUTES:
        value = getattr(config, attribute, None)
        if isinstance(value, int):
            return value
    raise ValueError(f"{type(model).__name__} has no layer count in its config ({', '.join(_DEPTH_ATTRIBUTES)}).")


def truncate_transformer(hf_model: nn.Module, layers: list[int], inplace: bool = False) -> nn.Module:
    """Return ``hf_model`` (a deep copy unless ``inplace``) keeping only ``layers`` (in order), config updated.

    The result saves with ``save_pretrained`` and reloads with plain ``AutoModel``: the kept layers are renumbered
    0..n-1 and the config's depth (and per-layer lists such as ``layer_types``) are cut to match.
    """
    depth = num_transformer_layers(hf_model)
    resolve_layers(depth, layers=layers)  # validates
    student = hf_model if inplace else copy.deepcopy(hf_model)
    parent, attribute, stack = find_layer_list(student)
    kept = nn.ModuleList([stack[i] for i in layers])
    setattr(parent, attribute, kept)
    _renumber_layer_indices(kept)
    config = student.config
    for name in _DEPTH_ATTRIBUTES:
        if isinstance(getattr(config, name, None), int):
            setattr(config, name, len(layers))
    for name, value in list(vars(config).items()):
        # Per-layer settings (e.g. ModernBERT's / Gemma's layer_types) must follow the kept layers.
        if isinstance(value, list) and len(value) == depth and name != "architectures":
            setattr(config, name, [value[i] for i in layers])
    return student


def _renumber_layer_indices(stack: nn.ModuleList) -> None:
    # Some attention implementations keep their own layer_idx (used for caches); keep them consistent.
    for new_index, block in enumerate(stack):
        for module in block.modules():
            if isinstance(getattr(module, "layer_idx", None), int):
                module.layer_idx = new_index


@torch.no_grad()
def count_parameters(module: nn.Module) -> int:
    """Number of parameters of ``module`` (shared tensors counted once)."""
    return sum(p.numel() for p in {id(p): p for p in module.parameters()}.values())
