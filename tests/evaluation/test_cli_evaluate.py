"""``asym-st evaluate`` and ``asym-st bench`` end to end on tiny models (JSON into MODEL/eval/, tables printed)."""

from __future__ import annotations

import json

import pytest

from asym_st import QueryTowerConfig, build_asymmetric_model, save_asymmetric_model
from asym_st.cli import main
from asym_st.evaluation import load_results


@pytest.fixture(scope="module")
def tiny_model_dir(tiny_teacher_path, tmp_path_factory):
    model = build_asymmetric_model(str(tiny_teacher_path), QueryTowerConfig(layers=[0, 3]))
    return save_asymmetric_model(model, tmp_path_factory.mktemp("cli") / "asym")


def test_evaluate_with_teacher_and_mteb_task(tiny_model_dir, tiny_teacher_path, tiny_beir, tmp_path, capsys):
    output = tmp_path / "summary.json"
    code = main(
        [
            "evaluate",
            str(tiny_model_dir),
            "--dataset",
            str(tiny_beir),
            "--teacher",
            str(tiny_teacher_path),
            "--mteb-task",
            str(tiny_beir),
            "--quiet",
            "--output",
            str(output),
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "| nDCG@10 |" in captured.err.replace(" nDCG@10 ", " nDCG@10 ") and "retention" in captured.err
    summary = json.loads(output.read_text())
    assert [r["evaluator"].split()[0] for r in summary["results"]] == ["asym-st", "mteb"]
    ours, theirs = summary["results"]
    assert theirs["metrics"]["ndcg_at_10"] == pytest.approx(ours["metrics"]["ndcg_at_10"], abs=1e-4)
    assert (theirs["num_queries"], theirs["num_documents"]) == (ours["num_queries"], ours["num_documents"]) == (4, 8)
    stored = load_results(tiny_model_dir)
    assert stored["retention"]["rows"][0]["dataset"] == "tiny_beir"
    assert {r["evaluator"].split()[0] for r in stored["retrieval"]} <= {"asym-st", "mteb"}
    assert stored["mteb"] and stored["mteb"][0]["task_name"] == "tiny_beir"


def test_evaluate_bad_input(tiny_model_dir, tiny_beir, capsys):
    assert main(["evaluate", str(tiny_model_dir)]) == 1
    assert "nothing to evaluate" in capsys.readouterr().err
    assert main(["evaluate", str(tiny_model_dir), "--dataset", str(tiny_beir), "--split", "dev", "--no-save"]) == 1
    assert "no qrels for split 'dev'" in capsys.readouterr().err
    code = main(["evaluate", str(tiny_model_dir), "--mteb-task", "SciFact", "--data-mirror", "a", "--data-mirror", "b"])
    assert code == 1 and "one --data-mirror per --mteb-task" in capsys.readouterr().err


def test_bench_latency_and_sweep(tiny_model_dir, tiny_beir, tmp_path, capsys):
    queries = tmp_path / "queries.txt"
    queries.write_text("what is the capital of france\ncovid vaccine\ndense retrieval index\n")
    code = main(
        [
            "bench",
            str(tiny_model_dir),
            "--queries",
            str(queries),
            "--batch-sizes",
            "1,2",
            "--num-queries",
            "4",
            "--repeats",
            "1",
            "--warmup",
            "1",
            "--threads",
            "1",
            "--devices",
            "cpu",
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "speed-up on cpu" in captured.err and "| ms/query |" in captured.err and "in CPU time" in captured.err
    latency = load_results(tiny_model_dir)["latency"]
    assert set(latency["speedup"]) == {"1", "2"} and set(latency["cpu_speedup"]) == {"1", "2"}
    assert len(latency["results"]) == 4 and latency["results"][0]["hardware"]["torch_threads"] == 1
    code = main(
        [
            "bench",
            str(tiny_model_dir),
            "--dataset",
            str(tiny_beir),
            "--sweep",
            "--layers",
            "1",
            "--batch-sizes",
            "1",
            "--num-queries",
            "2",
            "--repeats",
            "1",
            "--warmup",
            "1",
            "--devices",
            "cpu",
        ]
    )
    assert code == 0, capsys.readouterr().err
    stored = load_results(tiny_model_dir)
    assert [row["kind"] for row in stored["tradeoff"]["rows"]] == ["teacher", "untrained", "trained"]
    assert stored["tradeoff_png"] is not None
    assert main(["bench", str(tiny_model_dir)]) == 1
    assert "--queries FILE or --dataset SRC" in capsys.readouterr().err


def test_evaluate_reports_dropped_qrels(tiny_model_dir, tmp_path, capsys):
    from tests.evaluation.conftest import QRELS, write_beir

    folder = write_beir(tmp_path / "bad_qrels", qrels=QRELS + [("q1", "nope", 1), ("q77", "d1", 1)])
    code = main(["evaluate", str(tiny_model_dir), "--dataset", str(folder), "--quiet", "--no-save"])
    err = capsys.readouterr().err
    assert code == 0
    assert "'qrels_unknown_queries': 1" in err and "'qrels_unknown_documents': 1" in err


def test_evaluate_index_and_search_options(tiny_model_dir, tiny_beir, tmp_path, capsys):
    output = tmp_path / "summary.json"
    base = ["evaluate", str(tiny_model_dir), "--dataset", str(tiny_beir), "--quiet", "--no-save"]
    code = main(base + ["--index", "hnsw", "--search-option", "hnsw_ef_search=64", "--output", str(output)])
    assert code == 0, capsys.readouterr().err
    config = json.loads(output.read_text())["results"][0]["config"]
    assert config["index"] == "hnsw" and config["hnsw_ef_search"] == 64
    for option, message in [
        ("nprobe=3", "unknown search option(s) nprobe; choose from hnsw_m"),
        ("ivf_nprobe", "'ivf_nprobe' is not KEY=VALUE"),
        ("ivf_nprobe=lots", "ivf_nprobe expects an integer, got 'lots'"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            main(base + ["--search-option", option])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert "error: argument --search-option: " in err and message in err
    # 8 documents cannot train 8-bit PQ codes: one readable line, not a traceback.
    assert main(base + ["--index", "ivfpq"]) == 1
    assert "index='ivfpq' with ivfpq_nbits=8 needs at least 9984 documents" in capsys.readouterr().err
