"""MD2PR: multi-level distillation from a cross-encoder (Li, Hai and Tang, 2023), for an asymmetric student.

The pipeline composes asym-st's blocks:

1. the student: ``init_from`` (e.g. a QED student) or the teacher truncated as in QED; the bi-encoder teacher is the
   student's document tower (``towers: query``, frozen: the index stays valid) or a frozen copy (``towers: both``);
2. the labelled training queries of ``train_dataset``, minus any evaluation query (the leakage guard);
3. the cross-encoder teacher: ``cross_encoder`` (Hub id / path), or one trained first
   (:func:`~asym_st.training.cross_encoder_teacher.train_cross_encoder`, saved and reused by later runs);
4. :func:`~asym_st.data.mining.mine_from_dataset`: the bi-encoder's top candidates per query, positives dropped;
   each row is (query, a positive, ``num_negatives`` negatives sampled from the candidates);
5. the cross-encoder's scores of every (query, candidate) pair (:func:`~asym_st.data.teacher_scores.score_pairs`)
   and, for the word level, its query→passage attention on the student's tokens
   (:func:`~asym_st.data.teacher_attention.pair_attention`); both cached on disk, so the cross-encoder runs once;
6. training in ``SentenceTransformerTrainer`` with :class:`~asym_st.losses.MD2PRSentenceLoss` (sentence level) inside
   :class:`~asym_st.losses.TokenInteractionLoss` (word level, one shared forward pass), and the
   :class:`~asym_st.sampling.DynamicFalseNegativeFilter`, whose threshold a callback recomputes every epoch or step
   and whose drop counts are logged (``fn_dropped`` / ``fn_seen`` in the training logs);
7. evaluation, latency and an atomic save, as in QED (:func:`~asym_st.training.reporting.evaluate_and_save`).

Checkpoints, ``resume_from_checkpoint: auto``, the dev evaluator and ``accelerate launch`` / ``torchrun`` behave as in
QED (the code is shared); a cross-encoder is only *trained* by a single process (train it once, then launch).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import Dataset
from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer
from sentence_transformers.cross_encoder import CrossEncoder
from sentence_transformers.sentence_transformer.data_collator import SentenceTransformerDataCollator
from sentence_transformers.util import pairwise_cos_sim, pairwise_dot_score
from transformers import TrainerCallback

from asym_st.data.beir import RetrievalDataset
from asym_st.data.cache import EmbeddingCache
from asym_st.data.mining import MiningConfig, mine_from_dataset
from asym_st.data.queries import QuerySet
from asym_st.data.teacher_attention import (
    AttentionCache,
    AttentionConfig,
    AttentionSummaries,
    CrossEncoderAttention,
    pair_attention,
    special_token_ids,
)
from asym_st.data.teacher_scores import CrossEncoderScorer, ScoreCache, ScoringConfig, score_pairs
from asym_st.losses.md2pr_sentence import MD2PRSentenceLoss
from asym_st.losses.token_interaction import TokenInteractionLoss
from asym_st.modeling import (
    DOCUMENT_ROUTE,
    QUERY_ROUTE,
    tower_modules,
)
from asym_st.sampling.false_negatives import DynamicFalseNegativeFilter
from asym_st.training.config_io import ConfigError
from asym_st.training.cross_encoder_teacher import (
    TEACHER_RECORD_FILE,
    CrossEncoderTeacherConfig,
    train_cross_encoder,
)
from asym_st.training.dev_evaluator import RetrievalDevEvaluator
from asym_st.training.md2pr_config import MD2PRConfig
from asym_st.training.qed import QEDResult
from asym_st.training.reporting import evaluate_and_save
from asym_st.training.teacher_signal import TeacherSignal, require_useful_teacher, teacher_signal
from asym_st.training.trainer_setup import (
    build_student,
    distributed_state,
    evaluation_splits,
    labelled_training_split,
    resume_checkpoint,
    training_arguments,
)

__all__ = [
    "FalseNegativeFilterCallback",
    "MD2PRResult",
    "MD2PRRows",
    "build_rows",
    "load_cross_encoder_teacher",
    "md2pr",
    "measure_teacher_signal",
    "retriever_row_scores",
    "row_scores",
    "scored_rows",
    "teacher_training_brief",
]

logger = logging.getLogger(__name__)

METHOD = "MD2PR"


@dataclass
class MD2PRResult(QEDResult):
    """A QED result plus what MD2PR adds (teacher, rows, filter counts, loss settings)."""

    details: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------- student


# ----------------------------------------------------------------------------------------------- teacher


def load_cross_encoder_teacher(
    config: MD2PRConfig, retriever: SentenceTransformer, excluded: Sequence[RetrievalDataset] = ()
) -> tuple[CrossEncoder, dict[str, Any]]:
    """``config.cross_encoder`` when given; else the cross-encoder trained earlier in ``cross_encoder_output_dir``
    (if it was trained with the same data, base and training settings), else a new one trained now (single
    process only; an interrupted training resumes from its checkpoints)."""
    if config.cross_encoder:
        return CrossEncoder(config.cross_encoder), {"cross_encoder": config.cross_encoder, "trained": False}
    teacher_config = _teacher_config(config)
    folder = Path(teacher_config.output_dir)
    record_file = folder / TEACHER_RECORD_FILE
    if record_file.is_file():
        record = json.loads(record_file.read_text())
        fields = {"train_dataset": "teacher_train_dataset", "base_model": "cross_encoder_base", **TEACHER_SETTINGS}
        changed = {
            fields[key]: (record.get(key, record.get("config", {}).get(key)), getattr(teacher_config, key))
            for key in fields
            if record.get(key, record.get("config", {}).get(key)) != getattr(teacher_config, key)
        }
        if changed:
            described = ", ".join(
                f"{name}: trained with {old!r}, asked {new!r}" for name, (old, new) in changed.items()
            )
            raise ConfigError(
                f"cross_encoder_output_dir {folder} holds a cross-encoder trained with other settings ({described}): "
                "delete it or set another cross_encoder_output_dir."
            )
        logger.info("Reusing the cross-encoder teacher in %s.", folder)
        return CrossEncoder(str(folder)), {
            "cross_encoder": str(folder),
            "trained": False,
            "training": teacher_training_brief(record),
        }
    if distributed_state().num_processes > 1:
        raise ConfigError(
            f"No cross-encoder in {folder}, and training one needs a single process: run the recipe once without "
            "torchrun / accelerate launch (the cross-encoder is saved there and reused), or set cross_encoder."
        )
    trained = train_cross_encoder(teacher_config, retriever=retriever, excluded=excluded)
    return trained.model, {
        "cross_encoder": str(folder),
        "trained": True,
        "training": teacher_training_brief(trained.details),
    }


#: The cross-encoder's own training settings (record key → MD2PR config field) that a reused teacher folder must
#: match, besides its data and base model. MD2PR's ``seed`` and ``num_candidates`` are left out on purpose: one
#: teacher serves every seed and mining depth of an ablation.
TEACHER_SETTINGS = {
    "learning_rate": "cross_encoder_learning_rate",
    "num_train_epochs": "cross_encoder_epochs",
    "max_steps": "cross_encoder_max_steps",
    "num_negatives": "cross_encoder_negatives",
    "max_length": "cross_encoder_max_length",
    "per_device_train_batch_size": "cross_encoder_batch_size",
}


def _teacher_config(config: MD2PRConfig) -> CrossEncoderTeacherConfig:
    """How MD2PR trains its cross-encoder when ``cross_encoder`` is empty."""
    return CrossEncoderTeacherConfig(
        train_dataset=config.resolved_teacher_train_dataset,
        output_dir=config.resolved_cross_encoder_dir,
        base_model=config.cross_encoder_base,
        num_candidates=config.num_candidates,
        num_negatives=min(config.cross_encoder_negatives, config.num_candidates),
        min_relevance=config.min_relevance,
        max_train_queries=config.max_train_queries,
        max_length=config.cross_encoder_max_length,
        num_train_epochs=config.cross_encoder_epochs,
        max_steps=config.cross_encoder_max_steps,
        per_device_train_batch_size=config.cross_encoder_batch_size,
        learning_rate=config.cross_encoder_learning_rate,
        seed=config.seed,
        logging_steps=config.logging_steps,
        resume_from_checkpoint=config.resume_from_checkpoint,
        batch_size=config.teacher_batch_size,
        cache_dir=str(Path(config.cache_dir)) if config.cache_dir else None,
        overwrite=True,
    )


def teacher_training_brief(record: Mapping[str, Any]) -> dict[str, Any]:
    """The headline facts of a cross-encoder teacher's training record (``teacher_training.json``)."""
    keys = ("base_model", "train_dataset", "training_queries", "training_pairs", "steps", "train_seconds", "learned")
    return {key: record.get(key) for key in keys}


