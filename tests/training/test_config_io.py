"""Config files and recipe command lines, shared by every method (asym_st.training.config_io)."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import pytest

from asym_st.training import DAFTConfig, EmbedDistillConfig, QEDConfig
from asym_st.training.config_io import ConfigError, parse_recipe_args

REPO = Path(__file__).resolve().parents[2]
CONFIGS = sorted((REPO / "recipes" / "configs").glob("*.yaml"))
RECIPE_OF = {"qed": "qed", "daft": "daft", "embed": "embed_distill", "tas": "tas_balanced", "md2pr": "md2pr"}


def _recipe_config_class(config_file: Path):
    recipe = RECIPE_OF[config_file.stem.split("_")[0]]
    namespace = runpy.run_path(str(REPO / "recipes" / f"{recipe}.py"))  # not __main__: defines CONFIG only
    return namespace["CONFIG"]


@pytest.mark.parametrize("config_file", CONFIGS, ids=[path.stem for path in CONFIGS])
def test_every_recipe_config_parses_with_its_recipe(config_file, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["recipe.py"])
    config_class = _recipe_config_class(config_file)
    config = parse_recipe_args(config_class, ["--config", str(config_file), "--seed", "7"])
    assert isinstance(config, config_class)
    assert config.seed == 7  # the flag given wins over the file


def test_only_given_flags_override_the_file(tmp_path):
    path = tmp_path / "qed.yaml"
    path.write_text("learning_rate: 0.5\nnum_train_epochs: 2\n")
    config = parse_recipe_args(QEDConfig, ["--config", str(path), "--num_train_epochs", "4"])
    assert config.learning_rate == 0.5 and config.num_train_epochs == 4.0
    # Without --config every field is a flag.
    assert parse_recipe_args(QEDConfig, ["--learning_rate", "0.25"]).learning_rate == 0.25


@pytest.mark.parametrize("config_class", [QEDConfig, EmbedDistillConfig, DAFTConfig])
def test_bad_files_name_the_file_and_field(config_class, tmp_path):
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("learning_rat: 0.1\n")
    with pytest.raises(ConfigError, match=r"unknown\.yaml: unknown field\(s\) \['learning_rat'\]"):
        config_class.from_yaml(unknown)
    broken = tmp_path / "broken.yaml"
    broken.write_text("teacher: [unclosed\n")
    with pytest.raises(ConfigError, match="broken.yaml: invalid YAML"):
        config_class.from_yaml(broken)
    listed = tmp_path / "list.yaml"
    listed.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="list.yaml: expected a mapping"):
        config_class.from_yaml(listed)
    with pytest.raises(ConfigError, match="does not exist"):
        config_class.from_yaml(tmp_path / "missing.yaml")


def test_validation_errors_name_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("learning_rate: -1\n")
    with pytest.raises(ConfigError, match="bad.yaml: learning_rate must be positive"):
        QEDConfig.from_yaml(path)


def test_missing_config_path_is_an_error():
    with pytest.raises(ConfigError, match="--config needs a file path"):
        parse_recipe_args(QEDConfig, ["--config"])


@pytest.mark.parametrize("path", sorted((REPO / "recipes" / "accelerate").glob("*.yaml")), ids=lambda path: path.stem)
def test_accelerate_configs_are_valid(path):
    from accelerate.commands.config.config_args import ClusterConfig

    config = ClusterConfig.from_yaml_file(path)
    assert config.num_processes >= 1 and config.compute_environment.value == "LOCAL_MACHINE"
