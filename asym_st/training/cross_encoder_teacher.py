"""A cross-encoder teacher for MD2PR: train one from a bi-encoder's own encoder, and measure it by reranking.

No cross-encoder weights are reachable offline on this project's machines, so :func:`train_cross_encoder` makes
one: a sentence-transformers ``CrossEncoder`` initialised from a bi-encoder's encoder (``CrossEncoder(
"sentence-transformers/all-MiniLM-L6-v2", num_labels=1)`` loads the BERT encoder and adds a fresh one-logit head),
trained with ``CrossEncoderTrainer`` and binary cross-entropy on a BEIR train split: each training query's judged
positives (label 1) and ``num_negatives`` hard negatives sampled from the top ``num_candidates`` documents a
bi-encoder retrieves (:func:`~asym_st.data.mining.mine_from_dataset`, positives removed; label 0). Evaluation
queries are removed first (the leakage guard). Sharing the bi-encoder's vocabulary is what lets MD2PR's word-level
loss align the cross-encoder's attention with the student's tokens.

:func:`rerank_evaluation` measures a cross-encoder the way it is used: rerank the bi-encoder's top-k (default 100)
of every evaluation query and compute nDCG@10 (pytrec_eval, :func:`asym_st.evaluation.metrics.compute_metrics`),
next to the bi-encoder's own ranking. Cross-encoder scores go through the on-disk score cache.

**A public cross-encoder instead.** Where the Hub is reachable, skip training and name one in the MD2PR config:
``cross_encoder: cross-encoder/ms-marco-MiniLM-L6-v2`` (or ``CrossEncoder("cross-encoder/ms-marco-MiniLM-L6-v2")``
in Python). It must have one output logit, and for the word-level loss the same vocabulary as the student's towers
(that one shares BERT's uncased vocabulary with all-MiniLM-L6-v2; others are refused with a clear error).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import Dataset
from sentence_transformers import SentenceTransformer
from sentence_transformers.cross_encoder import CrossEncoder, CrossEncoderTrainer, CrossEncoderTrainingArguments
from sentence_transformers.cross_encoder.losses import BinaryCrossEntropyLoss
from transformers import set_seed

from asym_st.data.beir import RetrievalDataset
from asym_st.data.cache import EmbeddingCache
from asym_st.data.mining import MiningConfig, mine_from_dataset
from asym_st.data.teacher_scores import CrossEncoderScorer, PairScorer, ScoreCache, ScoringConfig, score_pairs
from asym_st.evaluation.metrics import compute_metrics
from asym_st.evaluation.retrieval import RetrievalEvalConfig, evaluate_retrieval, model_name
from asym_st.modeling import load_sentence_transformer
from asym_st.training.trainer_setup import (
    accelerator_available,
    find_resume_checkpoint,
    labelled_training_split,
    training_identity,
)
from asym_st.utils.io import atomic_directory, atomic_write_json

__all__ = [
    "CrossEncoderTeacherConfig",
    "CrossEncoderTeacherResult",
    "RerankResult",
    "TEACHER_RECORD_FILE",
    "cross_encoder_training_pairs",
    "rerank_evaluation",
    "train_cross_encoder",
]

logger = logging.getLogger(__name__)

#: Written next to a trained cross-encoder: how it was trained.
TEACHER_RECORD_FILE = "teacher_training.json"


@dataclass
class CrossEncoderTeacherConfig:
    """How to train a cross-encoder teacher.

    Args:
        train_dataset: BEIR ``FOLDER:split`` with qrels (default split ``train``).
        output_dir: where the cross-encoder is saved (a folder ``CrossEncoder(path)`` loads).
        base_model: the encoder to start from (a sentence-transformers or transformers model id / path).
        retriever: the bi-encoder that mines negatives (default: ``base_model`` loaded as a sentence-transformer).
        num_candidates: mined documents per query (positives removed) to sample negatives from.
        num_negatives: negatives per query (label 0), next to every judged positive (label 1).
        min_relevance: the qrels grade that counts as positive.
        max_train_queries: cap on training queries (after the leakage guard).
        max_length: the cross-encoder's max tokens per pair.
        num_train_epochs / max_steps / per_device_train_batch_size / learning_rate / warmup_ratio / seed /
        logging_steps: ``CrossEncoderTrainingArguments``.
        save_steps: a checkpoint every ``save_steps`` steps, in ``OUTPUT_DIR.checkpoints``.
        resume_from_checkpoint: ``"auto"`` (default) resumes an interrupted run from its last checkpoint, a path
            resumes from that checkpoint, ``None`` starts afresh.
        batch_size: encoding batch size for mining.
        cache_dir: embedding / score cache root (default: the shared cache).
        overwrite: replace an existing ``output_dir``.
    """

    train_dataset: str
    output_dir: str
    base_model: str = "sentence-transformers/all-MiniLM-L6-v2"
    retriever: str | None = None
    num_candidates: int = 30
    num_negatives: int = 4
    min_relevance: int = 1
    max_train_queries: int | None = None
    max_length: int = 256
    num_train_epochs: float = 1.0
    max_steps: int = -1
    per_device_train_batch_size: int = 16
    learning_rate: float = 2e-5
    warmup_ratio: float = 0.1
    seed: int = 42
    logging_steps: int = 50
    save_steps: int = 50
    resume_from_checkpoint: str | None = "auto"
    batch_size: int = 64
    cache_dir: str | None = None
    overwrite: bool = False

    def __post_init__(self) -> None:
        for name in ("num_candidates", "num_negatives", "min_relevance", "max_length", "per_device_train_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"CrossEncoderTeacherConfig.{name} must be at least 1, got {getattr(self, name)}.")
        if self.num_negatives > self.num_candidates:
            raise ValueError(
                f"CrossEncoderTeacherConfig.num_negatives ({self.num_negatives}) exceeds num_candidates "
                f"({self.num_candidates}): negatives are sampled from the mined candidates."
            )


@dataclass
class CrossEncoderTeacherResult:
    """The trained cross-encoder, its folder and what went into it."""

    model: CrossEncoder
    output_dir: Path
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class RerankResult:
    """A retriever's top-k reranked by a cross-encoder: both rankings' metrics on the same queries."""

    dataset: str
    split: str
    top_k: int
    num_queries: int
    retriever: dict[str, float]
    reranked: dict[str, float]
    cross_encoder: str = ""
    retriever_name: str = ""
    per_query: dict[str, dict[str, float]] = field(default_factory=dict, repr=False)

    def to_dict(self, include_per_query: bool = False) -> dict[str, Any]:
        data = asdict(self)
        if not include_per_query:
            data.pop("per_query")
        return data


# ----------------------------------------------------------------------------------------------- training


def cross_encoder_training_pairs(
    train: RetrievalDataset, candidates: Dataset, num_negatives: int, seed: int = 42
) -> Dataset:
    """``(query, passage, label)`` rows: every judged positive (1.0) and ``num_negatives`` negatives per query
    (0.0), sampled uniformly from the query's mined candidates."""
    rng = np.random.default_rng(seed)
    queries, passages, labels = [], [], []
    for row in candidates.select_columns(["query_id", "positive_ids", "candidate_ids"]):
        query = train.queries[row["query_id"]]
        pool = row["candidate_ids"]
        chosen = sorted(rng.choice(len(pool), size=min(num_negatives, len(pool)), replace=False)) if pool else []
        for doc_id, label in [(d, 1.0) for d in row["positive_ids"]] + [(pool[i], 0.0) for i in chosen]:
            queries.append(query)
            passages.append(train.corpus[doc_id])
            labels.append(label)
    if not queries:
        raise ValueError(f"{train.name}/{train.split}: no (query, passage) pair to train a cross-encoder on.")
    return Dataset.from_dict({"query": queries, "passage": passages, "label": labels})


