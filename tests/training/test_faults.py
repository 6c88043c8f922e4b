"""Faults survived: a real ``kill -9`` (SIGKILL, in a subprocess) during training, during a checkpoint, during a
model save and during a result-file write leaves nothing half-written where a reader would pick it up, and a
resumed training run ends with the same model as an uninterrupted one.

The dying process is tests/training/die_during.py; corpus encoding has its own kill test (sharded encoding).
Each subprocess starts a fresh interpreter (about 10 s of imports on 2 cores), hence the ``slow`` marks.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from sentence_transformers import SentenceTransformer
from transformers import TrainerCallback

from asym_st import build_asymmetric_model, load_asymmetric_model, save_asymmetric_model, tower_modules
from asym_st.modeling.config import RECORD_FILE_NAME
from asym_st.training import QEDConfig, distill_query_tower
from asym_st.utils.io import atomic_write_json
from tests.training.tiny_qed import QUERIES, tiny_qed_config

REPO_ROOT = Path(__file__).resolve().parents[2]
MAX_STEPS, SAVE_STEPS = 6, 2


def _die_during(*args: str) -> subprocess.CompletedProcess:
    """Run tests/training/die_during.py in a fresh interpreter; it is expected to SIGKILL itself."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    process = subprocess.run(
        [sys.executable, "-m", "tests.training.die_during", *map(str, args)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert process.returncode == -9, f"expected death by SIGKILL, got {process.returncode}:\n{process.stderr[-3000:]}"
    assert "dying" in process.stdout and "finished without dying" not in process.stdout, process.stdout
    return process


def _config(folder: Path, teacher: Path, **overrides) -> QEDConfig:
    settings = dict(max_steps=MAX_STEPS, save_steps=SAVE_STEPS, logging_steps=SAVE_STEPS, teacher_batch_size=32)
    config = tiny_qed_config(folder, teacher, **{**settings, "resume_from_checkpoint": "auto", **overrides})
    (folder / "config.yaml").write_text(yaml.safe_dump(config.to_dict()))
    return config


def _query_tower_state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for m in tower_modules(model, "query") for k, v in m.state_dict().items()}


class _StepRecorder(TrainerCallback):
    def __init__(self):
        self.steps: list[int] = []

    def on_step_end(self, args, state, control, **kwargs):
        self.steps.append(state.global_step)


@pytest.fixture(scope="module")
def uninterrupted(tiny_teacher_path, tmp_path_factory) -> dict[str, torch.Tensor]:
    """The query tower of the same QED run, never interrupted."""
    config = _config(tmp_path_factory.mktemp("uninterrupted"), tiny_teacher_path)
    return _query_tower_state(distill_query_tower(config, evaluate=False).model)


def _resume_and_compare(config: QEDConfig, expected: dict[str, torch.Tensor], first_step: int) -> None:
    recorder = _StepRecorder()
    resumed = distill_query_tower(config, callbacks=[recorder], evaluate=False)
    assert recorder.steps == list(range(first_step, MAX_STEPS + 1)), "did not resume from the checkpoint"
    assert resumed.log_history and resumed.log_history[-1]["step"] == MAX_STEPS
    actual = _query_tower_state(resumed.model)
    assert actual.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], atol=1e-5, rtol=1e-4, msg=name)
    saved = SentenceTransformer(config.output_dir)  # the final folder is complete and loads with plain ST
    np.testing.assert_allclose(
        saved.encode_query(QUERIES[:4]), resumed.model.encode_query(QUERIES[:4]), atol=1e-5, rtol=1e-4
    )


def _checkpoints(config: QEDConfig) -> dict[str, set[str]]:
    folder = Path(config.resolved_checkpoint_dir)
    return {p.name: {f.name for f in p.iterdir()} for p in sorted(folder.iterdir()) if p.is_dir()}


