"""QED: distill a teacher into a few-layer query tower against the frozen teacher document tower.

The pipeline is a thin composition of the rest of asym-st:

1. build the asymmetric model (query tower = teacher layers ``[0, L-1]`` by default; document tower = teacher);
2. collect training queries from the configured sources, without evaluation queries (leakage guard);
3. compute the teacher's query embeddings once, through the on-disk :class:`~asym_st.data.cache.EmbeddingCache`;
4. train the query route with :class:`~asym_st.losses.EmbeddingAlignmentLoss` in ``SentenceTransformerTrainer``
   (``router_mapping={"query": "query"}``; only the query tower has gradients, so only it is in the optimiser),
   with checkpoints, ``resume_from_checkpoint`` and an optional dev retrieval metric in the logs;
5. evaluate teacher and student on the evaluation datasets (retention), measure query latency, and save the
   model, its evaluation and the training config in one atomic folder.

Steps 3 and 5 run on the main process first / only, so the pipeline runs unchanged under ``accelerate launch``
and ``torchrun``: the data-parallel part is the Trainer's.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from datasets import Dataset
from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer
from transformers import TrainerCallback

from asym_st.data.queries import QuerySet
from asym_st.data.query_sources import collect_training_queries
from asym_st.losses.embedding_alignment import EmbeddingAlignmentLoss
from asym_st.modeling import build_asymmetric_model, extract_tower
from asym_st.training.dev_evaluator import RetrievalDevEvaluator
from asym_st.training.qed_config import QEDConfig
from asym_st.training.reporting import evaluate_and_save
from asym_st.training.trainer_setup import (
    distributed_state,
    evaluation_splits,
    load_eval_dataset,
    query_tower_config,
    resume_checkpoint,
    teacher_query_targets,
    training_arguments,
)

__all__ = ["QEDResult", "distill_query_tower", "load_eval_dataset"]

logger = logging.getLogger(__name__)


@dataclass
class QEDResult:
    """What a QED run produced: the model (in memory and on disk) and its measured figures."""

    model: SentenceTransformer
    output_dir: Path | None
    training_queries: QuerySet
    retention: dict[str, Any] | None = None
    latency: dict[str, Any] | None = None
    train_seconds: float = 0.0
    log_history: list[dict[str, Any]] = field(default_factory=list)


def distill_query_tower(
    config: QEDConfig, callbacks: Sequence[TrainerCallback] = (), evaluate: bool = True
) -> QEDResult:
    """Run QED end to end and save the student (see the module docstring for the steps).

    Args:
        config: the run's settings.
        callbacks: extra ``transformers`` trainer callbacks.
        evaluate: evaluate teacher and student on ``config.eval_datasets`` and measure latency at the end.

    Example::

        from asym_st.training import QEDConfig, distill_query_tower

        result = distill_query_tower(QEDConfig(
            teacher="sentence-transformers/all-MiniLM-L6-v2",
            train_queries=["../shared/data/queries/msmarco-dev-small/queries.dev.small.tsv"],
            eval_datasets=["../shared/data/beir/scifact"],
            output_dir="minilm-qed-2l",
        ))
        print(result.retention["rows"])
    """
    config.require_sources()
    state = distributed_state()
    model = build_asymmetric_model(
        config.teacher,
        query_tower_config(config),
        revision=config.teacher_revision,
    )
    model.asym_st_record.method = "QED"
    teacher = extract_tower(model, "document", copy_modules=False)
    eval_datasets, dev, excluded = evaluation_splits(config)
    queries = collect_training_queries(config.train_queries, exclude=excluded, limit=config.max_train_queries)
    targets = teacher_query_targets(teacher, queries, config)
    train_dataset = Dataset.from_dict({"query": queries.texts, "label": np.asarray(targets, dtype=np.float32)})

    dev_evaluator = RetrievalDevEvaluator(dev, config.teacher_batch_size, cache_dir=config.cache_dir) if dev else None
    trainer = SentenceTransformerTrainer(
        model=model,
        args=training_arguments(config, has_dev=dev_evaluator is not None),
        train_dataset=train_dataset,
        loss=EmbeddingAlignmentLoss(model, distance_metric=config.distance),
        evaluator=dev_evaluator,
        callbacks=list(callbacks),
    )
    started = time.perf_counter()
    trainer.train(resume_from_checkpoint=resume_checkpoint(config))
    result = QEDResult(
        model=model,
        output_dir=None,
        training_queries=queries,
        train_seconds=time.perf_counter() - started,
        log_history=list(trainer.state.log_history),
    )
    if state.is_main_process:
        evaluate_and_save(result, teacher, eval_datasets, config, evaluate=evaluate)
    state.wait_for_everyone()
    return result