# ----------------------------------------------------------------------------------------------- rows


@dataclass
class MD2PRRows:
    """Training rows (query, positive, negatives) as ids, and the distinct (query, passage) pairs they use.

    ``columns[r, c]`` is the index in ``pairs`` of row ``r``'s candidate ``c`` (``c = 0``: the positive), ``-1`` for an
    empty negative slot (a query with fewer candidates than ``num_negatives``).
    """

    query_ids: list[str]
    pairs: list[tuple[str, str]]
    columns: np.ndarray
    skipped_no_positive: list[str] = field(default_factory=list)

    @property
    def num_negatives(self) -> int:
        return self.columns.shape[1] - 1


def build_rows(
    candidates: Dataset, num_negatives: int, max_positives_per_query: int | None = 1, seed: int = 42
) -> MD2PRRows:
    """One row per (query, positive) (at most ``max_positives_per_query`` per query), each with ``num_negatives``
    negatives drawn uniformly (seeded) from the query's mined candidates, kept in retrieval-rank order."""
    rng = np.random.default_rng(seed)
    pair_index: dict[tuple[str, str], int] = {}

    def index_of(query_id: str, doc_id: str) -> int:
        return pair_index.setdefault((query_id, doc_id), len(pair_index))

    query_ids, columns, skipped = [], [], []
    for row in candidates.select_columns(["query_id", "positive_ids", "candidate_ids"]):
        query_id, positives, pool = row["query_id"], row["positive_ids"], row["candidate_ids"]
        if not positives:
            skipped.append(query_id)
            continue
        chosen = sorted(rng.choice(len(pool), size=min(num_negatives, len(pool)), replace=False)) if pool else []
        negatives = [index_of(query_id, pool[i]) for i in chosen]
        negatives += [-1] * (num_negatives - len(negatives))
        for positive in positives[:max_positives_per_query]:
            query_ids.append(query_id)
            columns.append([index_of(query_id, positive), *negatives])
    if not query_ids:
        raise ValueError("No training row: no query has a judged positive in the corpus.")
    pairs = list(pair_index)
    return MD2PRRows(query_ids, pairs, np.asarray(columns, dtype=np.int64), skipped)


