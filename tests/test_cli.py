import json

import pytest
from sentence_transformers import SentenceTransformer

from asym_st.cli import main


def test_help_lists_subcommands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for command in ("build", "extract", "assemble"):
        assert command in out


def test_build_then_extract(tiny_teacher_path, tmp_path, capsys):
    assert main(["build", str(tiny_teacher_path), "-o", str(tmp_path / "m"), "--query-layers", "0,3"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["query_layers"] == [0, 3] and summary["teacher_num_layers"] == 4
    assert summary["query_tower_parameters"] < summary["document_tower_parameters"]
    model = SentenceTransformer(str(tmp_path / "m"))
    assert model.encode_query(["hi"]).shape == (1, 32)
    assert main(["extract", str(tmp_path / "m"), "--tower", "query", "-o", str(tmp_path / "q")]) == 0
    assert SentenceTransformer(str(tmp_path / "q")).encode(["hi"]).shape == (1, 32)


def test_bad_input_is_one_readable_line(tiny_teacher_path, tmp_path, capsys):
    assert main(["build", str(tiny_teacher_path), "-o", str(tmp_path / "m"), "--query-layers", "0,9"]) == 1
    err = capsys.readouterr().err
    assert "asym-st build: error:" in err and "out of range" in err
    assert main(["build", str(tiny_teacher_path), "-o", str(tmp_path / "m")]) == 0
    capsys.readouterr()
    assert main(["build", str(tiny_teacher_path), "-o", str(tmp_path / "m")]) == 1
    assert "overwrite" in capsys.readouterr().err
