"""DAFT: align heterogeneous towers, then fine-tune them contrastively, without collapse.

Leonhardt, Jahnke & Anand (2022), "Distribution-Aligned Fine-Tuning for Efficient Neural Retrieval"
(https://arxiv.org/abs/2211.04942): a query encoder that shares neither parameters nor initialisation with the
document encoder (a static token-embedding encoder, a 2-layer transformer) tends to collapse to near-constant
embeddings under plain contrastive fine-tuning, because the two towers start in unrelated distributions. DAFT
first aligns the distributions, then fine-tunes.

The pipeline is a composition of the rest of asym-st:

1. towers: a light query encoder (:mod:`asym_st.modeling.light_encoders`) next to the teacher as frozen document
   tower, or the stage-1 model read back from disk;
2. data: training queries and their positives from a BEIR split (evaluation and dev queries excluded), the
   documents of its corpus, the document tower's embeddings of all of them from the shared
   :class:`~asym_st.data.cache.EmbeddingCache`, and held-out texts for the divergence and collapse checks;
3. **stage 1, alignment**: the document tower is frozen and the query tower is trained so that
   ``query_tower(x) ≈ document_tower(x)`` on the same texts (``align_loss: mse | cosine``, documents and/or
   queries) or, as in the paper's code, with the contrastive loss (``align_loss: contrastive``). A
   :class:`DivergenceEvaluator` estimates ``KL(document tower || query tower)`` on held-out texts
   (:func:`~asym_st.evaluation.divergence.tower_divergence`); training stops when it stops decreasing and the
   best checkpoint is kept;
4. **stage 2, fine-tuning**: in-batch-negatives ranking on (query, positive) pairs, training the query tower
   (the index stays valid; the positives' embeddings then come from the cache:
   :class:`~asym_st.losses.frozen_document_ranking.FrozenDocumentRankingLoss`) or both towers
   (``MultipleNegativesRankingLoss``, or ``CachedMultipleNegativesRankingLoss`` for large batches), with early stopping on the dev nDCG@10 (:class:`~asym_st.training.dev_evaluator.RetrievalDevEvaluator`);
5. both stages run a :class:`~asym_st.training.collapse.CollapseCallback`; the end evaluates teacher vs student
   (retention), measures query latency, and saves model + ``eval/`` + ``training_config.json`` atomically
   (:func:`~asym_st.training.reporting.evaluate_and_save`).

Like QED, it runs unchanged under ``accelerate launch`` / ``torchrun`` (caches are filled on the main process
first; evaluation and saving happen on the main process only).
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import Dataset
from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer
from sentence_transformers.base.evaluation.evaluator import BaseEvaluator
from sentence_transformers.base.sampler import BatchSamplers
from sentence_transformers.sentence_transformer.losses import (
    CachedMultipleNegativesRankingLoss,
    MultipleNegativesRankingLoss,
)
from torch import nn
from transformers import EarlyStoppingCallback, TrainerCallback

from asym_st.data.beir import RetrievalDataset
from asym_st.data.cache import EmbeddingCache
from asym_st.data.queries import QuerySet
from asym_st.data.query_sources import collect_training_queries
from asym_st.evaluation.divergence import TowerDivergence, tower_divergence
from asym_st.losses.embedding_alignment import EmbeddingAlignmentLoss
from asym_st.losses.frozen_document_ranking import FrozenDocumentRankingLoss
from asym_st.modeling import (
    DOCUMENT_ROUTE,
    QUERY_ROUTE,
    fingerprint_modules,
    freeze_tower,
    is_asymmetric,
    load_asymmetric_model,
    load_sentence_transformer,
    save_asymmetric_model,
    tower_modules,
)
from asym_st.modeling.light_encoders import build_light_asymmetric_model
from asym_st.training.collapse import CollapseCallback, tower_diagnostics
from asym_st.training.config_io import ConfigError
from asym_st.training.daft_config import DAFTConfig, StageSettings
from asym_st.training.reporting import TRAINING_CONFIG_FILE, evaluate_and_save
from asym_st.training.trainer_setup import distributed_state, load_eval_dataset, resume_checkpoint, training_arguments
from asym_st.utils.io import atomic_write_json

__all__ = [
    "DAFTData",
    "DAFTResult",
    "DivergenceEvaluator",
    "StageReport",
    "align_stage",
    "build_daft_model",
    "finetune_stage",
    "load_stage1_checkpoint",
    "prepare_daft_data",
    "train_daft",
]

logger = logging.getLogger(__name__)

_ALIGN_METRIC = "eval_align_kl_divergence"
_DEV_METRIC = "eval_dev_ndcg_at_10"


# --------------------------------------------------------------------------------------------------- results


@dataclass
class StageReport:
    """What one stage did: steps, early stopping, its selection metric, the divergence and collapse checks."""

    stage: str
    metric: str
    train_seconds: float = 0.0
    steps: int = 0
    max_steps: int = 0
    stopped_early: bool = False
    best_metric: float | None = None
    best_checkpoint: str | None = None
    divergence_before: dict | None = None
    divergence_after: dict | None = None
    collapsed: dict[str, list[str]] = field(default_factory=dict)
    collapse_history: list[dict[str, Any]] = field(default_factory=list)
    log_history: list[dict[str, Any]] = field(default_factory=list)
    output_dir: str | None = None
    reused: bool = False
    initial_metric: float | None = None
    kept_initial: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class DAFTResult:
    """What a DAFT run produced (the field names follow :class:`~asym_st.training.qed.QEDResult`, so that
    :func:`~asym_st.training.reporting.evaluate_and_save` can finish both)."""

    model: SentenceTransformer
    output_dir: Path | None
    training_queries: QuerySet
    stages: dict[str, StageReport] = field(default_factory=dict)
    diagnostics: dict[str, Any] = field(default_factory=dict)
    retention: Any = None
    latency: dict[str, Any] | None = None
    train_seconds: float = 0.0
    log_history: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class DAFTData:
    """The texts both stages train and check on (see :func:`prepare_daft_data`)."""

    train: RetrievalDataset
    dev: RetrievalDataset | None
    eval_datasets: list[RetrievalDataset]
    training_queries: QuerySet
    pairs: list[tuple[str, str]]
    pair_embeddings: np.ndarray
    align_texts: list[str]
    align_targets: np.ndarray
    heldout_texts: list[str]
    heldout_targets: np.ndarray

    def summary(self) -> dict[str, Any]:
        return {
            "train_dataset": f"{self.train.name}:{self.train.split}",
            "training_queries": self.training_queries.report(),
            "train_pairs": len(self.pairs),
            "align_texts": len(self.align_texts),
            "heldout_texts": len(self.heldout_texts),
            "dev": f"{self.dev.name}:{self.dev.split} ({len(self.dev.queries)} queries)" if self.dev else None,
        }


# --------------------------------------------------------------------------------------------------- evaluator


class DivergenceEvaluator(BaseEvaluator):
    """Logs ``KL(document tower || query tower)`` on held-out texts; lower is better (stage 1's early stopping).

    Args:
        texts: held-out texts, never trained on.
        document_embeddings: the (frozen) document tower's embeddings of ``texts``; ``None`` encodes them each time
            (needed when the document tower trains).
        k: neighbour rank of the estimator.
        batch_size: encoding batch size.
        name: prefix of the logged metrics (``<name>_kl_divergence``).
        seed: how the texts are split into the two halves the towers encode.
    """

    def __init__(
        self,
        texts: Sequence[str],
        document_embeddings: np.ndarray | None = None,
        k: int = 1,
        batch_size: int = 64,
        name: str = "align",
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.seed = seed
        self.texts = list(texts)
        self.document_embeddings = document_embeddings
        self.k = k
        self.batch_size = batch_size
        self.name = name
        self.greater_is_better = False
        self.primary_metric = "kl_divergence"

    def __call__(self, model, output_path: str | None = None, epoch: int = -1, steps: int = -1) -> dict[str, float]:
        divergence = tower_divergence(
            model, self.texts, self.document_embeddings, k=self.k, batch_size=self.batch_size, seed=self.seed
        )
        metrics = {"kl_divergence": divergence.kl_divergence, "kl_noise_floor": divergence.noise_floor}
        metrics = self.prefix_name_to_metrics(metrics, self.name)
        self.store_metrics_in_model_card_data(model, metrics, epoch, steps)
        return metrics


# --------------------------------------------------------------------------------------------------- towers


def build_daft_model(config: DAFTConfig, teacher: SentenceTransformer) -> SentenceTransformer:
    """The unaligned heterogeneous model: ``config``'s light query encoder next to the frozen teacher."""
    model = build_light_asymmetric_model(teacher, config.light_encoder(), revision=config.teacher_revision)
    model.asym_st_record.teacher = config.teacher
    return model


def load_stage1_checkpoint(path: str | Path, teacher: SentenceTransformer) -> SentenceTransformer:
    """Read a stage-1 model back for stage 2, checking that it is asymmetric and aligned to ``teacher``.

    Raises:
        ConfigError: the folder is missing, is not an asymmetric model, or its document tower is not ``teacher``.
    """
    path = Path(path)
    if not (path / "modules.json").is_file():
        raise ConfigError(
            f"stage1_checkpoint {path} does not exist or is not a saved model (no modules.json). Run stage 1 first "
            "(stages: [align]) and point stage1_checkpoint at the folder it wrote."
        )
    model = load_asymmetric_model(path)
    if not is_asymmetric(model):
        raise ConfigError(f"stage1_checkpoint {path} is not an asymmetric model (no query/document Router).")
    found = fingerprint_modules(tower_modules(model, DOCUMENT_ROUTE))
    expected = fingerprint_modules(tower_modules(teacher, DOCUMENT_ROUTE))
    if found != expected:
        raise ConfigError(
            f"stage1_checkpoint {path} was aligned to another document tower (fingerprint {found[:12]}, the "
            f"teacher's is {expected[:12]}): its query tower matches that tower's space, not the teacher's. Use "
            "the teacher the checkpoint was made with, or run stage 1 again."
        )
    freeze_tower(model, DOCUMENT_ROUTE)
    return model


# --------------------------------------------------------------------------------------------------- data


def _cache(config: DAFTConfig) -> EmbeddingCache:
    return EmbeddingCache(Path(config.cache_dir) / "embeddings" if config.cache_dir else None)


def _document_embeddings(teacher: SentenceTransformer, texts: list[str], config: DAFTConfig, what: str) -> np.ndarray:
    # The main process encodes and writes the cache; the other ranks then read it back.
    with distributed_state().main_process_first():
        return _cache(config).encode(
            teacher, texts, route="document", batch_size=config.teacher_batch_size, description=what
        )


def _dev_holdout(train: RetrievalDataset, count: int, seed: int) -> RetrievalDataset:
    judged = sorted(q for q, rels in train.qrels.items() if any(s > 0 for s in rels.values()))
    if len(judged) < 2 * count:
        raise ConfigError(
            f"{train.name}:{train.split} has {len(judged)} judged queries, too few to hold out "
            f"dev_holdout_queries={count} for early stopping and train on the rest; lower dev_holdout_queries or "
            "name a dev_dataset."
        )
    chosen = random.Random(seed).sample(judged, count)
    return RetrievalDataset(
        name=train.name,
        split=f"{train.split}-heldout",
        corpus=train.corpus,
        queries={q: train.queries[q] for q in chosen},
        qrels={q: train.qrels[q] for q in chosen},
        source=train.source,
        report=dict(train.report),
    )


def _restrict(queries: QuerySet, allowed_ids: set[str]) -> QuerySet:
    """Keep the queries of a sub-sampled training split (ids from collect_training_queries are ``SOURCE:id``)."""
    keep = [i for i, query_id in enumerate(queries.ids) if query_id.split(":", 1)[1] in allowed_ids]
    queries.notes.append(f"sub-sampled to {len(keep)} of {len(queries)}")
    queries.ids, queries.texts = [queries.ids[i] for i in keep], [queries.texts[i] for i in keep]
    return queries


def _pairs(train: RetrievalDataset, queries: QuerySet, limit: int | None, seed: int) -> list[tuple[str, str, int]]:
    """(query, positive document text, the document's row in the corpus) for every judged relevant document."""
    rows = {doc_id: row for row, doc_id in enumerate(train.corpus_ids)}
    pairs = []
    for query_id, text in zip(queries.ids, queries.texts, strict=True):
        original_id = query_id.split(":", 1)[1]  # collect_training_queries prefixes ids with the source index
        for doc_id, score in train.qrels.get(original_id, {}).items():
            if score > 0 and doc_id in train.corpus:
                pairs.append((text, train.corpus[doc_id], rows[doc_id]))
    if not pairs:
        raise ConfigError(f"{train.name}:{train.split}: no (query, relevant document) pairs left to train on.")
    if limit is not None and len(pairs) > limit:
        pairs = random.Random(seed).sample(pairs, limit)
    return pairs


def _alignment_pool(
    train: RetrievalDataset,
    queries: QuerySet,
    teacher: SentenceTransformer,
    config: DAFTConfig,
    excluded: Sequence[RetrievalDataset],
    corpus_embeddings: np.ndarray,
) -> tuple[list[str], np.ndarray]:
    """Texts for stage 1 and the checks, with the document tower's embeddings of each."""
    texts, targets = [], []
    if config.align_on in ("documents", "both"):
        corpus, embeddings = [train.corpus[d] for d in train.corpus_ids], corpus_embeddings
        chosen = list(range(len(corpus)))
        if config.align_max_documents is not None and len(chosen) > config.align_max_documents:
            chosen = sorted(random.Random(config.seed).sample(chosen, config.align_max_documents))
        texts += [corpus[i] for i in chosen]
        targets.append(np.asarray(embeddings[chosen], dtype=np.float32))
    query_texts = list(queries.texts)
    if config.align_queries:
        query_texts += collect_training_queries(config.align_queries, exclude=excluded).texts
    if config.align_on in ("queries", "both"):
        query_texts = list(dict.fromkeys(query_texts))
        embeddings = _document_embeddings(teacher, query_texts, config, "training queries (document tower)")
        texts += query_texts
        targets.append(np.asarray(embeddings, dtype=np.float32))
    unique = {}
    for index, text in enumerate(texts):
        unique.setdefault(text, index)  # identical texts would be both trained on and held out
    keep = sorted(unique.values())
    return [texts[i] for i in keep], np.concatenate(targets)[keep]


def prepare_daft_data(config: DAFTConfig, teacher: SentenceTransformer) -> DAFTData:
    """Load the training split, the dev and evaluation sets, the training pairs, the stage-1 texts with their
    document-tower embeddings (cached), and the held-out texts (never trained on)."""
    train = load_eval_dataset(config.train_dataset, default_split="train")
    if config.train_max_queries or config.train_max_documents:
        train = train.subsample(config.train_max_queries, config.train_max_documents, seed=config.seed)
    eval_datasets = [
        load_eval_dataset(spec).subsample(config.eval_max_queries, config.eval_max_documents, seed=config.seed)
        if config.eval_max_queries or config.eval_max_documents
        else load_eval_dataset(spec)
        for spec in config.eval_datasets
    ]
    if config.dev_dataset:
        dev = load_eval_dataset(config.dev_dataset, default_split="dev")
    else:
        dev = _dev_holdout(train, config.dev_holdout_queries, config.seed)
    dev = dev.subsample(config.dev_max_queries, config.dev_max_documents, seed=config.seed)
    excluded = [dev] + (eval_datasets if config.exclude_eval_queries else [])
    train_spec = config.train_dataset if ":" in config.train_dataset else f"{config.train_dataset}:train"
    queries = collect_training_queries([train_spec], exclude=excluded)
    if config.train_max_queries or config.train_max_documents:
        queries = _restrict(queries, set(train.queries))
    pairs = _pairs(train, queries, config.max_train_pairs, config.seed)
    # The whole corpus in file order: the same cache entry as its retrieval evaluation, encoded once for all.
    corpus = [train.corpus[d] for d in train.corpus_ids]
    corpus_embeddings = _document_embeddings(teacher, corpus, config, f"{train.name} documents")
    texts, targets = _alignment_pool(train, queries, teacher, config, excluded, corpus_embeddings)
    held = min(config.heldout_texts, len(texts) // 4)
    if held < 8:
        raise ConfigError(
            f"Only {len(texts)} distinct texts for stage 1 and its checks; at least 32 are needed (a quarter is held "
            "out for the divergence estimate). Use a larger train_dataset or align_on: both."
        )
    order = list(range(len(texts)))
    random.Random(config.seed).shuffle(order)
    heldout, train_rows = sorted(order[:held]), sorted(order[held:])
    return DAFTData(
        train=train,
        dev=dev,
        eval_datasets=eval_datasets,
        training_queries=queries,
        pairs=[(query, document) for query, document, _ in pairs],
        pair_embeddings=np.asarray(corpus_embeddings[[row for _, _, row in pairs]], dtype=np.float32),
        align_texts=[texts[i] for i in train_rows],
        align_targets=targets[train_rows],
        heldout_texts=[texts[i] for i in heldout],
        heldout_targets=targets[heldout],
    )


# --------------------------------------------------------------------------------------------------- stages


def _divergence(model: SentenceTransformer, data: DAFTData, config: DAFTConfig) -> TowerDivergence:
    frozen = not any(p.requires_grad for m in tower_modules(model, DOCUMENT_ROUTE) for p in m.parameters())
    return tower_divergence(
        model,
        data.heldout_texts,
        data.heldout_targets if frozen else None,
        k=config.divergence_k,
        batch_size=config.teacher_batch_size,
        seed=config.seed,
    )


def _collapse_callback(config: DAFTConfig, stage: StageSettings, data: DAFTData) -> CollapseCallback:
    return CollapseCallback(
        data.heldout_texts[: config.collapse_probe_texts],
        check_steps=config.collapse_check_steps or stage.eval_steps,
        action=config.collapse_action,
        detector=config.collapse_detector(),
        batch_size=config.teacher_batch_size,
    )


def _contrastive_setup(
    model: SentenceTransformer, data: DAFTData, config: DAFTConfig, document_frozen: bool
) -> tuple[Dataset, nn.Module, dict[str, Any]]:
    """The (query, positive) training set, the in-batch-negatives loss and the trainer arguments they need.

    With a frozen document tower (``finetune_loss: auto``) the positives' embeddings come precomputed from the
    cache (:class:`FrozenDocumentRankingLoss`): the same objective as MNRL without a document forward pass per
    step. A trained document tower needs the texts (MNRL, or its cached variant for large batches).
    """
    queries = [query for query, _ in data.pairs]
    # NO_DUPLICATES: a query twice in one batch would be its own false negative.
    arguments: dict[str, Any] = {"batch_sampler": BatchSamplers.NO_DUPLICATES}
    # Under DDP the in-batch negatives are the global batch's (every rank's positives), as in one process.
    gather = config.gather_across_devices and distributed_state().num_processes > 1
    name = config.finetune_loss
    if name == "auto":
        name = "frozen_documents" if document_frozen else "mnrl"
    if name == "frozen_documents":
        dataset = Dataset.from_dict({"query": queries, "label": data.pair_embeddings})
        arguments["router_mapping"] = {"query": QUERY_ROUTE}
        loss = FrozenDocumentRankingLoss(model, scale=config.finetune_scale, gather_across_devices=gather)
        return dataset, loss, arguments
    dataset = Dataset.from_dict({"query": queries, "positive": [document for _, document in data.pairs]})
    arguments["router_mapping"] = {"query": QUERY_ROUTE, "positive": DOCUMENT_ROUTE}
    if name == "cached_mnrl":
        loss = CachedMultipleNegativesRankingLoss(
            model,
            scale=config.finetune_scale,
            mini_batch_size=config.finetune_mini_batch_size,
            gather_across_devices=gather,
        )
    else:
        loss = MultipleNegativesRankingLoss(model, scale=config.finetune_scale, gather_across_devices=gather)
    return dataset, loss, arguments


def _run_trainer(
    trainer: SentenceTransformerTrainer,
    stage: StageSettings,
    report: StageReport,
    collapse: CollapseCallback,
    initial_metric: float,
    greater_is_better: bool,
) -> None:
    """Train with early stopping; keep the starting weights if no checkpoint beat the starting ``initial_metric``.

    The Trainer only compares checkpoints with each other (its ``eval_on_start`` score takes no part in model
    selection), so a stage that only made things worse would otherwise end on its least bad checkpoint.
    """
    model = trainer.model
    start = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
    started = time.perf_counter()
    trainer.train(resume_from_checkpoint=resume_checkpoint(stage))
    state = trainer.state
    report.initial_metric = initial_metric
    best = state.best_metric
    if best is None or not (best > initial_metric if greater_is_better else best < initial_metric):
        logger.warning(
            "%s: no checkpoint beat the starting %s (%.4g, best %s); keeping the starting weights.",
            stage.name,
            report.metric,
            initial_metric,
            best,
        )
        model.load_state_dict(start)
        report.kept_initial = True
    report.train_seconds = round(time.perf_counter() - started, 1)
    report.steps, report.max_steps = state.global_step, state.max_steps
    report.stopped_early = state.global_step < state.max_steps
    report.best_metric = state.best_metric
    report.best_checkpoint = state.best_model_checkpoint
    report.log_history = [e for e in state.log_history if not any(k.startswith("collapse/") for k in e)]
    report.collapse_history = collapse.history
    report.collapsed = collapse.collapsed


def align_stage(
    model: SentenceTransformer, data: DAFTData, config: DAFTConfig, callbacks: Sequence[TrainerCallback] = ()
) -> StageReport:
    """Stage 1: train the query tower (document tower frozen) until the held-out divergence stops decreasing.

    The model is modified in place and ends at the checkpoint with the lowest divergence.
    """
    stage = config.stage_settings("align")
    freeze_tower(model, DOCUMENT_ROUTE)
    report = StageReport(stage="align", metric=_ALIGN_METRIC)
    report.divergence_before = _divergence(model, data, config).to_dict()
    if config.align_loss == "contrastive":
        # The paper's code: the same contrastive objective as stage 2, with the document encoder frozen.
        train_dataset, loss, extra = _contrastive_setup(model, data, config, document_frozen=True)
    else:
        train_dataset = Dataset.from_dict({"text": data.align_texts, "label": data.align_targets})
        loss = EmbeddingAlignmentLoss(model, distance_metric=config.align_loss)
        extra = {"router_mapping": {"text": QUERY_ROUTE}}
    collapse = _collapse_callback(config, stage, data)
    trainer = SentenceTransformerTrainer(
        model=model,
        args=training_arguments(
            stage,
            has_dev=True,
            load_best_model_at_end=True,
            metric_for_best_model=_ALIGN_METRIC,
            greater_is_better=False,
            **extra,
        ),
        train_dataset=train_dataset,
        loss=loss,
        evaluator=DivergenceEvaluator(
            data.heldout_texts,
            data.heldout_targets,
            k=config.divergence_k,
            batch_size=config.teacher_batch_size,
            seed=config.seed,
        ),
        callbacks=[EarlyStoppingCallback(early_stopping_patience=stage.patience), collapse, *callbacks],
    )
    initial = report.divergence_before["kl_divergence"]
    _run_trainer(trainer, stage, report, collapse, initial, greater_is_better=False)
    report.divergence_after = _divergence(model, data, config).to_dict()
    logger.info(
        "Stage 1 (alignment): KL divergence %.2f -> %.2f (noise floor %.2f) in %d steps%s.",
        report.divergence_before["kl_divergence"],
        report.divergence_after["kl_divergence"],
        report.divergence_after["noise_floor"],
        report.steps,
        ", stopped early" if report.stopped_early else "",
    )
    return report


def _two_tower_optimizer(model: SentenceTransformer, config: DAFTConfig, stage: StageSettings) -> torch.optim.Optimizer:
    # A light query tower needs a far larger rate than the pre-trained document tower: one group each.
    groups = []
    for route, rate in ((QUERY_ROUTE, stage.learning_rate), (DOCUMENT_ROUTE, config.finetune_document_learning_rate)):
        params = [p for m in tower_modules(model, route) for p in m.parameters() if p.requires_grad]
        groups.append({"params": params, "lr": rate})
    return torch.optim.AdamW(groups, weight_decay=stage.weight_decay)


def finetune_stage(
    model: SentenceTransformer, data: DAFTData, config: DAFTConfig, callbacks: Sequence[TrainerCallback] = ()
) -> StageReport:
    """Stage 2: contrastive fine-tuning (in-batch negatives) with early stopping on the dev nDCG@10.

    ``finetune_towers: query`` keeps the document tower frozen (the existing index stays valid); ``both`` trains
    it too (as in the paper), so the corpus must be re-encoded afterwards. The model ends at its best dev checkpoint.
    """
    from asym_st.training.dev_evaluator import RetrievalDevEvaluator

    stage = config.stage_settings("finetune")
    both = config.finetune_towers == "both"
    freeze_tower(model, DOCUMENT_ROUTE, frozen=not both)
    if both:
        model.asym_st_record.document_tower_frozen = False
        logger.warning("Stage 2 trains the document tower too: the corpus must be re-encoded with the new model.")
    report = StageReport(stage="finetune", metric=_DEV_METRIC)
    report.divergence_before = _divergence(model, data, config).to_dict()
    evaluator = RetrievalDevEvaluator(data.dev, config.teacher_batch_size, cache_dir=config.cache_dir, name="dev")
    if both:
        evaluator.config.use_cache = False  # a moving document tower would fill the shared cache with stale entries
    collapse = _collapse_callback(config, stage, data)
    train_dataset, loss, extra = _contrastive_setup(model, data, config, document_frozen=not both)
    trainer = SentenceTransformerTrainer(
        model=model,
        args=training_arguments(
            stage,
            has_dev=True,
            load_best_model_at_end=True,
            metric_for_best_model=_DEV_METRIC,
            greater_is_better=True,
            **extra,
        ),
        train_dataset=train_dataset,
        loss=loss,
        evaluator=evaluator,
        callbacks=[EarlyStoppingCallback(early_stopping_patience=stage.patience), collapse, *callbacks],
        optimizers=(_two_tower_optimizer(model, config, stage), None) if both else (None, None),
    )
    _run_trainer(trainer, stage, report, collapse, evaluator(model)["dev_ndcg_at_10"], greater_is_better=True)
    if both:
        freeze_tower(model, DOCUMENT_ROUTE)  # trained, now fixed again: the saved model's index is its own
    report.divergence_after = _divergence(model, data, config).to_dict()
    logger.info(
        "Stage 2 (fine-tuning): best dev nDCG@10 %s after %d steps%s; collapsed towers: %s.",
        report.best_metric,
        report.steps,
        ", stopped early" if report.stopped_early else "",
        sorted(report.collapsed) or "none",
    )
    return report


# --------------------------------------------------------------------------------------------------- pipeline


def _final_diagnostics(model: SentenceTransformer, data: DAFTData, config: DAFTConfig) -> dict[str, Any]:
    probe = data.heldout_texts[: config.collapse_probe_texts]
    detector = config.collapse_detector()
    document = tower_diagnostics(model, probe, DOCUMENT_ROUTE, config.teacher_batch_size)
    query = tower_diagnostics(model, probe, QUERY_ROUTE, config.teacher_batch_size)
    return {
        "probe_texts": len(probe),
        "query": query.to_dict(),
        "document": document.to_dict(),
        "query_collapsed": detector.check(query, document).reasons,
        "divergence": _divergence(model, data, config).to_dict(),
    }


def _method(config: DAFTConfig) -> str:
    if config.stages == ["finetune"] and config.stage1_checkpoint is None:
        return "contrastive fine-tuning (no alignment)"
    return "DAFT" if "finetune" in config.stages else "DAFT stage 1 (alignment)"


def _save_stage1(model: SentenceTransformer, report: StageReport, data: DAFTData, config: DAFTConfig) -> None:
    def write_record(folder: Path) -> None:
        record = {"method": "DAFT stage 1 (alignment)", "config": config.to_dict(), "data": data.summary()}
        atomic_write_json(folder / TRAINING_CONFIG_FILE, {**record, "stages": {"align": report.to_dict()}})

    model.asym_st_record.method = "DAFT stage 1 (alignment)"
    report.output_dir = str(
        save_asymmetric_model(
            model, config.resolved_stage1_dir, overwrite=config.overwrite_output_dir, before_commit=write_record
        )
    )


# Settings that change what stage 1 produces: a finished stage 1 made with other values is not reused.
_STAGE1_FIELDS = ("teacher", "teacher_revision", "train_dataset", "train_max_queries", "train_max_documents", "seed")
_STAGE1_PREFIXES = ("query_", "align_")


def _reusable_stage1(config: DAFTConfig) -> bool:
    """True when ``resume_from_checkpoint: auto`` finds a finished stage 1 made with this config's stage-1 settings.

    Raises:
        ConfigError: the finished stage 1 was made with other settings (reusing it would silently mix runs).
    """
    record_path = Path(config.resolved_stage1_dir) / TRAINING_CONFIG_FILE
    if config.resume_from_checkpoint != "auto" or not record_path.is_file():
        return False
    stored = json.loads(record_path.read_text(encoding="utf-8")).get("config", {})
    current = config.to_dict()
    relevant = [k for k in current if k in _STAGE1_FIELDS or k.startswith(_STAGE1_PREFIXES)]
    differing = sorted(k for k in relevant if stored.get(k) != current[k])
    if differing:
        raise ConfigError(
            f"{config.resolved_stage1_dir} holds a finished stage 1 made with other settings ({', '.join(differing)} "
            "differ), so resume_from_checkpoint: auto cannot reuse it. Delete it, point stage1_checkpoint elsewhere, "
            "or set resume_from_checkpoint: none with overwrite_output_dir: true to train stage 1 again."
        )
    return True


def train_daft(config: DAFTConfig, callbacks: Sequence[TrainerCallback] = (), evaluate: bool = True) -> DAFTResult:
    """Run the configured DAFT stages end to end and save the final model (see the module docstring).

    Args:
        config: the run's settings (``config.stages`` picks stage 1, stage 2 or both).
        callbacks: extra ``transformers`` trainer callbacks (added to both stages).
        evaluate: evaluate teacher and student on ``config.eval_datasets`` and measure latency at the end.

    Example::

        from asym_st.training import DAFTConfig, train_daft

        result = train_daft(DAFTConfig(
            teacher="sentence-transformers/all-MiniLM-L6-v2",
            query_encoder="static",
            train_dataset="../shared/data/beir/scifact:train",
            eval_datasets=["../shared/data/beir/scifact:test"],
            output_dir="minilm-daft-static",
        ))
        print(result.stages["align"].divergence_after, result.retention.to_markdown())
    """
    config.require_sources()
    state = distributed_state()
    teacher = load_sentence_transformer(config.teacher, revision=config.teacher_revision)
    data = prepare_daft_data(config, teacher)
    both_stages = config.stages == ["align", "finetune"]
    if "align" in config.stages and both_stages and _reusable_stage1(config):
        logger.info("Reusing the finished stage 1 in %s (resume_from_checkpoint=auto).", config.resolved_stage1_dir)
        model = load_stage1_checkpoint(config.resolved_stage1_dir, teacher)
        stages = {"align": StageReport(stage="align", metric=_ALIGN_METRIC, reused=True)}
        stages["align"].output_dir = config.resolved_stage1_dir
    elif "align" in config.stages:
        model = build_daft_model(config, teacher)
        stages = {"align": align_stage(model, data, config, callbacks)}
        if both_stages and state.is_main_process:
            _save_stage1(model, stages["align"], data, config)
        state.wait_for_everyone()
    elif config.stage1_checkpoint is not None:
        model, stages = load_stage1_checkpoint(config.stage1_checkpoint, teacher), {}
    else:
        logger.warning("Stage 2 from unaligned towers (allow_unaligned): the plain contrastive baseline.")
        model, stages = build_daft_model(config, teacher), {}
    if "finetune" in config.stages:
        stages["finetune"] = finetune_stage(model, data, config, callbacks)
    model.asym_st_record.method = _method(config)
    result = DAFTResult(
        model=model,
        output_dir=None,
        training_queries=data.training_queries,
        stages=stages,
        train_seconds=sum(s.train_seconds for s in stages.values()),
        log_history=[e for s in stages.values() for e in s.log_history],
    )
    if state.is_main_process:
        result.diagnostics = _final_diagnostics(model, data, config)
        extra = {
            "stages": {name: report.to_dict() for name, report in stages.items()},
            "diagnostics": result.diagnostics,
            "data": data.summary(),
            "light_encoder": config.light_encoder().to_dict(),
        }
        evaluate_and_save(
            result, teacher, data.eval_datasets, config, evaluate=evaluate, method=_method(config), extra_record=extra
        )
    state.wait_for_everyone()
    return result