def scored_rows(
    config: MD2PRConfig,
    retriever: SentenceTransformer,
    cross_encoder: CrossEncoder,
    train: RetrievalDataset,
    cache: EmbeddingCache,
) -> tuple[MD2PRRows, np.ndarray]:
    """MD2PR's training rows (mined by ``retriever``) and the cross-encoder's score of each distinct pair (cached)."""
    candidates = mine_from_dataset(
        retriever,
        train,
        MiningConfig(top_k=config.num_candidates, batch_size=config.teacher_batch_size, include_texts=False),
        min_relevance=config.min_relevance,
        cache=cache,
    )
    rows = build_rows(candidates, config.num_negatives, config.max_positives_per_query, config.seed)
    return rows, _teacher_scores(rows, CrossEncoderScorer(cross_encoder, config.teacher_batch_size), train, config)


def _teacher_scores(
    rows: MD2PRRows, scorer: CrossEncoderScorer, train: RetrievalDataset, config: MD2PRConfig
) -> np.ndarray:
    """The cross-encoder's logits of every distinct pair (cached on disk)."""
    cache = ScoreCache(Path(config.cache_dir) / "teacher_scores" if config.cache_dir else None)
    return score_pairs(
        scorer,
        [query_id for query_id, _ in rows.pairs],
        [doc_id for _, doc_id in rows.pairs],
        train.queries,
        train.corpus,
        cache=cache,
        config=ScoringConfig(show_progress_bar=False),
    )