def train_cross_encoder(
    config: CrossEncoderTeacherConfig,
    retriever: SentenceTransformer | None = None,
    excluded: Sequence[RetrievalDataset] = (),
) -> CrossEncoderTeacherResult:
    """Train a cross-encoder on ``config.train_dataset`` and save it atomically to ``config.output_dir``.

    Args:
        config: data, model and optimisation settings.
        retriever: the bi-encoder that mines hard negatives (default: ``config.retriever`` or ``config.base_model``).
        excluded: evaluation collections whose queries must not be trained on (the leakage guard).

    Example::

        from asym_st.training import CrossEncoderTeacherConfig, rerank_evaluation, train_cross_encoder

        teacher = train_cross_encoder(CrossEncoderTeacherConfig(
            train_dataset="../shared/data/beir/scifact:train", output_dir="minilm-cross-encoder-scifact",
        ))
        scifact = load_eval_dataset("../shared/data/beir/scifact:test")
        print(rerank_evaluation(teacher.model, bi_encoder, scifact).reranked["ndcg_at_10"])
    """
    started = time.perf_counter()
    train = labelled_training_split(config.train_dataset, excluded, config.max_train_queries)
    if retriever is None:
        retriever = load_sentence_transformer(config.retriever or config.base_model)
    cache = EmbeddingCache(Path(config.cache_dir) / "embeddings" if config.cache_dir else None)
    candidates = mine_from_dataset(
        retriever,
        train,
        MiningConfig(top_k=config.num_candidates, batch_size=config.batch_size, include_texts=False),
        min_relevance=config.min_relevance,
        cache=cache,
    )
    pairs = cross_encoder_training_pairs(train, candidates, config.num_negatives, config.seed)
    positives = int(sum(pairs["label"]))
    set_seed(config.seed)  # the new classification head is random: seed it, so that runs (and resumes) agree
    model = CrossEncoder(config.base_model, num_labels=1, max_length=config.max_length)
    # Class balance: each positive weighs as much as the negatives drawn per positive.
    pos_weight = torch.tensor((len(pairs) - positives) / max(positives, 1))
    loss = BinaryCrossEntropyLoss(model, pos_weight=pos_weight)
    checkpoint_dir = f"{config.output_dir.rstrip('/')}.checkpoints"
    args = CrossEncoderTrainingArguments(
        output_dir=checkpoint_dir,
        num_train_epochs=config.num_train_epochs,
        max_steps=config.max_steps,
        per_device_train_batch_size=config.per_device_train_batch_size,
        learning_rate=config.learning_rate,
        warmup_ratio=config.warmup_ratio,
        seed=config.seed,
        data_seed=config.seed,
        logging_steps=config.logging_steps,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=2,
        report_to="none",
        use_cpu=not accelerator_available(),
    )
    trainer = CrossEncoderTrainer(model=model, args=args, train_dataset=pairs, loss=loss)
    trainer.train(
        resume_from_checkpoint=find_resume_checkpoint(
            config.resume_from_checkpoint, checkpoint_dir, identity=training_identity(config)
        )
    )
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    constant = constant_prediction_loss(positives, len(pairs), float(pos_weight))
    learned = loss_left_constant(losses, constant)
    if not learned:
        # BCE stuck at a constant prediction's value: the cross-encoder learnt nothing (e.g. too few steps for a
        # bi-encoder base). MD2PR's teacher check refuses it later; say so here, where the cause is.
        logger.warning(
            "The cross-encoder's last logged losses stayed near %.3f, a constant prediction's: it did not learn. "
            "Train more steps or with a higher learning rate (a GPU makes that cheap), or use a trained one.",
            constant,
        )
    details = {
        "base_model": config.base_model,
        "retriever": model_name(retriever),
        "train_dataset": config.train_dataset,
        "training_queries": len(train.queries),
        "training_pairs": len(pairs),
        "positive_pairs": positives,
        "pos_weight": float(pos_weight),
        "constant_prediction_loss": constant,
        "learned": learned,
        "steps": int(trainer.state.global_step),
        "train_seconds": round(time.perf_counter() - started, 1),
        "config": asdict(config),
        "log_history": list(trainer.state.log_history),
    }
    with atomic_directory(config.output_dir, overwrite=config.overwrite) as tmp:
        model.save_pretrained(str(tmp))
        atomic_write_json(tmp / TEACHER_RECORD_FILE, details)
    logger.info(
        "Cross-encoder teacher: %d pairs, %.0fs, saved to %s", len(pairs), details["train_seconds"], config.output_dir
    )
    return CrossEncoderTeacherResult(model=model, output_dir=Path(config.output_dir), details=details)


