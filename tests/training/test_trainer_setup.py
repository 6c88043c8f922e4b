"""Resuming only the run that wrote the checkpoints: the settings stamp of ``find_resume_checkpoint``."""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

import pytest

from asym_st.training import QEDConfig
from asym_st.training.config_io import ConfigError
from asym_st.training.trainer_setup import (
    RUN_SETTINGS_FILE,
    find_resume_checkpoint,
    resume_checkpoint,
    training_identity,
)


def _checkpoint(folder, step: int) -> str:
    path = folder / f"checkpoint-{step}"
    path.mkdir(parents=True)
    (path / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return str(path)


@pytest.fixture
def config(tmp_path) -> QEDConfig:
    return QEDConfig(
        teacher="t",
        train_queries=["q.txt"],
        output_dir=str(tmp_path / "run"),
        learning_rate=1e-4,
        resume_from_checkpoint="auto",
    )


def test_a_fresh_run_stamps_its_settings_and_resumes_them(tmp_path, config):
    folder = tmp_path / "run.checkpoints"
    assert find_resume_checkpoint("auto", folder, identity=training_identity(config)) is None
    assert json.loads((folder / RUN_SETTINGS_FILE).read_text())["learning_rate"] == 1e-4
    last = _checkpoint(folder, 10)
    _checkpoint(folder, 5)
    assert find_resume_checkpoint("auto", folder, identity=training_identity(config)) == last


def test_checkpoints_of_other_settings_are_refused_with_the_fields_named(tmp_path, config):
    folder = tmp_path / "run.checkpoints"
    find_resume_checkpoint("auto", folder, identity=training_identity(config))
    _checkpoint(folder, 10)
    changed = replace(config, learning_rate=7e-5, teacher="other")
    with pytest.raises(ConfigError, match=r"learning_rate: 0\.0001 there, 7e-05 now.*teacher: 't' there") as error:
        find_resume_checkpoint("auto", folder, identity=training_identity(changed))
    assert "resume_from_checkpoint: none" in str(error.value) and str(folder) in str(error.value)
    # the refused run left the stamp alone; starting afresh on purpose re-stamps the folder
    assert json.loads((folder / RUN_SETTINGS_FILE).read_text())["learning_rate"] == 1e-4
    assert find_resume_checkpoint("none", folder, identity=training_identity(changed)) is None
    assert json.loads((folder / RUN_SETTINGS_FILE).read_text())["learning_rate"] == 7e-5


def test_operational_changes_still_resume(tmp_path, config):
    """More epochs or steps (extending a run), logging and evaluation settings do not change what was trained."""
    folder = tmp_path / "run.checkpoints"
    find_resume_checkpoint("auto", folder, identity=training_identity(config))
    last = _checkpoint(folder, 10)
    extended = replace(config, num_train_epochs=9, max_steps=500, logging_steps=3, eval_datasets=["x:test"])
    assert find_resume_checkpoint("auto", folder, identity=training_identity(extended)) == last


def test_unstamped_checkpoints_resume_with_a_warning(tmp_path, config, caplog):
    folder = tmp_path / "run.checkpoints"
    last = _checkpoint(folder, 4)
    with caplog.at_level(logging.WARNING):
        assert find_resume_checkpoint("auto", folder, identity=training_identity(config)) == last
    assert RUN_SETTINGS_FILE in caplog.text


def test_an_unreadable_stamp_is_named(tmp_path, config):
    folder = tmp_path / "run.checkpoints"
    _checkpoint(folder, 4)
    (folder / RUN_SETTINGS_FILE).write_text("{not json")
    with pytest.raises(ConfigError, match=RUN_SETTINGS_FILE):
        find_resume_checkpoint("auto", folder, identity=training_identity(config))


def test_without_identity_nothing_is_stamped_or_checked(tmp_path):
    folder = tmp_path / "run.checkpoints"
    last = _checkpoint(folder, 4)
    assert find_resume_checkpoint("auto", folder) == last
    assert not (folder / RUN_SETTINGS_FILE).exists()


def test_every_method_checks_its_own_config(config):
    """``resume_checkpoint`` (what QED, EmbedDistill, TAS-Balanced, MD2PR and DAFT call) stamps and checks the
    method's config in its checkpoint folder."""
    assert resume_checkpoint(config) is None
    _checkpoint(Path(config.resolved_checkpoint_dir), 3)
    with pytest.raises(ConfigError, match="distance"):
        resume_checkpoint(replace(config, distance="cosine"))