@pytest.mark.slow  # a fresh interpreter imports torch and sentence-transformers
def test_kill_during_training_resumes_to_the_same_model(tiny_teacher_path, tmp_path, uninterrupted):
    config = _config(tmp_path, tiny_teacher_path)
    _die_during("training", tmp_path / "config.yaml", 3)  # after checkpoint-2, before checkpoint-4
    checkpoints = _checkpoints(config)
    assert list(checkpoints) == ["checkpoint-2"] and "trainer_state.json" in checkpoints["checkpoint-2"]
    assert not Path(config.output_dir).exists(), "no model folder until the run completes"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("student") and p.name != "student.checkpoints"]

    _resume_and_compare(config, uninterrupted, first_step=3)


@pytest.mark.slow  # a fresh interpreter imports torch and sentence-transformers
def test_kill_while_writing_a_checkpoint_resumes_from_the_previous_one(tiny_teacher_path, tmp_path, uninterrupted):
    config = _config(tmp_path, tiny_teacher_path)
    _die_during("checkpoint", tmp_path / "config.yaml", 4)
    checkpoints = _checkpoints(config)
    # checkpoint-4 is half-written: weights and optimiser, but no RNG state and no trainer_state.json.
    assert "trainer_state.json" in checkpoints["checkpoint-2"]
    assert "optimizer.pt" in checkpoints["checkpoint-4"] and "trainer_state.json" not in checkpoints["checkpoint-4"]

    _resume_and_compare(config, uninterrupted, first_step=3)  # from checkpoint-2, skipping the broken one
    assert "trainer_state.json" in _checkpoints(config)[f"checkpoint-{MAX_STEPS}"]


def _partials(folder: Path, name: str) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.name.startswith(f".{name}.") and p.name.endswith(".partial"))


@pytest.mark.slow  # a fresh interpreter imports torch and sentence-transformers
def test_kill_during_a_fresh_save_leaves_no_model_folder(tiny_teacher_path, tmp_path):
    target = tmp_path / "model"
    _die_during("save", tiny_teacher_path, target)
    assert not target.exists()
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith(".")] == []  # nothing visible
    (partial,) = _partials(tmp_path, "model")  # what the dead process was writing, hidden
    assert list(partial.rglob("*.safetensors")) and not (partial / RECORD_FILE_NAME).exists()

    # The next save to the same path succeeds and removes the dead process's temporary folder.
    save_asymmetric_model(build_asymmetric_model(tiny_teacher_path), target)
    assert _partials(tmp_path, "model") == [] and sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    assert load_asymmetric_model(target).asym_st_record.query_layers == [0, 3]


@pytest.mark.slow  # a fresh interpreter imports torch and sentence-transformers
def test_kill_during_an_overwriting_save_keeps_the_previous_model(tiny_teacher_path, tmp_path):
    target = tmp_path / "model"
    previous = build_asymmetric_model(tiny_teacher_path)  # query layers [0, 3]; the dying save writes [0, 1]
    save_asymmetric_model(previous, target)
    before = {p.relative_to(target): p.read_bytes() for p in target.rglob("*") if p.is_file()}

    _die_during("save", tiny_teacher_path, target, "--overwrite")
    assert {p.relative_to(target): p.read_bytes() for p in target.rglob("*") if p.is_file()} == before
    assert len(_partials(tmp_path, "model")) == 1
    queries = QUERIES[:4]
    np.testing.assert_allclose(
        SentenceTransformer(str(target)).encode_query(queries), previous.encode_query(queries), atol=1e-6
    )
    assert load_asymmetric_model(target).asym_st_record.query_layers == [0, 3]


def test_kill_during_a_result_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "results.json"
    atomic_write_json(path, {"version": "old"})
    _die_during("json", path)
    assert json.loads(path.read_text()) == {"version": "old"}
    (leftover,) = [p for p in tmp_path.iterdir() if p != path]  # the half-written temporary file, hidden
    assert leftover.name.startswith(".results.json.") and leftover.name.endswith(".tmp")
    assert 0 < leftover.stat().st_size < 10_000
    atomic_write_json(path, {"version": "new"})
    assert json.loads(path.read_text()) == {"version": "new"}