def row_scores(rows: MD2PRRows, pair_scores: np.ndarray) -> np.ndarray:
    """``rows × candidates`` scores from per-pair scores, ``nan`` in an empty slot."""
    return np.where(rows.columns < 0, np.nan, pair_scores[np.where(rows.columns < 0, 0, rows.columns)])


def retriever_row_scores(
    rows: MD2PRRows,
    retriever: SentenceTransformer,
    train: RetrievalDataset,
    cache: EmbeddingCache,
    batch_size: int = 32,
) -> np.ndarray:
    """The retriever's score of every row's candidates (``rows × candidates``, ``nan`` in an empty slot), from the
    embeddings mining cached (same texts, routes and order, so no re-encoding) and the retriever's own similarity
    function (cosine, dot, euclidean, ...). Only the rows' pairs are gathered: the corpus matrix stays mapped."""
    query_ids, doc_ids = list(train.queries), list(train.corpus)
    encode = dict(batch_size=batch_size, show_progress_bar=False)
    queries = cache.encode(retriever, [train.queries[q] for q in query_ids], route=QUERY_ROUTE, **encode)
    documents = cache.encode(retriever, [train.corpus[d] for d in doc_ids], route=DOCUMENT_ROUTE, **encode)
    query_row = {q: i for i, q in enumerate(query_ids)}
    doc_row = {d: i for i, d in enumerate(doc_ids)}
    pair_queries = torch.from_numpy(np.asarray(queries[[query_row[q] for q, _ in rows.pairs]], dtype=np.float32))
    pair_documents = torch.from_numpy(np.asarray(documents[[doc_row[d] for _, d in rows.pairs]], dtype=np.float32))
    pair_scores = retriever.similarity_pairwise(pair_queries, pair_documents).numpy()
    return row_scores(rows, pair_scores)


def measure_teacher_signal(
    rows: MD2PRRows,
    scores: np.ndarray,
    retriever: SentenceTransformer,
    train: RetrievalDataset,
    cache: EmbeddingCache,
    config: MD2PRConfig,
) -> TeacherSignal | None:
    """The cross-encoder's ranking of the rows against the retriever's at the sentence level's temperatures, or
    ``None`` when no row has a negative to rank against."""
    if not (rows.columns[:, 1:] >= 0).any():
        logger.warning("No training row has a mined negative: the teacher's ranking cannot be measured.")
        return None
    return teacher_signal(
        row_scores(rows, scores),
        retriever_row_scores(rows, retriever, train, cache, config.teacher_batch_size),
        config.teacher_temperature,
        config.temperature,
    )


def _attention(
    rows: MD2PRRows,
    cross_encoder: CrossEncoder,
    model: SentenceTransformer,
    train: RetrievalDataset,
    config: MD2PRConfig,
) -> AttentionSummaries:
    """The cross-encoder's query→passage attention of every distinct pair, on the student's tokens (cached)."""
    summarizer = CrossEncoderAttention(
        cross_encoder,
        AttentionConfig(
            layers=config.attention_layers,
            heads=config.attention_heads,
            batch_size=config.teacher_batch_size,
            show_progress_bar=False,
        ),
    )
    return pair_attention(
        summarizer,
        model,
        [train.queries[query_id] for query_id, _ in rows.pairs],
        [train.corpus[doc_id] for _, doc_id in rows.pairs],
        passage_max_length=config.passage_max_length,
        cache=AttentionCache(Path(config.cache_dir) / "teacher_attention" if config.cache_dir else None),
    )


