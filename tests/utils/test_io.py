import json
import os

import pytest

from asym_st.utils.io import OutputExistsError, atomic_directory, atomic_write_json, atomic_write_text


def test_atomic_write_replaces_whole_file(tmp_path):
    path = atomic_write_json(tmp_path / "sub" / "r.json", {"a": 1})
    assert json.loads(path.read_text()) == {"a": 1}
    atomic_write_text(path, "new")
    assert path.read_text() == "new"
    assert [p.name for p in path.parent.iterdir()] == ["r.json"]


def test_atomic_directory_failure_keeps_old_content(tmp_path):
    target = tmp_path / "out"
    with atomic_directory(target) as tmp:
        (tmp / "a.txt").write_text("v1")
    with pytest.raises(RuntimeError), atomic_directory(target, overwrite=True) as tmp:
        (tmp / "a.txt").write_text("v2")
        raise RuntimeError("boom")
    assert (target / "a.txt").read_text() == "v1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_atomic_directory_refuses_non_empty_without_overwrite(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "x").write_text("x")
    with pytest.raises(OutputExistsError, match="overwrite=True"), atomic_directory(tmp_path / "out"):
        pass
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputExistsError, match="not a folder"), atomic_directory(tmp_path / "file", overwrite=True):
        pass


def test_atomic_directory_removes_what_killed_saves_left(tmp_path):
    import subprocess

    from asym_st.utils.io import _host

    dead = subprocess.Popen(["true"])
    dead.wait()  # its pid now belongs to no process
    stale = tmp_path / f".out.{_host()}-{dead.pid}.abcd1234.partial"
    stale_old = tmp_path / f".out.{_host()}-{dead.pid}.efgh5678.old"
    alive = tmp_path / f".out.{_host()}-{os.getppid()}.abcd1234.partial"  # a save still running
    other_host = tmp_path / f".out.other-{_host()}-{dead.pid}.abcd1234.partial"  # shared filesystem
    other_target = tmp_path / f".out2.{_host()}-{dead.pid}.abcd1234.partial"
    for folder in (stale, stale_old, alive, other_host, other_target):
        folder.mkdir()
        (folder / "weights").write_text("half")
    with atomic_directory(tmp_path / "out") as tmp:
        assert tmp.name.startswith(f".out.{_host()}-{os.getpid()}.") and tmp.name.endswith(".partial")
        (tmp / "a.txt").write_text("v1")
    assert not stale.exists() and not stale_old.exists()
    assert alive.exists() and other_host.exists() and other_target.exists()
    assert (tmp_path / "out" / "a.txt").read_text() == "v1"
