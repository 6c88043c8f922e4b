"""What every asym-st training pipeline sets up the same way: evaluation/dev datasets, cached teacher targets,
``SentenceTransformerTrainingArguments`` and the checkpoint to resume from.

QED, EmbedDistill, DAFT and TAS-Balanced all call these, so that a flag means the same thing in every recipe.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from accelerate import PartialState
from sentence_transformers import SentenceTransformer, SentenceTransformerTrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from asym_st.data.beir import RetrievalDataset, load_beir, split_dataset_spec
from asym_st.data.cache import EmbeddingCache
from asym_st.data.queries import QuerySet
from asym_st.data.query_sources import without_evaluation_queries
from asym_st.modeling import (
    DOCUMENT_ROUTE,
    QueryTowerConfig,
    build_asymmetric_model,
    extract_tower,
    freeze_tower,
    load_asymmetric_model,
)
from asym_st.training.config_io import ConfigError
from asym_st.utils.io import atomic_write_json

__all__ = [
    "distributed_state",
    "accelerator_available",
    "build_student",
    "evaluation_splits",
    "query_tower_config",
    "labelled_training_split",
    "load_eval_dataset",
    "dev_dataset",
    "teacher_query_targets",
    "training_arguments",
    "resume_checkpoint",
    "find_resume_checkpoint",
    "training_identity",
    "last_complete_checkpoint",
]

logger = logging.getLogger(__name__)


class OptimisationSettings(Protocol):
    """The fields :func:`training_arguments` and :func:`resume_checkpoint` read (a method's config or a stage's)."""

    resolved_checkpoint_dir: str
    resume_from_checkpoint: str | None
    learning_rate: float
    warmup_ratio: float
    weight_decay: float
    num_train_epochs: float
    max_steps: int
    per_device_train_batch_size: int
    logging_steps: int
    save_steps: int
    eval_steps: int | None
    save_total_limit: int
    seed: int
    report_to: str


def accelerator_available() -> bool:
    """Whether torch sees a GPU (or another accelerator); on a CPU-only machine the recipes run DDP over gloo."""
    accelerator = getattr(torch, "accelerator", None)
    return bool(accelerator.is_available()) if accelerator is not None else torch.cuda.is_available()


def distributed_state() -> PartialState:
    """The process's ``accelerate`` state, created for CPU-only machines with ``cpu=True``.

    The first ``PartialState`` of a process fixes the backend for good. Without ``cpu=True`` a ``torchrun`` or
    ``accelerate launch`` on a machine without an accelerator starts N *independent* trainings (transformers then
    warns that ``parallel_mode != DISTRIBUTED``); with it, the ranks form a gloo process group and the Trainer
    shards the data (``MULTI_CPU``).
    """
    return PartialState(cpu=not accelerator_available())


def query_tower_config(config: Any, **extra: Any) -> QueryTowerConfig:
    """The query tower a method config asks for (``query_layers`` / ``layer_strategy`` / ``num_query_layers``)."""
    return QueryTowerConfig(
        strategy=config.layer_strategy,
        num_layers=config.num_query_layers,
        layers=config.query_layers,
        max_seq_length=config.query_max_seq_length,
        **extra,
    )


def evaluation_splits(config: Any) -> tuple[list[RetrievalDataset], RetrievalDataset | None, list[RetrievalDataset]]:
    """The evaluation datasets, the dev dataset, and the collections the leakage guard keeps out of training
    (both, unless ``exclude_eval_queries`` is off)."""
    eval_datasets = [load_eval_dataset(spec) for spec in config.eval_datasets]
    dev = dev_dataset(config)
    excluded = eval_datasets + ([dev] if dev is not None else []) if config.exclude_eval_queries else []
    return eval_datasets, dev, excluded


def build_student(config: Any, method: str) -> tuple[SentenceTransformer, SentenceTransformer]:
    """The student and the frozen teacher for pipelines that may start from a saved model.

    The student is ``config.init_from`` (an asym-st model folder, e.g. a QED student) or the teacher truncated as
    in QED (``teacher``, ``query_layers`` / ``layer_strategy`` / ``num_query_layers``). With ``towers: query`` the
    teacher is the student's own frozen document tower (the index stays valid); with ``towers: both`` it is a
    frozen copy, so that targets and the retention baseline do not move with the trained document tower.
    """
    if getattr(config, "init_from", None):
        model = load_asymmetric_model(config.init_from)
    else:
        model = build_asymmetric_model(config.teacher, query_tower_config(config), revision=config.teacher_revision)
    model.asym_st_record.method = method
    if config.towers == "query":
        freeze_tower(model, DOCUMENT_ROUTE)
        model.asym_st_record.document_tower_frozen = True
        return model, extract_tower(model, DOCUMENT_ROUTE, copy_modules=False)
    teacher = extract_tower(model, DOCUMENT_ROUTE, copy_modules=True)
    teacher.requires_grad_(False)
    freeze_tower(model, DOCUMENT_ROUTE, frozen=False)
    model.asym_st_record.document_tower_frozen = False
    return model, teacher


def load_eval_dataset(spec: str, default_split: str = "test") -> RetrievalDataset:
    """``FOLDER`` or ``FOLDER:split`` → a validated :class:`RetrievalDataset`."""
    folder, split = split_dataset_spec(spec, default_split)
    return load_beir(folder, split=split)


def labelled_training_split(
    spec: str, excluded: Sequence[RetrievalDataset] = (), max_queries: int | None = None
) -> RetrievalDataset:
    """A BEIR ``FOLDER:split`` (default split ``train``) with qrels, minus every query whose text is an evaluation
    query of ``excluded`` (the leakage guard), capped at ``max_queries``."""
    train = load_eval_dataset(spec, default_split="train")
    queries, dropped = without_evaluation_queries(train.queries, excluded)
    if dropped:
        logger.warning("Leakage guard: %d training queries of %s are evaluation queries; dropped.", len(dropped), spec)
    if max_queries is not None:
        queries = dict(list(queries.items())[:max_queries])
    if not queries:
        raise ValueError(f"{spec}: no training query left after the leakage guard.")
    qrels = {query_id: train.qrels[query_id] for query_id in queries}
    return RetrievalDataset(train.name, train.split, train.corpus, queries, qrels, train.source, dict(train.report))


def dev_dataset(config: Any) -> RetrievalDataset | None:
    """The config's ``dev_dataset`` (default split ``dev``), sub-sampled to ``dev_max_queries`` queries and
    ``dev_max_documents`` documents (``None``: the whole corpus, whose embeddings the cache keeps)."""
    if not config.dev_dataset:
        return None
    return load_eval_dataset(config.dev_dataset, default_split="dev").subsample(
        max_queries=config.dev_max_queries, max_documents=config.dev_max_documents, seed=config.seed
    )


def teacher_query_targets(teacher: SentenceTransformer, queries: QuerySet, config: Any) -> np.ndarray:
    """The teacher's query embeddings of ``queries``, through the on-disk embedding cache (computed once)."""
    cache = EmbeddingCache(Path(config.cache_dir) / "embeddings" if config.cache_dir else None)
    # Under torchrun / accelerate launch every rank encodes its share of the shards and the main process merges
    # them; every rank then reads the same entry. All ranks must get here together (no main_process_first).
    return cache.encode(
        teacher,
        queries.texts,
        route="query",
        batch_size=config.teacher_batch_size,
        description="teacher targets",
        distributed=distributed_state().num_processes > 1,
    )


