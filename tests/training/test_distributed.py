"""The recipes under real multi-process launchers (torchrun, accelerate launch): 2 CPU ranks, gloo, tiny models."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ACCELERATE_CPU = REPO / "recipes" / "accelerate" / "cpu.yaml"  # the documented CPU config: 2 processes, gloo
# How a recipe is started: one process, or 2 CPU ranks under torchrun / accelerate launch.
LAUNCHERS = {
    "python": [sys.executable],
    "torchrun": [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"],
    "accelerate": [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ACCELERATE_CPU)],
}


def _launch(launcher: str, recipe: str, arguments: list[str], tmp_path: Path) -> None:
    """Run ``recipes/RECIPE`` with ``arguments`` under ``LAUNCHERS[launcher]`` in ``tmp_path``; it must succeed."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(REPO)}
    command = [*LAUNCHERS[launcher], str(REPO / "recipes" / recipe), *arguments]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]


def _train(launcher: str, recipe: str, arguments: list[str], tmp_path: Path, name: str) -> dict:
    """:func:`_launch` a training recipe without latency measurement, caching in ``tmp_path`` and saving to
    ``tmp_path / name``; returns the saved training record."""
    tail = ["--measure_latency", "false", "--cache_dir", str(tmp_path), "--output_dir", str(tmp_path / name)]
    _launch(launcher, recipe, [*arguments, *tail], tmp_path)
    return _record(tmp_path / name)


def _record(folder: Path) -> dict:
    return json.loads((folder / "training_config.json").read_text())


def _last_epoch(record: dict) -> float:
    return max(entry.get("epoch", 0) for entry in record["log_history"])


@pytest.fixture(scope="module")
def queries(tmp_path_factory) -> Path:
    import random

    from tests.tiny_models import _WORDS

    rng = random.Random(0)
    path = tmp_path_factory.mktemp("queries") / "queries.txt"
    path.write_text("\n".join(" ".join(rng.sample(_WORDS, 4)) for _ in range(64)) + "\n")
    return path


def test_qed_under_torchrun_matches_one_process(tiny_teacher_path, queries, tmp_path):
    import numpy as np
    from sentence_transformers import SentenceTransformer

    from asym_st import build_asymmetric_model

    common = ["--teacher", str(tiny_teacher_path), "--train_queries", str(queries), "--max_steps", "4"]
    common += ["--warmup_ratio", "0"]
    record = _train("torchrun", "qed.py", [*common, "--per_device_train_batch_size", "8"], tmp_path, "ddp")
    one = _train("python", "qed.py", [*common, "--per_device_train_batch_size", "16"], tmp_path, "one")
    # 64 queries, 8 per rank and step: 2 ranks see the whole set in 4 steps (one process would need 8).
    assert record["num_processes"] == 2 and one["num_processes"] == 1
    assert _last_epoch(record) == pytest.approx(1.0)
    # 2 ranks x 8 with averaged gradients = 1 process x 16: the same batches, the same model.
    texts = queries.read_text().split("\n")[:16]
    ddp = SentenceTransformer(str(tmp_path / "ddp")).encode_query(texts)
    one = SentenceTransformer(str(tmp_path / "one")).encode_query(texts)
    start = build_asymmetric_model(tiny_teacher_path).encode_query(texts)  # the untrained student
    assert np.abs(one - start).max() > 1e-3  # training moved the query tower ...
    np.testing.assert_allclose(ddp, one, atol=1e-5)  # ... identically in both runs


def test_tas_balanced_under_accelerate_launch(tiny_teacher_path, beir, tmp_path):
    arguments = ["--teacher", str(tiny_teacher_path), "--train_dataset", f"{beir}:train"]
    arguments += ["--eval_datasets", f"{beir}:test", "--num_candidates", "5", "--num_clusters", "2"]
    arguments += ["--per_device_train_batch_size", "4", "--max_steps", "3"]
    record = _train("accelerate", "tas_balanced.py", arguments, tmp_path, "tas")
    assert record["num_processes"] == 2 and record["method"] == "TAS-Balanced"
    # one cluster file, written by the main process and read by the other rank
    assert len(list((tmp_path / "tas.checkpoints").glob("clusters-*.npz"))) == 1
    assert (tmp_path / "tas" / "eval" / "retention.json").is_file()


def test_embed_distill_under_torchrun(tiny_teacher_path, beir, tmp_path):
    arguments = ["--teacher", str(tiny_teacher_path), "--train_queries", f"{beir}:train"]
    arguments += ["--generate_queries_from", str(beir), "--candidate_corpora", str(beir), "--num_candidates", "3"]
    arguments += ["--eval_datasets", f"{beir}:test", "--per_device_train_batch_size", "4", "--max_steps", "3"]
    record = _train("torchrun", "embed_distill.py", arguments, tmp_path, "ed")
    assert record["num_processes"] == 2 and record["method"] == "EmbedDistill"


def test_daft_both_stages_under_torchrun(tiny_teacher_path, beir, tmp_path):
    arguments = ["--teacher", str(tiny_teacher_path), "--query_encoder", "static", "--train_dataset", f"{beir}:train"]
    arguments += ["--eval_datasets", f"{beir}:test", "--dev_holdout_queries", "4", "--heldout_texts", "20"]
    arguments += ["--align_max_steps", "4", "--finetune_max_steps", "4", "--align_eval_steps", "2"]
    arguments += ["--finetune_eval_steps", "2", "--align_batch_size", "4", "--finetune_batch_size", "4"]
    record = _train("torchrun", "daft.py", arguments, tmp_path, "daft")
    assert record["num_processes"] == 2 and record["method"] == "DAFT"


def test_md2pr_under_torchrun_with_a_given_cross_encoder(tiny_teacher_path, beir, tmp_path):
    from sentence_transformers.cross_encoder import CrossEncoder

    cross_encoder = tmp_path / "cross-encoder"
    CrossEncoder(str(tiny_teacher_path.parent / "hf"), num_labels=1).save_pretrained(str(cross_encoder))
    arguments = ["--teacher", str(tiny_teacher_path), "--train_dataset", f"{beir}:train"]
    arguments += ["--eval_datasets", f"{beir}:test", "--cross_encoder", str(cross_encoder)]
    arguments += ["--allow_weaker_teacher", "true"]  # a random head: plumbing, not a useful teacher
    arguments += ["--num_candidates", "5", "--num_negatives", "3", "--passage_max_length", "16"]
    arguments += ["--per_device_train_batch_size", "4", "--max_steps", "3", "--fn_schedule", "step"]
    record = _train("torchrun", "md2pr.py", arguments, tmp_path, "md2pr")
    assert record["num_processes"] == 2 and record["method"] == "MD2PR"
    # the word level ran on both ranks: the summaries written once, by the main process, and read by both
    assert record["word_level"] is True and record["attention_pairs"] > 0
    assert (tmp_path / "md2pr" / "eval" / "retention.json").is_file()