def loss_left_constant(losses: Sequence[float], constant: float, window: int = 3, margin: float = 0.9) -> bool:
    """Whether training learnt something: the mean of the last ``window`` logged losses is below ``margin`` times
    the constant-prediction loss (``True`` when nothing was logged: no evidence either way)."""
    if not losses:
        return True
    last = list(losses)[-window:]
    return sum(last) / len(last) < margin * constant


def constant_prediction_loss(positives: int, pairs: int, pos_weight: float) -> float:
    """Weighted BCE of a model that predicts one constant logit, 0 (the optimum when positives are up-weighted to
    balance the negatives): ``ln 2 · (pos_weight · P + N) / (P + N)``. A loss that stays there learnt nothing."""
    return math.log(2) * (pos_weight * positives + pairs - positives) / pairs


# ----------------------------------------------------------------------------------------------- measuring


def rerank_evaluation(
    cross_encoder: CrossEncoder | str | PairScorer,
    retriever: SentenceTransformer | str,
    dataset: RetrievalDataset,
    top_k: int = 100,
    batch_size: int = 64,
    cache_dir: str | None = None,
    relevance_level: int = 1,
    show_progress_bar: bool = False,
) -> RerankResult:
    """Rerank ``retriever``'s top ``top_k`` of every query of ``dataset`` with ``cross_encoder`` (raw logits) and
    compute nDCG@10, Recall@100, MRR@10 and MAP of both rankings (Recall@100 of the reranked list equals the
    retriever's when ``top_k`` is 100: reranking does not change which documents are in it).

    ``cross_encoder`` may also be any :class:`~asym_st.data.teacher_scores.PairScorer` (e.g. a score file)."""
    eval_config = RetrievalEvalConfig(
        batch_size=batch_size,
        top_k=top_k,
        relevance_level=relevance_level,
        cache=EmbeddingCache(Path(cache_dir) / "embeddings" if cache_dir else None),
        show_progress_bar=show_progress_bar,
    )
    first_stage = evaluate_retrieval(retriever, dataset, eval_config)
    query_ids = [query_id for query_id, hits in first_stage.run.items() for _ in hits]
    passage_ids = [doc_id for hits in first_stage.run.values() for doc_id in hits]
    if isinstance(cross_encoder, PairScorer):
        scorer = cross_encoder
    else:
        scorer = CrossEncoderScorer(cross_encoder, batch_size=batch_size)
    scores = score_pairs(
        scorer,
        query_ids,
        passage_ids,
        dataset.queries,
        dataset.corpus,
        cache=ScoreCache(Path(cache_dir) / "teacher_scores" if cache_dir else None),
        config=ScoringConfig(show_progress_bar=show_progress_bar),
    )
    run: dict[str, dict[str, float]] = {}
    for query_id, doc_id, score in zip(query_ids, passage_ids, scores.tolist(), strict=True):
        run.setdefault(query_id, {})[doc_id] = score
    metrics, per_query = compute_metrics(dataset.qrels, run, relevance_level=relevance_level)
    if isinstance(cross_encoder, str):
        cross_name = cross_encoder
    elif isinstance(scorer, CrossEncoderScorer):
        cross_name = _cross_encoder_name(scorer.model)
    else:
        cross_name = type(scorer).__name__
    return RerankResult(
        dataset=dataset.name,
        split=dataset.split,
        top_k=top_k,
        num_queries=len(dataset.qrels),
        retriever=dict(first_stage.metrics),
        reranked=metrics,
        cross_encoder=cross_name,
        retriever_name=first_stage.model,
        per_query=per_query,
    )


def _cross_encoder_name(model: CrossEncoder) -> str:
    card = getattr(model, "model_card_data", None)
    return str(getattr(card, "model_id", None) or getattr(card, "base_model", None) or type(model).__name__)
