"""Content fingerprints of towers.

A document index is valid for a model exactly when the model's document tower computes the same function as
the tower that built the index. We approximate "same function" by "same modules, same settings that change
embeddings, same weights": the fingerprint is a SHA-256 over, for each module in order, its class name, its
embedding-relevant settings (max sequence length, pooling mode, ...) and every tensor of its ``state_dict``
(name, dtype, shape, raw bytes). It is independent of where the tower sits (standalone model or a Router route)
and stable across save/load.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable

import torch
from torch import nn

__all__ = ["fingerprint_modules", "fingerprint_tensor_dict", "short_fingerprint"]

# Module settings that change the embedding a module produces (other settings, like paths, do not).
_EMBEDDING_RELEVANT_KEYS = (
    "max_seq_length",
    "do_lower_case",
    "pooling_mode",
    "include_prompt",
    "in_features",
    "out_features",
    "activation_function",
    "module_input_name",
    "module_output_name",
)


def _relevant_config(module: nn.Module) -> dict:
    config = module.get_config_dict() if hasattr(module, "get_config_dict") else {}
    relevant = {key: config[key] for key in _EMBEDDING_RELEVANT_KEYS if key in config}
    if hasattr(module, "max_seq_length"):
        relevant["max_seq_length"] = module.max_seq_length
    return relevant


def _update_with_tensor(digest: hashlib._Hash, name: str, tensor: torch.Tensor) -> None:
    tensor = tensor.detach().cpu().contiguous()
    digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
    # Viewing as bytes works for every dtype (numpy has no bfloat16).
    digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())


def fingerprint_tensor_dict(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 hex digest of a name → tensor mapping, independent of insertion order."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        _update_with_tensor(digest, name, tensors[name])
    return digest.hexdigest()


def fingerprint_modules(modules: Iterable[nn.Module]) -> str:
    """Fingerprint a tower given as its ordered list of sentence-transformers modules.

    Example::

        from sentence_transformers import SentenceTransformer
        teacher = SentenceTransformer("sentence-transformers/all-MiniLM-L6-v2")
        fingerprint_modules(teacher)  # a SentenceTransformer iterates over its modules
    """
    digest = hashlib.sha256()
    for index, module in enumerate(modules):
        header = {"index": index, "type": type(module).__name__, "config": _relevant_config(module)}
        digest.update(json.dumps(header, sort_keys=True, default=str).encode())
        state = module.state_dict()
        for name in sorted(state):
            _update_with_tensor(digest, name, state[name])
    return digest.hexdigest()


def short_fingerprint(fingerprint: str, length: int = 12) -> str:
    """The first ``length`` hex digits, for file names and display."""
    return fingerprint[:length]