def training_arguments(
    config: OptimisationSettings, has_dev: bool, **overrides: Any
) -> SentenceTransformerTrainingArguments:
    """Trainer arguments from ``config``'s optimisation fields; ``overrides`` (``router_mapping``,
    ``load_best_model_at_end``, ``batch_sampler``, ...) win."""
    eval_steps = config.eval_steps or config.save_steps
    arguments = dict(
        output_dir=config.resolved_checkpoint_dir,
        router_mapping={"query": "query"},
        learning_rate=config.learning_rate,
        warmup_ratio=config.warmup_ratio,
        weight_decay=config.weight_decay,
        num_train_epochs=config.num_train_epochs,
        max_steps=config.max_steps,
        per_device_train_batch_size=config.per_device_train_batch_size,
        logging_steps=config.logging_steps,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=config.save_total_limit,
        eval_strategy="steps" if has_dev else "no",
        eval_steps=eval_steps if has_dev else None,
        seed=config.seed,
        data_seed=config.seed,
        report_to=config.report_to,
        dataloader_drop_last=False,
        remove_unused_columns=False,
        use_cpu=not accelerator_available(),  # the same state as distributed_state(): real DDP on CPU
    )
    return SentenceTransformerTrainingArguments(**{**arguments, **overrides})


def resume_checkpoint(config: OptimisationSettings) -> str | None:
    """The checkpoint ``config``'s training resumes from (see :func:`find_resume_checkpoint`); the checkpoints must
    come from a run with the same training settings (:func:`training_identity`)."""
    return find_resume_checkpoint(
        config.resume_from_checkpoint, config.resolved_checkpoint_dir, identity=training_identity(config)
    )


RUN_SETTINGS_FILE = "run_settings.json"

