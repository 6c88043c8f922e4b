"""Load a saved model in a subprocess where ``import asym_st`` is impossible, and dump its embeddings.

Used by tests to prove that a model saved by asym-st needs only sentence-transformers to load.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

_SCRIPT = r"""
import importlib.abc, json, sys
import numpy as np

class _BlockAsymSt(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "asym_st" or name.startswith("asym_st."):
            raise ModuleNotFoundError(f"asym_st is blocked in this process ({name})")
        return None

sys.meta_path.insert(0, _BlockAsymSt())
sys.path = [p for p in sys.path if p not in ("", ".") and not p.startswith(REPO)]
try:
    import asym_st  # noqa: F401
    raise SystemExit("asym_st is importable; the isolation failed")
except ModuleNotFoundError:
    pass

from sentence_transformers import SentenceTransformer
model = SentenceTransformer(MODEL, device="cpu")
texts = json.loads(TEXTS)
out = {
    "query": model.encode_query(texts).tolist(),
    "document": model.encode_document(texts).tolist(),
    "plain": model.encode(texts).tolist(),
    "loaded_modules": sorted(m for m in sys.modules if m.startswith("asym_st")),
}
print("RESULT" + json.dumps(out))
"""


def encode_without_asym_st(model_path: str | Path, texts: list[str], repo_root: str | Path) -> dict[str, np.ndarray]:
    """Return ``{"query", "document", "plain"}`` embeddings computed in a process that cannot import asym_st."""
    script = (
        _SCRIPT.replace("REPO", repr(str(repo_root)))
        .replace("MODEL", repr(str(model_path)))
        .replace("TEXTS", repr(json.dumps(texts)))
    )
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600, cwd="/")
    if completed.returncode != 0:
        raise AssertionError(f"isolated load failed:\n{completed.stdout[-2000:]}\n{completed.stderr[-4000:]}")
    line = next(line for line in completed.stdout.splitlines() if line.startswith("RESULT"))
    result = json.loads(line[len("RESULT") :])
    assert result["loaded_modules"] == [], result["loaded_modules"]
    return {key: np.asarray(result[key], dtype=np.float32) for key in ("query", "document", "plain")}
