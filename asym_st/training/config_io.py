"""Reading training configs: YAML files, dicts and command lines, shared by every method's config dataclass."""

from __future__ import annotations

import os
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any, TypeVar

import yaml

__all__ = ["ConfigError", "YamlConfigMixin", "parse_recipe_args"]

ConfigT = TypeVar("ConfigT", bound="YamlConfigMixin")


class ConfigError(ValueError):
    """A configuration value that cannot work; the message names the field (and the file, when there is one)."""


class YamlConfigMixin:
    """``to_dict`` / ``from_dict`` / ``from_yaml`` for a config dataclass: unknown fields and bad YAML get an error
    that names the file and the field; validation errors raised by the dataclass are prefixed with the file."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls: type[ConfigT], data: dict[str, Any], source: str = "config") -> ConfigT:
        known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{source}: unknown field(s) {unknown}; valid fields: {sorted(known)}.")
        try:
            return cls(**data)
        except ConfigError as error:
            if str(error).startswith(f"{source}:"):
                raise
            raise ConfigError(f"{source}: {error}") from error

    @classmethod
    def from_yaml(cls: type[ConfigT], path: str | os.PathLike, **overrides: Any) -> ConfigT:
        """Read a YAML config; keyword ``overrides`` win over the file (e.g. from the command line)."""
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except FileNotFoundError as error:
            raise ConfigError(f"Config file {path} does not exist.") from error
        except yaml.constructor.ConstructorError as error:
            # safe_load never builds Python objects: `!!python/object/apply:os.system [...]` stops here, unrun.
            line = f", line {error.problem_mark.line + 1}" if error.problem_mark else ""
            raise ConfigError(
                f"{path}{line}: refused: {error.problem}. A config is plain data: it is read with yaml.safe_load, "
                "which builds no Python object (no !!python/... or custom tags)."
            ) from error
        except yaml.YAMLError as error:
            raise ConfigError(f"{path}: invalid YAML: {error}") from error
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping of field: value at the top level.")
        return cls.from_dict({**data, **overrides}, source=str(path))


def parse_recipe_args(config_class: type[ConfigT], argv: list[str]) -> ConfigT:
    """A recipe's command line: ``--config FILE`` (YAML) plus ``--field value`` overrides, or every field as a flag.

    ``transformers.HfArgumentParser`` parses the flags; only the flags actually given override the file (the
    parser fills every other field with its default, which must not mask the file's value).
    """
    from transformers import HfArgumentParser  # deferred: transformers is slow to import

    parser = HfArgumentParser(config_class)
    if "--config" not in argv:
        (config,) = parser.parse_args_into_dataclasses(argv)
        return config
    position = argv.index("--config")
    if position + 1 >= len(argv):
        raise ConfigError("--config needs a file path.")
    path, rest = argv[position + 1], argv[:position] + argv[position + 2 :]
    parsed = vars(parser.parse_args(rest)) if rest else {}
    given = {key for key in parsed if any(arg.lstrip("-").replace("-", "_") == key for arg in rest)}
    return config_class.from_yaml(path, **{key: parsed[key] for key in given})