def _columns(num_negatives: int) -> list[str]:
    return ["query", "positive", *(f"negative_{i}" for i in range(1, num_negatives + 1))]


def _dataset(rows: MD2PRRows, scores: np.ndarray, train: RetrievalDataset, word_level: bool) -> Dataset:
    """Text columns (query, positive, negative_1..n; "" in an empty slot) and the label
    ``[scores (n+1) | attention rows (n+1)]`` (scores only without the word level), float64 so rows stay exact."""
    label = row_scores(rows, scores.astype(np.float64))
    if word_level:
        label = np.concatenate([label, rows.columns.astype(np.float64)], axis=1)
    data: dict[str, Any] = {"query": [train.queries[q] for q in rows.query_ids]}
    for column, name in enumerate(_columns(rows.num_negatives)[1:]):
        data[name] = ["" if index < 0 else train.corpus[rows.pairs[index][1]] for index in rows.columns[:, column]]
    data["label"] = label
    return Dataset.from_dict(data).with_format("torch")


# ----------------------------------------------------------------------------------------------- filter callback


class FalseNegativeFilterCallback(TrainerCallback):
    """Drives a :class:`~asym_st.sampling.DynamicFalseNegativeFilter`: sets its number of periods at the start,
    recomputes its threshold at every epoch (or step) start, and adds its counts to the training logs
    (``fn_dropped``, ``fn_seen``: cumulative on this process; ``fn_threshold``: the current one)."""

    def __init__(self, candidate_filter: DynamicFalseNegativeFilter) -> None:
        self.filter = candidate_filter

    @property
    def _per_step(self) -> bool:
        return self.filter.config.schedule == "step"

    def on_train_begin(self, args, state, control, **kwargs):
        periods = state.max_steps if self._per_step else math.ceil(state.num_train_epochs or 1)
        self.filter.start(periods)

    def on_epoch_begin(self, args, state, control, **kwargs):
        if not self._per_step:
            self.filter.begin_period(math.floor((state.epoch or 0.0) + 1e-6))

    def on_step_begin(self, args, state, control, **kwargs):
        if self._per_step:
            self.filter.begin_period(state.global_step)

    def on_epoch_end(self, args, state, control, **kwargs):
        current = self.filter.current
        logger.info(
            "False-negative filter: %d of %d negatives dropped so far (period %d: quantile %.3f, threshold %s).",
            self.filter.dropped,
            self.filter.seen,
            current.period,
            current.quantile,
            "per batch" if current.threshold is None else f"{current.threshold:.4f}",
        )

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is None or "loss" not in logs:
            return
        counts = {"fn_dropped": self.filter.dropped, "fn_seen": self.filter.seen}
        if self.filter.current.threshold is not None:
            counts["fn_threshold"] = self.filter.current.threshold
        logs.update(counts)
        # The Trainer appended its record before calling the callbacks: complete it, so the history has the counts.
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(counts)


# ----------------------------------------------------------------------------------------------- loss


def _loss(
    config: MD2PRConfig,
    model: SentenceTransformer,
    candidate_filter: DynamicFalseNegativeFilter | None,
    attention: AttentionSummaries | None,
):
    similarity = pairwise_cos_sim if str(model.similarity_fn_name) == "cosine" else pairwise_dot_score
    sentence = (
        MD2PRSentenceLoss(
            model,
            similarity_fct=similarity,
            temperature=config.temperature,
            teacher_temperature=config.teacher_temperature,
            weight=config.sentence_weight,
            candidate_filter=candidate_filter,
        )
        if config.sentence_weight > 0
        else None
    )
    if attention is None:
        return sentence
    tokenizers = [tower_modules(model, route)[0].tokenizer for route in (QUERY_ROUTE, DOCUMENT_ROUTE)]
    return TokenInteractionLoss(
        model,
        attention.matrices,
        attention.query_lengths,
        attention.passage_lengths,
        weight=config.word_weight,
        temperature=config.word_temperature,
        sentence_loss=sentence,
        special_token_ids=set().union(*(special_token_ids(t) for t in tokenizers)),
    )


