"""TAS-Balanced: topic-aware batches, balanced margin pairs and dual-teacher Margin-MSE (Hofstätter et al., 2021).

The pipeline composes asym-st's blocks:

1. the student: ``init_from`` (e.g. a QED student) or the teacher truncated as in QED; the teacher is the student's
   document tower (``towers: query``, frozen: the index stays valid) or a frozen copy (``towers: both``);
2. the labelled training queries of ``train_dataset``, minus any evaluation query (the leakage guard);
3. :func:`~asym_st.data.mining.mine_from_dataset`: the teacher's top candidates per query, positives dropped;
4. :func:`~asym_st.data.teacher_scores.add_teacher_scores`: the pairwise teacher's scores (cached on disk);
5. :func:`~asym_st.sampling.balanced_margin.build_margin_pairs` and
   :func:`~asym_st.sampling.topic_aware.cluster_queries` (computed by the main process, saved, read by every rank);
6. training in ``SentenceTransformerTrainer`` with :class:`~asym_st.sampling.TopicAwareBatchSampler` (one cluster a
   batch, one balanced-margin pair a query) and the dual-teacher loss:
   :class:`~asym_st.losses.FrozenDocumentMarginMSELoss` when only the query tower trains (passage embeddings are the
   cached index; no passage forward pass), :class:`~asym_st.losses.DualTeacherMarginMSELoss` when both towers train;
7. evaluation, latency and an atomic save, as in QED (:func:`~asym_st.training.reporting.evaluate_and_save`).

Checkpoints, ``resume_from_checkpoint: auto``, the dev evaluator and ``accelerate launch`` / ``torchrun`` behave as in
QED (the code is shared).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from accelerate import PartialState
from datasets import Dataset
from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer
from sentence_transformers.cross_encoder import CrossEncoder
from transformers import TrainerCallback

from asym_st.data.beir import RetrievalDataset
from asym_st.data.cache import EmbeddingCache
from asym_st.data.mining import MiningConfig, mine_from_dataset
from asym_st.data.queries import QuerySet
from asym_st.data.teacher_scores import (
    BiEncoderScorer,
    CrossEncoderScorer,
    PairScorer,
    ScoreCache,
    ScoreFileScorer,
    add_teacher_scores,
)
from asym_st.losses.dual_teacher_margin_mse import DualTeacherMarginMSELoss
from asym_st.losses.frozen_document_margin_mse import FrozenDocumentMarginMSELoss
from asym_st.modeling import (
    load_sentence_transformer,
)
from asym_st.sampling.balanced_margin import MarginPairs, MarginPairsConfig, build_margin_pairs
from asym_st.sampling.topic_aware import ClusteringConfig, QueryClusters, TopicAwareBatchSampler, cluster_queries
from asym_st.training.dev_evaluator import RetrievalDevEvaluator
from asym_st.training.qed import QEDResult
from asym_st.training.reporting import evaluate_and_save
from asym_st.training.tas_balanced_config import TASBalancedConfig
from asym_st.training.trainer_setup import (
    build_student,
    distributed_state,
    evaluation_splits,
    labelled_training_split,
    resume_checkpoint,
    training_arguments,
)

__all__ = ["TASBalancedResult", "tas_balanced", "make_pairwise_scorer", "training_pairs"]

logger = logging.getLogger(__name__)

METHOD = "TAS-Balanced"


@dataclass
class TASBalancedResult(QEDResult):
    """A QED result plus what TAS-Balanced adds (mining, pairs, clusters, sampler overhead, loss settings)."""

    details: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------- student


# ----------------------------------------------------------------------------------------------- data


def make_pairwise_scorer(config: TASBalancedConfig, teacher: SentenceTransformer, cache: EmbeddingCache) -> PairScorer:
    """The pairwise teacher named by ``pairwise_teacher`` / ``pairwise_teacher_kind``."""
    if config.pairwise_teacher_kind == "score_file":
        return ScoreFileScorer(config.pairwise_teacher)
    if config.pairwise_teacher_kind == "cross_encoder":
        return CrossEncoderScorer(CrossEncoder(config.pairwise_teacher), batch_size=config.teacher_batch_size)
    model = teacher if config.pairwise_teacher == "teacher" else load_sentence_transformer(config.pairwise_teacher)
    return BiEncoderScorer(model, batch_size=config.teacher_batch_size, cache=cache)


def training_pairs(
    config: TASBalancedConfig, teacher: SentenceTransformer, train: RetrievalDataset, cache: EmbeddingCache
) -> tuple[MarginPairs, dict[str, Any]]:
    """Mine, score and pair: the margin pairs of the training queries, and what was built on the way."""
    candidates = mine_from_dataset(
        teacher,
        train,
        MiningConfig(top_k=config.num_candidates, batch_size=config.teacher_batch_size, include_texts=False),
        min_relevance=config.min_relevance,
        cache=cache,
    )
    scorer = make_pairwise_scorer(config, teacher, cache)
    score_cache = ScoreCache(Path(config.cache_dir) / "teacher_scores" if config.cache_dir else None)
    scored = add_teacher_scores(candidates, scorer, queries=train.queries, corpus=train.corpus, cache=score_cache)
    pairs = build_margin_pairs(
        scored,
        MarginPairsConfig(
            max_positives_per_query=config.max_positives_per_query,
            max_negatives_per_query=config.max_negatives_per_query,
        ),
    )
    facts = {
        "training_queries": len(train.queries),
        "mined_candidates_per_query": config.num_candidates,
        "pair_rows": len(pairs.dataset),
        "queries_with_pairs": pairs.num_queries,
        "skipped_no_negatives": len(pairs.skipped_no_negatives),
        "skipped_no_positives": len(pairs.skipped_no_positives),
        "pairwise_teacher": config.pairwise_teacher,
        "pairwise_teacher_kind": config.pairwise_teacher_kind,
    }
    return pairs, facts


def _paired_query_ids(pairs: MarginPairs, train: RetrievalDataset) -> list[str]:
    """The queries that have pair rows, in the training split's order."""
    present = set(pairs.dataset["query_id"])
    return [query_id for query_id in train.queries if query_id in present]


