"""Fixtures for the Hub tests: a tiny asymmetric model folder (with and without results) and a local Hub server."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.hub.local_hub import LocalHub
from tests.hub.results_fixtures import write_results


@pytest.fixture(scope="session")
def tiny_asym_dir(tiny_teacher_path, tmp_path_factory) -> Path:
    """A saved asymmetric model: the 4-layer tiny teacher as document tower, its layers [0, 3] as query tower."""
    from asym_st import QueryTowerConfig, build_asymmetric_model, save_asymmetric_model

    model = build_asymmetric_model(str(tiny_teacher_path), QueryTowerConfig(layers=[0, 3]))
    return save_asymmetric_model(model, tmp_path_factory.mktemp("tiny_asym") / "tiny-asym-2l")


@pytest.fixture
def bare_model(tiny_asym_dir, tmp_path) -> Path:
    """A copy of the tiny asymmetric model without any evaluation result or training record."""
    return Path(shutil.copytree(tiny_asym_dir, tmp_path / "bare-model"))


@pytest.fixture
def evaluated_model(tiny_asym_dir, tmp_path) -> Path:
    """A copy of the tiny asymmetric model with every part of the results schema stored (fixture numbers)."""
    folder = Path(shutil.copytree(tiny_asym_dir, tmp_path / "evaluated-model"))
    write_results(folder, with_token_in_config=False)
    return folder


@pytest.fixture
def local_hub():
    with LocalHub() as hub:
        yield hub


@pytest.fixture
def hub_online(local_hub, monkeypatch):
    """Let huggingface_hub, in this process, talk to the local Hub.

    tests/conftest.py sets HF_HUB_OFFLINE=1 for the session and huggingface_hub reads its environment once, at
    import. The push API takes the endpoint explicitly (``PushConfig.endpoint`` -> ``HfApi(endpoint=...)``), so the
    only global state to change is the offline switch and Xet (hf_xet is installed and 2.x would upload through it;
    the local Hub only speaks LFS). Both are restored after the test. Downloads through
    ``SentenceTransformer("org/name")`` cannot take an endpoint, so that round trip runs in a subprocess
    (tests/hub/test_round_trip.py).
    """
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    return local_hub