# ----------------------------------------------------------------------------------------------- pipeline


def md2pr(config: MD2PRConfig, callbacks: Sequence[TrainerCallback] = (), evaluate: bool = True) -> MD2PRResult:
    """Run MD2PR end to end and save the student (see the module docstring for the steps).

    Example::

        from asym_st.training import MD2PRConfig, md2pr

        result = md2pr(MD2PRConfig(
            init_from="outputs/minilm-qed-2l",               # a QED student: frozen teacher document tower
            train_dataset="../shared/data/beir/scifact:train",
            eval_datasets=["../shared/data/beir/scifact:test"],
            cross_encoder=None,                               # train one first (or: cross-encoder/ms-marco-MiniLM-L6-v2)
            output_dir="minilm-md2pr-2l",
        ))
        print(result.retention.to_markdown())
    """
    config.require_sources()
    state = distributed_state()
    model, teacher = build_student(config, METHOD)
    cache = EmbeddingCache(Path(config.cache_dir) / "embeddings" if config.cache_dir else None)
    eval_datasets, dev, excluded = evaluation_splits(config)
    train = labelled_training_split(config.train_dataset, excluded, config.max_train_queries)
    word_level = config.word_weight > 0
    with state.main_process_first():
        cross_encoder, teacher_facts = load_cross_encoder_teacher(config, teacher, excluded)
        rows, scores = scored_rows(config, teacher, cross_encoder, train, cache)
        signal = measure_teacher_signal(rows, scores, teacher, train, cache, config)
        if signal is not None:
            require_useful_teacher(signal, teacher_facts["cross_encoder"], config.allow_weaker_teacher)
        attention = _attention(rows, cross_encoder, model, train, config) if word_level else None
    train_dataset = _dataset(rows, scores, train, word_level)
    candidate_filter = None
    filter_callbacks: list[TrainerCallback] = []
    if config.false_negative_filter:
        candidate_filter = DynamicFalseNegativeFilter(config.filter_config, positive_scores=scores[rows.columns[:, 0]])
        filter_callbacks.append(FalseNegativeFilterCallback(candidate_filter))
    loss = _loss(config, model, candidate_filter, attention)
    router_mapping = {name: QUERY_ROUTE if name == "query" else DOCUMENT_ROUTE for name in _columns(rows.num_negatives)}
    collator = SentenceTransformerDataCollator(
        preprocess_fn=model.preprocess,
        router_mapping=router_mapping,
        max_length={DOCUMENT_ROUTE: config.passage_max_length},  # passages: the training length (attention's too)
    )
    dev_evaluator = RetrievalDevEvaluator(dev, config.teacher_batch_size, cache_dir=config.cache_dir) if dev else None
    trainer = SentenceTransformerTrainer(
        model=model,
        args=training_arguments(config, has_dev=dev_evaluator is not None, router_mapping=router_mapping),
        train_dataset=train_dataset,
        loss=loss,
        evaluator=dev_evaluator,
        data_collator=collator,
        callbacks=filter_callbacks + list(callbacks),
    )
    started = time.perf_counter()
    trainer.train(resume_from_checkpoint=resume_checkpoint(config))
    query_ids = list(dict.fromkeys(rows.query_ids))
    facts = {
        **teacher_facts,
        "training_queries": len(train.queries),
        "rows": len(rows.query_ids),
        "distinct_pairs": len(rows.pairs),
        "num_candidates": config.num_candidates,
        "num_negatives": config.num_negatives,
        "empty_negative_slots": int((rows.columns < 0).sum()),
        "skipped_no_positive": len(rows.skipped_no_positive),
        "teacher_positive_score_mean": float(np.mean(scores[rows.columns[:, 0]])),
        "teacher_signal": signal.to_dict() if signal is not None else None,
        "word_level": word_level,
        "attention_pairs": len(attention) if attention is not None else 0,
        "false_negative_filter": candidate_filter.summary() if candidate_filter is not None else None,
        "loss": {"class": type(loss).__name__, **loss.get_config_dict()},
    }
    result = MD2PRResult(
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
