"""The end of a distillation run: evaluate teacher vs student, measure latency, save everything atomically."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from sentence_transformers import SentenceTransformer

from asym_st.data.beir import RetrievalDataset
from asym_st.data.cache import EmbeddingCache
from asym_st.evaluation.latency import LatencyConfig, latency_report, measure_latency
from asym_st.evaluation.results import save_results
from asym_st.evaluation.retention import retention_report
from asym_st.evaluation.retrieval import RetrievalEvalConfig
from asym_st.modeling import extract_tower, save_asymmetric_model
from asym_st.training.trainer_setup import distributed_state
from asym_st.utils.io import atomic_write_json

if TYPE_CHECKING:
    from asym_st.training.qed import QEDResult
    from asym_st.training.qed_config import QEDConfig

__all__ = ["evaluate_and_save", "TRAINING_CONFIG_FILE"]

logger = logging.getLogger(__name__)

TRAINING_CONFIG_FILE = "training_config.json"


def _latency(student: SentenceTransformer, teacher: SentenceTransformer, queries: Sequence[str], n: int) -> dict:
    config = LatencyConfig(batch_sizes=(1, 32), num_queries=n, repeats=3)
    query_tower = extract_tower(student, "query", copy_modules=False)
    student_results = measure_latency(query_tower, queries, config, name="query tower")
    teacher_results = measure_latency(teacher, queries, config, name="teacher")
    return latency_report(student_results, teacher_results)


def _training_record(result: QEDResult, config: QEDConfig, method: str, extra: dict | None) -> dict:
    losses = [entry["loss"] for entry in result.log_history if "loss" in entry]
    return {
        "method": method,
        "config": config.to_dict(),
        "training_queries": {
            "count": len(result.training_queries),
            "report": result.training_queries.report(),
        },
        "train_seconds": round(result.train_seconds, 1),
        "num_processes": distributed_state().num_processes,  # > 1 under accelerate launch / torchrun
        "first_logged_loss": losses[0] if losses else None,
        "last_logged_loss": losses[-1] if losses else None,
        "log_history": result.log_history,
        **(extra or {}),
    }


def evaluate_and_save(
    result: QEDResult,
    teacher: SentenceTransformer,
    eval_datasets: Sequence[RetrievalDataset],
    config: QEDConfig,
    evaluate: bool = True,
    method: str = "QED",
    extra_record: dict | None = None,
) -> None:
    """Fill ``result.retention`` / ``result.latency`` and write the model folder (model + eval/ + config) at once.

    ``method`` and ``extra_record`` (merged into ``training_config.json``) let other pipelines (DAFT) reuse this.
    """
    if evaluate and eval_datasets:
        eval_config = RetrievalEvalConfig(
            batch_size=config.teacher_batch_size,
            cache=EmbeddingCache(Path(config.cache_dir) / "embeddings" if config.cache_dir else None),
        )
        report = retention_report(
            teacher,
            result.model,
            list(eval_datasets),
            eval_config,
            teacher_name=config.teacher,
            student_name=config.output_dir,
        )
        result.retention = report
        logger.info("Retention:\n%s", report.to_markdown())
    if evaluate and config.measure_latency:
        result.latency = _latency(result.model, teacher, result.training_queries.texts, config.latency_queries)

    def write_evaluation(folder: Path) -> None:
        atomic_write_json(folder / TRAINING_CONFIG_FILE, _training_record(result, config, method, extra_record))
        if result.retention is not None:
            save_results(folder, retrieval=result.retention.student_results, retention=result.retention)
        if result.latency is not None:
            save_results(folder, latency=result.latency)

    result.output_dir = save_asymmetric_model(
        result.model, config.output_dir, overwrite=config.overwrite_output_dir, before_commit=write_evaluation
    )
