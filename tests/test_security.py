"""Security defaults (see docs/security.md): custom model code runs only when the user asks, what asym-st saves is
safetensors, no token is logged or written, and every input (models, configs, score files) is data, never run.

Two kinds of checks: a static audit of asym_st/'s source (``ast``, so that comments, docstrings and method names
such as ``model.eval()`` cannot fool it), and behavioural tests on tiny models. The audit is itself tested on a
snippet holding each unsafe pattern, so that an empty finding list means something.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import inspect
import json
import shutil
from pathlib import Path

import pytest

from asym_st import build_asymmetric_model, load_asymmetric_model, save_asymmetric_model
from tests.conftest import REPO_ROOT
from tests.training.tiny_qed import tiny_qed_config

LIBRARY = REPO_ROOT / "asym_st"

# ----------------------------------------------------------------------------------------------- static audit

FORBIDDEN_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "marshal", "shelve"}
FORBIDDEN_CALLS = {
    "eval": "eval() executes a string",
    "exec": "exec() executes a string",
    "__import__": "__import__ imports a module chosen at run time",
    "importlib.import_module": "import_module imports a module chosen at run time",
    "os.system": "os.system runs a shell command",
    "os.popen": "os.popen runs a shell command",
    "torch.save": "torch.save writes a pickle; save weights with safetensors",
}
# What asym-st may use from PyYAML: the safe loader and dumper, and the exception types.
YAML_ALLOWED = {
    "safe_load",
    "safe_load_all",
    "safe_dump",
    "safe_dump_all",
    "SafeLoader",
    "CSafeLoader",
    "SafeDumper",
    "CSafeDumper",
    "YAMLError",
    "MarkedYAMLError",
    "constructor",
    "error",
}
TOKEN_NAMES = {"token", "hf_token", "hub_token", "api_token", "access_token", "auth_token", "use_auth_token"}
# Calls whose arguments end up in a log, on the terminal or in a file.
SINK_CALLS = {
    "print",
    "debug",
    "info",
    "warning",
    "warn",
    "error",
    "exception",
    "critical",
    "log",
    "write",
    "write_text",
    "write_bytes",
    "dump",
    "dumps",
    "atomic_write_json",
    "atomic_write_text",
    "atomic_write_bytes",
}


def _is_constant(node: ast.AST | None, value) -> bool:
    return isinstance(node, ast.Constant) and node.value is value


def _mentions_token(node: ast.AST) -> bool:
    for child in ast.walk(node):
        if isinstance(child, ast.Name) and child.id in TOKEN_NAMES:
            return True
        if isinstance(child, ast.Attribute) and child.attr in TOKEN_NAMES:
            return True
    return False


class _Audit(ast.NodeVisitor):
    """Collects ``file:line: problem`` for one module; names are resolved through the module's imports."""

    def __init__(self, filename: str):
        self.filename = filename
        self.aliases: dict[str, str] = {}
        self.findings: list[str] = []
        self._approved: set[int] = set()  # yaml.load attribute nodes already judged as a call

    def flag(self, node: ast.AST, problem: str) -> None:
        self.findings.append(f"{self.filename}:{getattr(node, 'lineno', 0)}: {problem}")

    def dotted(self, node: ast.AST) -> str | None:
        if isinstance(node, ast.Name):
            return self.aliases.get(node.id, node.id)
        if isinstance(node, ast.Attribute):
            base = self.dotted(node.value)
            return f"{base}.{node.attr}" if base else None
        return None

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            root = alias.name.split(".")[0]
            self.aliases[alias.asname or root] = alias.name if alias.asname else root
            if root in FORBIDDEN_MODULES:
                self.flag(node, f"imports {alias.name} (deserialising it can execute code)")

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        module = node.module or ""
        for alias in node.names:
            self.aliases[alias.asname or alias.name] = f"{module}.{alias.name}"
            if module.split(".")[0] in FORBIDDEN_MODULES:
                self.flag(node, f"imports from {module} (deserialising it can execute code)")
            if module == "yaml" and alias.name not in YAML_ALLOWED:
                self.flag(node, f"imports yaml.{alias.name}; only yaml.safe_load / safe_dump are allowed")

    def visit_Call(self, node: ast.Call) -> None:
        name = self.dotted(node.func) or ""
        keywords = {k.arg: k.value for k in node.keywords if k.arg}
        if name in FORBIDDEN_CALLS:
            self.flag(node, FORBIDDEN_CALLS[name])
        if name.startswith(("os.exec", "os.spawn")):
            self.flag(node, f"{name} runs a program")
        if _is_constant(keywords.get("shell"), True):
            self.flag(node, "shell=True runs a shell command")
        if name in ("yaml.load", "yaml.load_all"):
            loader = self.dotted(keywords["Loader"]) if "Loader" in keywords else None
            self._approved.add(id(node.func))  # judged here, once
            if loader not in ("yaml.SafeLoader", "yaml.CSafeLoader"):
                self.flag(node, f"{name} without Loader=yaml.SafeLoader; use yaml.safe_load")
        if name == "torch.load" and not _is_constant(keywords.get("weights_only"), True):
            self.flag(node, "torch.load without weights_only=True unpickles arbitrary objects")
        if name.startswith("numpy.") and name.split(".")[-1] in ("load", "save", "savez", "savez_compressed"):
            if "allow_pickle" in keywords and not _is_constant(keywords["allow_pickle"], False):
                self.flag(node, f"{name} with allow_pickle not False")
        if "trust_remote_code" in keywords and _is_constant(keywords["trust_remote_code"], True):
            self.flag(node, "trust_remote_code=True hard-coded; it must come from the user")
        if name.endswith(".from_pretrained") and "trust_remote_code" not in keywords:
            # transformers' default is None, which prompts on stdin when a model asks for custom code.
            self.flag(node, "from_pretrained without an explicit trust_remote_code")
        for flag in ("safe_serialization", "save_safetensors"):
            if flag in keywords and not _is_constant(keywords[flag], True):
                self.flag(node, f"{flag} is not True: models are saved as safetensors only")
        if name.endswith("add_argument") and any(_is_constant_str(a, "--trust-remote-code") for a in node.args):
            action = keywords.get("action")
            if not (isinstance(action, ast.Constant) and action.value == "store_true") or "default" in keywords:
                self.flag(node, "--trust-remote-code must be an off-by-default store_true flag")
        if name.split(".")[-1] in SINK_CALLS and any(_mentions_token(a) for a in [*node.args, *keywords.values()]):
            self.flag(node, f"a token is passed to {name}() (logged, printed or written)")
        self.generic_visit(node)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        name = self.dotted(node)
        if name and name.startswith("yaml.") and id(node) not in self._approved:
            if name.split(".")[1] not in YAML_ALLOWED:
                self.flag(node, f"{name}: only yaml.safe_load / safe_dump are allowed")
        self.generic_visit(node)

    def visit_Dict(self, node: ast.Dict) -> None:
        for key, value in zip(node.keys, node.values, strict=True):
            if _is_constant_str(key, "trust_remote_code") and _is_constant(value, True):
                self.flag(node, "trust_remote_code: True hard-coded; it must come from the user")
        self.generic_visit(node)

    def visit_JoinedStr(self, node: ast.JoinedStr) -> None:
        if any(isinstance(part, ast.FormattedValue) and _mentions_token(part.value) for part in node.values):
            self.flag(node, "a token is formatted into a string (it would reach a message, a log or a file)")
        self.generic_visit(node)

    def _check_arguments(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        arguments = node.args
        positional = arguments.posonlyargs + arguments.args
        defaults = [None] * (len(positional) - len(arguments.defaults)) + list(arguments.defaults)
        pairs = list(zip(positional, defaults, strict=True)) + list(
            zip(arguments.kwonlyargs, arguments.kw_defaults, strict=True)
        )
        for argument, default in pairs:
            # A required parameter (a private helper's) leaves the choice to its caller; a default must be False.
            if argument.arg == "trust_remote_code" and default is not None and not _is_constant(default, False):
                self.flag(node, f"{node.name}(): trust_remote_code must default to False")

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self._check_arguments(node)
        self.generic_visit(node)

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        # A config dataclass field: `trust_remote_code: bool = False` / `= field(default=False, ...)`.
        if isinstance(node.target, ast.Name) and node.target.id == "trust_remote_code" and node.value is not None:
            if any(_is_constant(child, True) for child in ast.walk(node.value)):
                self.flag(node, "a trust_remote_code field must default to False")
        self.generic_visit(node)


def _is_constant_str(node: ast.AST | None, text: str) -> bool:
    return isinstance(node, ast.Constant) and node.value == text


def audit_source(source: str, filename: str) -> list[str]:
    audit = _Audit(filename)
    audit.visit(ast.parse(source, filename=filename))
    return audit.findings


def _library_files() -> list[Path]:
    return sorted(LIBRARY.rglob("*.py"))


def test_library_source_passes_the_security_audit():
    files = _library_files()
    assert len(files) > 50
    findings = [f for path in files for f in audit_source(path.read_text(), str(path.relative_to(REPO_ROOT)))]
    assert findings == []


UNSAFE_SNIPPET = """
import pickle
import numpy as np
import torch
import yaml
from yaml import load as yaml_load
from transformers import AutoModel

def loader(name, trust_remote_code=True):
    return AutoModel.from_pretrained(name, trust_remote_code=True)

def read(path, token):
    config = yaml.load(open(path))
    unsafe = yaml.unsafe_load(open(path))
    fine = yaml.load(open(path), Loader=yaml.SafeLoader)
    state = torch.load(path)
    array = np.load(path, allow_pickle=True)
    eval("1 + 1")
    exec("x = 1")
    logger.info("pushing with %s", token)
    print(f"token={token}")
    model.save_pretrained(path, safe_serialization=False)
    torch.save(state, path)
    kwargs = {"trust_remote_code": True}
    model.eval()  # a method called eval is fine
    tokenizer = AutoTokenizer.from_pretrained(path)
    return torch.load(path, weights_only=True)
"""


def test_the_audit_catches_each_unsafe_pattern():
    findings = audit_source(UNSAFE_SNIPPET, "snippet.py")
    expected = [
        (2, "imports pickle"),
        (6, "imports yaml.load"),
        (9, "loader(): trust_remote_code must default to False"),
        (10, "trust_remote_code=True hard-coded"),
        (13, "yaml.load without Loader=yaml.SafeLoader"),
        (14, "yaml.unsafe_load"),
        (16, "torch.load without weights_only=True"),
        (17, "allow_pickle not False"),
        (18, "eval() executes"),
        (19, "exec() executes"),
        (20, "a token is passed to logger.info()"),
        (21, "a token is formatted into a string"),
        (22, "safe_serialization is not True"),
        (23, "torch.save writes a pickle"),
        (24, "trust_remote_code: True hard-coded"),
        (26, "from_pretrained without an explicit trust_remote_code"),
    ]
    for line, problem in expected:
        assert any(f.startswith(f"snippet.py:{line}: ") and problem in f for f in findings), (line, problem, findings)
    # yaml.load with SafeLoader, model.eval() and torch.load(weights_only=True) are accepted.
    assert not [f for f in findings if f.startswith(("snippet.py:15:", "snippet.py:25:", "snippet.py:27:"))]
    assert len(findings) == len(expected) + 1  # print(f"...{token}") is also a token passed to print()


# -------------------------------------------------------------------------------------------- trust_remote_code


def _functions_with_trust_remote_code() -> list[tuple[str, str]]:
    """(module, qualified name) of every function or method in asym_st/ with a trust_remote_code parameter."""
    found = []
    for path in _library_files():
        module = ".".join(path.relative_to(REPO_ROOT).with_suffix("").parts).removesuffix(".__init__")
        tree = ast.parse(path.read_text())
        scopes = [(node, "") for node in tree.body]
        while scopes:
            node, prefix = scopes.pop()
            if isinstance(node, ast.ClassDef):
                scopes += [(child, f"{prefix}{node.name}.") for child in node.body]
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                arguments = node.args.posonlyargs + node.args.args + node.args.kwonlyargs
                if any(a.arg == "trust_remote_code" for a in arguments):
                    found.append((module, prefix + node.name))
    return sorted(found)


def test_loaders_default_to_trust_remote_code_false():
    """Every public function or method of asym_st/ that takes trust_remote_code defaults it to False."""
    found = [(m, q) for m, q in _functions_with_trust_remote_code() if not any(p.startswith("_") for p in q.split("."))]
    names = {qualname for _, qualname in found}
    assert {"build_asymmetric_model", "load_sentence_transformer"} <= names, found
    for module, qualname in found:
        function = importlib.import_module(module)
        for part in qualname.split("."):
            function = getattr(function, part)
        default = inspect.signature(function).parameters["trust_remote_code"].default
        assert default is False, f"{module}.{qualname}: trust_remote_code defaults to {default!r}"


def test_cli_trust_remote_code_is_off_unless_given():
    from asym_st.cli import build_parser

    parser = build_parser()
    (subparsers,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    flagged = {}
    for command, subparser in subparsers.choices.items():
        for action in subparser._actions:
            if action.dest == "trust_remote_code":
                flagged[command] = action
                assert action.default is False and isinstance(action, argparse._StoreTrueAction), command
    assert "build" in flagged
    assert parser.parse_args(["build", "teacher", "-o", "out"]).trust_remote_code is False
    assert parser.parse_args(["build", "teacher", "-o", "out", "--trust-remote-code"]).trust_remote_code is True


EVIL_CODE = "open({marker!r}, 'w').write('executed')\n"


def _model_with_custom_code(st_model: Path, folder: Path, marker: Path, vector: str) -> Path:
    """A copy of a tiny model whose loading would import a Python file of the model folder (which writes
    ``marker``): through modules.json (a custom module class) or config.json's ``auto_map`` (a custom AutoModel)."""
    folder = Path(shutil.copytree(st_model, folder))
    if vector == "modules.json":
        (folder / "custom_pooling.py").write_text(
            EVIL_CODE.format(marker=str(marker))
            + "from sentence_transformers.sentence_transformer.modules import Pooling\n\n\n"
            + "class CustomPooling(Pooling):\n    pass\n"
        )
        modules = json.loads((folder / "modules.json").read_text())
        for module in modules:
            if module["type"].endswith(".Pooling"):
                module["type"] = "custom_pooling.CustomPooling"
        (folder / "modules.json").write_text(json.dumps(modules))
    else:
        (folder / "custom_bert.py").write_text(
            EVIL_CODE.format(marker=str(marker))
            + "from transformers import BertConfig, BertModel\n\n\n"
            + "class CustomConfig(BertConfig):\n    model_type = 'custom-bert'\n\n\n"
            + "class CustomModel(BertModel):\n    config_class = CustomConfig\n"
        )
        config = json.loads((folder / "config.json").read_text())
        config["model_type"] = "custom-bert"
        config["auto_map"] = {"AutoConfig": "custom_bert.CustomConfig", "AutoModel": "custom_bert.CustomModel"}
        (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize("vector", ["modules.json", "auto_map"])
def test_custom_code_in_a_model_folder_runs_only_when_trusted(vector, tiny_teacher_path, tmp_path, monkeypatch, capsys):
    import transformers.dynamic_module_utils

    from asym_st.cli import main

    # transformers copies trusted code into its modules cache before importing it: keep that in tmp_path.
    monkeypatch.setattr(transformers.dynamic_module_utils, "HF_MODULES_CACHE", str(tmp_path / "modules"))
    marker = tmp_path / "EXECUTED"
    model_dir = _model_with_custom_code(tiny_teacher_path, tmp_path / vector, marker, vector)

    with pytest.raises(ValueError, match="trust_remote_code=True"):
        build_asymmetric_model(model_dir)
    with pytest.raises(ValueError, match="trust_remote_code=True"):
        load_asymmetric_model(model_dir)
    assert main(["build", str(model_dir), "-o", str(tmp_path / "out")]) == 1
    assert "trust_remote_code=True" in capsys.readouterr().err
    assert not marker.exists() and not (tmp_path / "out").exists()

    # The user opts in: the folder's code runs (which shows the checks above would have seen it run).
    build_asymmetric_model(model_dir, trust_remote_code=True)
    assert marker.read_text() == "executed"


# ---------------------------------------------------------------------------------------- safetensors only

PICKLED_WEIGHTS = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib", ".h5", ".msgpack")


def _assert_safetensors_only(folder: Path) -> None:
    files = [p for p in folder.rglob("*") if p.is_file()]
    assert [p for p in files if p.suffix == ".safetensors"], f"no safetensors weights in {folder}"
    assert [p for p in files if p.suffix in PICKLED_WEIGHTS] == [], folder


def test_saved_models_hold_safetensors_only(tiny_teacher_path, tmp_path):
    from asym_st import save_tower

    model = build_asymmetric_model(tiny_teacher_path)
    _assert_safetensors_only(save_asymmetric_model(model, tmp_path / "asymmetric"))
    _assert_safetensors_only(save_tower(model, "query", tmp_path / "query"))
    _assert_safetensors_only(save_tower(model, "document", tmp_path / "document"))


def test_training_pipelines_save_safetensors_only(tiny_teacher_path, beir, tmp_path):
    from asym_st.training import CrossEncoderTeacherConfig, distill_query_tower, train_cross_encoder

    qed = tiny_qed_config(tmp_path / "qed", tiny_teacher_path, max_steps=2, save_steps=1, per_device_train_batch_size=8)
    distill_query_tower(qed, evaluate=False)
    _assert_safetensors_only(Path(qed.output_dir))
    # Checkpoints hold the model as safetensors too; the Trainer's optimiser / scheduler / RNG states are torch
    # files that transformers reads back with weights_only=True (docs/security.md).
    checkpoints = list(Path(qed.resolved_checkpoint_dir).glob("checkpoint-*"))  # beside them: run_settings.json
    assert checkpoints
    for checkpoint in checkpoints:
        assert (checkpoint / "model.safetensors").is_file() or list(checkpoint.rglob("*.safetensors")), checkpoint
        assert not [p for p in checkpoint.rglob("*") if p.suffix in (".pkl", ".pickle", ".joblib")]

    teacher = train_cross_encoder(
        CrossEncoderTeacherConfig(
            train_dataset=f"{beir}:train",
            output_dir=str(tmp_path / "cross-encoder"),
            base_model=str(tiny_teacher_path),
            num_candidates=3,
            num_negatives=1,
            max_length=32,
            max_steps=1,
            per_device_train_batch_size=8,
            batch_size=16,
            cache_dir=str(tmp_path / "cache"),
        )
    )
    _assert_safetensors_only(teacher.output_dir)


# ------------------------------------------------------------------------------------------- inputs are data


@pytest.mark.parametrize(
    "payload",
    [
        "!!python/object/apply:os.system ['touch {marker}']",
        "!!python/object/new:subprocess.Popen [['touch', '{marker}']]",
        "!!python/name:os.system",
    ],
)
def test_yaml_configs_with_python_tags_are_refused(payload, tmp_path, capsys):
    from asym_st.cli import main
    from asym_st.training.config_io import ConfigError, YamlConfigMixin

    marker = tmp_path / "EXECUTED"
    path = tmp_path / "evil.yaml"
    path.write_text(f"teacher: {payload.format(marker=marker)}\nlearning_rate: 0.001\n")
    classes, pending = [], [YamlConfigMixin]
    while pending:
        subclasses = pending.pop().__subclasses__()
        classes += subclasses
        pending += subclasses
    assert len(classes) >= 5  # QED, EmbedDistill, DAFT, TAS-Balanced, MD2PR
    for config_class in classes:
        with pytest.raises(ConfigError, match=r"evil\.yaml, line 1: refused: .*python/"):
            config_class.from_yaml(path)
    assert main(["distill", "--config", str(path)]) == 1
    assert "evil.yaml, line 1: refused" in capsys.readouterr().err
    assert not marker.exists()


def test_pickled_score_files_are_refused_unopened(tmp_path):
    """Also tested in tests/data/test_teacher_scores.py::test_pickle_is_refused; here the pickle would run code."""
    import gzip
    import os
    import pickle

    from asym_st.data.teacher_scores import ScoreFileError, load_score_file

    marker = tmp_path / "EXECUTED"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    for name in ("scores.pkl", "scores.json", "scores.json.gz"):
        data = pickle.dumps(Payload())
        (tmp_path / name).write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
        with pytest.raises(ScoreFileError, match="pickle files are refused"):
            load_score_file(tmp_path / name)
    assert not marker.exists()
