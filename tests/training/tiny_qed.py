"""One tiny QED job for the tests that train (test_qed, test_faults): 96 random queries, a few steps."""

from __future__ import annotations

import random
from pathlib import Path

from asym_st.training import QEDConfig
from tests.tiny_models import _WORDS

QUERIES = [" ".join(random.Random(i).sample(_WORDS, 5)) for i in range(96)]


def tiny_qed_config(folder: Path, teacher: Path, **overrides) -> QEDConfig:
    """A QED config training on ``QUERIES`` (written to ``folder``) into ``folder/student``; ``overrides`` win."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "queries.txt").write_text("\n".join(QUERIES) + "\n")
    values = dict(
        teacher=str(teacher),
        train_queries=[str(folder / "queries.txt")],
        output_dir=str(folder / "student"),
        cache_dir=str(folder / "cache"),
        max_steps=12,
        per_device_train_batch_size=16,
        learning_rate=3e-4,
        warmup_ratio=0.0,
        save_steps=4,
        logging_steps=2,
        measure_latency=False,
        teacher_batch_size=16,
    )
    return QEDConfig(**{**values, **overrides})