def _clusters(
    config: TASBalancedConfig, query_ids: list[str], teacher_queries: np.ndarray, state: PartialState
) -> QueryClusters:
    """k-means over the teacher's query embeddings, computed once by the main process and read by every rank (so
    every DDP rank samples the same global batch sequence), and kept for a resumed run."""
    if not config.topic_aware:
        return QueryClusters.from_labels([0] * len(query_ids), query_ids)
    digest = hashlib.sha256("\n".join(query_ids).encode()).hexdigest()[:12]
    path = Path(config.resolved_checkpoint_dir) / f"clusters-k{config.num_clusters}-s{config.seed}-{digest}.npz"
    with state.main_process_first():
        if path.is_file():
            return QueryClusters.load(path)
        clusters = cluster_queries(
            teacher_queries,
            query_ids,
            ClusteringConfig(
                num_clusters=config.num_clusters, min_cluster_size=config.per_device_train_batch_size, seed=config.seed
            ),
        )
        if state.is_main_process:
            path.parent.mkdir(parents=True, exist_ok=True)
            clusters.save(path)
    return clusters


def _embeddings(
    model: SentenceTransformer, texts: list[str], route: str, cache: EmbeddingCache, config: TASBalancedConfig
) -> np.ndarray:
    with distributed_state().main_process_first():
        embeddings = np.asarray(
            cache.encode(model, texts, route=route, batch_size=config.teacher_batch_size, description=f"{route}s")
        )
    if str(model.similarity_fn_name) == "cosine":  # the losses score by dot product
        embeddings = embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
    return embeddings.astype(np.float32)


def _frozen_document_dataset(
    pairs: MarginPairs, queries: Mapping[str, str], query_ids: list[str], corpus_ids: list[str]
) -> Dataset:
    """One row per pair: the query text, and ``[margin, query row, positive row, negative row]`` as the label."""
    query_row = {query_id: i for i, query_id in enumerate(query_ids)}
    document_row = {doc_id: i for i, doc_id in enumerate(corpus_ids)}
    table = pairs.dataset
    labels = np.stack(
        [
            np.asarray(table["label"], dtype=np.float64),
            np.fromiter((query_row[q] for q in table["query_id"]), dtype=np.float64),
            np.fromiter((document_row[d] for d in table["positive_id"]), dtype=np.float64),
            np.fromiter((document_row[d] for d in table["negative_id"]), dtype=np.float64),
        ],
        axis=1,
    )
    dataset = Dataset.from_dict({"query": [queries[q] for q in table["query_id"]], "label": labels})
    return dataset.with_format("torch")


def _inbatch_teacher(config: TASBalancedConfig, teacher: SentenceTransformer) -> SentenceTransformer | None:
    if not config.uses_inbatch_teacher:
        return None
    return teacher if config.inbatch_teacher == "teacher" else load_sentence_transformer(config.inbatch_teacher)