# Fields that change how a run is driven, logged or evaluated, not what it trains: a resumed run may change them
# (e.g. more epochs or steps to extend a finished run, another evaluation set).
OPERATIONAL_FIELDS = frozenset(
    {
        "resume_from_checkpoint",
        "output_dir",
        "checkpoint_dir",
        "resolved_checkpoint_dir",
        "overwrite_output_dir",
        "overwrite",
        "num_train_epochs",
        "max_steps",
        "logging_steps",
        "save_steps",
        "eval_steps",
        "save_total_limit",
        "report_to",
        "eval_datasets",
        "eval_max_queries",
        "eval_max_documents",
        "dev_max_queries",
        "dev_max_documents",
        "measure_latency",
        "latency_queries",
        "teacher_batch_size",
        "batch_size",
        "cache_dir",
        "allow_weaker_teacher",
    }
)


def training_identity(config: Any) -> dict[str, Any] | None:
    """The settings that decide what a run trains: ``config``'s fields (a dataclass) minus
    :data:`OPERATIONAL_FIELDS`, JSON-normalised; ``None`` for an object that is not a dataclass."""
    if not dataclasses.is_dataclass(config) or isinstance(config, type):
        return None
    kept = {key: value for key, value in dataclasses.asdict(config).items() if key not in OPERATIONAL_FIELDS}
    return json.loads(json.dumps(kept, sort_keys=True, default=str))


def find_resume_checkpoint(
    setting: str | None, checkpoint_dir: str | os.PathLike, identity: dict[str, Any] | None = None
) -> str | None:
    """``resume_from_checkpoint``: ``"auto"`` → the last checkpoint in ``checkpoint_dir`` (or ``None``), a path
    → that path (which must exist), ``None``/``"none"`` → start afresh.

    With ``identity`` (:func:`training_identity`), the run's settings are stamped into ``checkpoint_dir`` (main
    process), and ``"auto"`` refuses checkpoints stamped by a run with other settings: the Trainer would silently
    continue the other run (its weights, optimiser and schedule) under the new settings. Checkpoints written before
    stamps existed resume with a warning.
    """
    folder = Path(checkpoint_dir)
    if setting in (None, "", "none"):
        found = None
    elif setting == "auto":
        found = last_complete_checkpoint(folder) if folder.is_dir() else None
        if found and identity is not None:
            _require_same_run(folder, identity)
        if found:
            logger.info("Resuming from %s", found)
    elif not Path(setting).is_dir():
        raise FileNotFoundError(f"resume_from_checkpoint: {setting} does not exist.")
    else:
        found = setting
    if identity is not None and distributed_state().is_main_process:
        atomic_write_json(folder / RUN_SETTINGS_FILE, identity)
    return found


def _require_same_run(folder: Path, identity: dict[str, Any]) -> None:
    stamp = folder / RUN_SETTINGS_FILE
    try:
        stamped = json.loads(stamp.read_text(encoding="utf-8"))
    except FileNotFoundError:
        logger.warning(
            "%s has no %s (written before stamps): resuming without checking its settings.", folder, stamp.name
        )
        return
    except ValueError as error:
        raise ConfigError(f"{stamp}: unreadable ({error}); delete it to resume without the check.") from error
    changed = sorted(key for key in set(stamped) | set(identity) if stamped.get(key) != identity.get(key))
    if changed:
        details = "; ".join(f"{key}: {stamped.get(key)!r} there, {identity.get(key)!r} now" for key in changed[:6])
        raise ConfigError(
            f"{folder} holds the checkpoints of a run with other settings ({details}). "
            "Set resume_from_checkpoint: none to start afresh (its checkpoints get overwritten), "
            "or choose another output_dir / checkpoint_dir."
        )


def last_complete_checkpoint(folder: str | os.PathLike) -> str | None:
    """The newest ``checkpoint-N`` in ``folder`` that was written to the end, or ``None``.

    The Trainer writes a checkpoint in place, ``trainer_state.json`` last. A run killed while writing one leaves a
    ``checkpoint-N`` without it (or with a truncated one); ``transformers``' ``get_last_checkpoint`` would pick that
    folder and the resume would fail, so it is skipped (and left alone: the resumed run writes it again).
    """
    found = []
    for path in Path(folder).iterdir():
        match = re.fullmatch(rf"{PREFIX_CHECKPOINT_DIR}-(\d+)", path.name)
        if match and path.is_dir():
            found.append((int(match.group(1)), path))
    for step, path in sorted(found, reverse=True):
        try:
            state = json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            state = None
        if isinstance(state, dict) and state.get("global_step") == step:
            return str(path)
        logger.warning("Skipping %s: it was not written to the end (the run was killed while saving it).", path)
    return None