def _loss_and_data(
    config: TASBalancedConfig,
    model: SentenceTransformer,
    teacher: SentenceTransformer,
    train: RetrievalDataset,
    pairs: MarginPairs,
    query_ids: list[str],
    cache: EmbeddingCache,
) -> tuple[Any, Dataset, dict[str, str], np.ndarray]:
    """The loss, the training dataset, the router mapping, and the teacher's embeddings of the paired queries."""
    # All training queries in the split's order: the same cache entry as mining's (no second encoding); the rows of
    # the paired queries are then selected.
    all_ids = list(train.queries)
    rows = {query_id: i for i, query_id in enumerate(all_ids)}
    teacher_queries = _embeddings(teacher, [train.queries[q] for q in all_ids], "query", cache, config)
    teacher_queries = teacher_queries[[rows[q] for q in query_ids]]
    inbatch_teacher = _inbatch_teacher(config, teacher)
    if config.towers == "both":
        loss = DualTeacherMarginMSELoss(model, inbatch_teacher=inbatch_teacher, alpha=config.alpha)
        mapping = {"query": "query", "positive": "document", "negative": "document"}
        return loss, pairs.with_texts(train.queries, train.corpus), mapping, teacher_queries
    corpus_ids = list(train.corpus)
    corpus_texts = [train.corpus[d] for d in corpus_ids]
    documents = _embeddings(teacher, corpus_texts, "document", cache, config)
    inbatch = {}
    if inbatch_teacher is teacher:
        inbatch = {"teacher_query_embeddings": teacher_queries}
    elif inbatch_teacher is not None:
        inbatch = {
            "teacher_query_embeddings": _embeddings(
                inbatch_teacher, [train.queries[q] for q in query_ids], "query", cache, config
            ),
            "teacher_document_embeddings": _embeddings(inbatch_teacher, corpus_texts, "document", cache, config),
        }
    loss = FrozenDocumentMarginMSELoss(model, documents, alpha=config.alpha, **inbatch)
    dataset = _frozen_document_dataset(pairs, train.queries, query_ids, corpus_ids)
    return loss, dataset, {"query": "query"}, teacher_queries


def _sampler_epoch_seconds(factory, dataset: Dataset, config: TASBalancedConfig) -> float:
    """Wall time of drawing one epoch of batches (the sampler's overhead; the benchmark reports it)."""
    sampler = factory(dataset, batch_size=config.per_device_train_batch_size, seed=config.seed)
    started = time.perf_counter()
    for _ in sampler:
        pass
    return time.perf_counter() - started


# ----------------------------------------------------------------------------------------------- pipeline


def tas_balanced(
    config: TASBalancedConfig, callbacks: Sequence[TrainerCallback] = (), evaluate: bool = True
) -> TASBalancedResult:
    """Run TAS-Balanced end to end and save the student (see the module docstring for the steps).

    Example::

        from asym_st.training import TASBalancedConfig, tas_balanced

        result = tas_balanced(TASBalancedConfig(
            init_from="minilm-qed-2l",                       # a QED student: frozen teacher document tower
            train_dataset="../shared/data/beir/nfcorpus:train",
            eval_datasets=["../shared/data/beir/nfcorpus:test"],
            num_clusters=25,
            output_dir="minilm-tas-b-2l",
        ))
        print(result.retention.to_markdown())
    """
    config.require_sources()
    state = distributed_state()
    model, teacher = build_student(config, METHOD)
    cache = EmbeddingCache(Path(config.cache_dir) / "embeddings" if config.cache_dir else None)
    eval_datasets, dev, excluded = evaluation_splits(config)
    train = labelled_training_split(config.train_dataset, excluded, config.max_train_queries)
    with state.main_process_first():
        pairs, facts = training_pairs(config, teacher, train, cache)
    query_ids = _paired_query_ids(pairs, train)
    loss, train_dataset, router_mapping, teacher_queries = _loss_and_data(
        config, model, teacher, train, pairs, query_ids, cache
    )
    clusters = _clusters(config, query_ids, teacher_queries, state)
    factory = TopicAwareBatchSampler.factory(clusters, pairs=pairs.sampler(num_bins=config.num_margin_bins))
    facts.update(
        clusters=clusters.num_clusters,
        cluster_sizes=[int(clusters.sizes().min()), int(clusters.sizes().max())],
        margin_bins=config.num_margin_bins,
        sampler_epoch_seconds=round(_sampler_epoch_seconds(factory, train_dataset, config), 4),
        loss={"class": type(loss).__name__, **loss.get_config_dict()},
    )
    dev_evaluator = RetrievalDevEvaluator(dev, config.teacher_batch_size, cache_dir=config.cache_dir) if dev else None
    trainer = SentenceTransformerTrainer(
        model=model,
        args=training_arguments(
            config, has_dev=dev_evaluator is not None, router_mapping=router_mapping, batch_sampler=factory
        ),
        train_dataset=train_dataset,
        loss=loss,
        evaluator=dev_evaluator,
        callbacks=list(callbacks),
    )
    started = time.perf_counter()
    trainer.train(resume_from_checkpoint=resume_checkpoint(config))
    result = TASBalancedResult(
        model=model,
        output_dir=None,
        training_queries=QuerySet(query_ids, [train.queries[q] for q in query_ids], source=config.train_dataset),
        train_seconds=time.perf_counter() - started,
        log_history=list(trainer.state.log_history),
        details=facts,
    )
    if state.is_main_process:
        evaluate_and_save(result, teacher, eval_datasets, config, evaluate=evaluate, method=METHOD, extra_record=facts)
    state.wait_for_everyone()
    return result
