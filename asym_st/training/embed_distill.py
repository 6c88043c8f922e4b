"""EmbedDistill: geometric distillation into an asymmetric student, with score matching and generated queries.

The pipeline is QED's (:mod:`asym_st.training.qed`) with three additions, each a block from elsewhere in asym-st:

1. build the student: the teacher's truncated layers or ``query_encoder`` as the query tower; the teacher as the
   document tower, frozen (the default) or trainable (``train_document_tower``);
2. training queries: the configured real sources plus queries generated from the passages of
   ``generate_queries_from`` (:mod:`asym_st.data.query_generation`), merged, de-duplicated and kept apart from the
   evaluation queries by :func:`~asym_st.data.query_sources.collect_training_queries` (the leakage guard);
3. teacher targets through the shared :class:`~asym_st.data.cache.EmbeddingCache`: the queries' embeddings and,
   for score matching, the embeddings of each query's candidates, the teacher's nearest documents in
   ``candidate_corpora`` (faiss over the cached corpus embeddings that evaluation also uses);
4. train with :class:`~asym_st.losses.AsymmetricEmbedDistillLoss` in ``SentenceTransformerTrainer``: only the
   query column is encoded when the document tower is frozen (its embeddings *are* the label's), so score
   matching costs no passage encoding;
5. evaluate teacher and student (retention), measure latency, save model + ``eval/`` + ``training_config.json``
   atomically (:func:`~asym_st.training.reporting.evaluate_and_save`).

Checkpoints, ``resume_from_checkpoint: auto``, the dev evaluator and ``accelerate launch`` / ``torchrun`` behave as in
QED (the code is shared).
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from datasets import Dataset
from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer
from transformers import TrainerCallback

from asym_st.data.beir import available_splits, load_beir
from asym_st.data.cache import EmbeddingCache
from asym_st.data.mining import _similarity as retriever_similarity
from asym_st.data.queries import QueryFileError, QuerySet
from asym_st.data.query_generation import QueryGenerator, Seq2SeqQueryGenerator, SpanQueryGenerator
from asym_st.data.query_sources import collect_training_queries
from asym_st.evaluation.search import SearchConfig, build_index, search
from asym_st.losses.embed_distill import AsymmetricEmbedDistillLoss
from asym_st.modeling import build_asymmetric_model, extract_tower, tower_modules
from asym_st.training.dev_evaluator import RetrievalDevEvaluator
from asym_st.training.embed_distill_config import EmbedDistillConfig
from asym_st.training.qed import QEDResult
from asym_st.training.reporting import evaluate_and_save
from asym_st.training.trainer_setup import (
    distributed_state,
    evaluation_splits,
    query_tower_config,
    resume_checkpoint,
    teacher_query_targets,
    training_arguments,
)
from asym_st.utils.io import atomic_write_text

__all__ = ["EmbedDistillResult", "embed_distill", "make_query_generator", "select_candidates"]

logger = logging.getLogger(__name__)

METHOD = "EmbedDistill"


@dataclass
class EmbedDistillResult(QEDResult):
    """A QED result plus what EmbedDistill adds (generated queries, candidates, the loss settings)."""

    details: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------- queries


def make_query_generator(config: EmbedDistillConfig) -> QueryGenerator:
    """``query_generator: span`` → :class:`SpanQueryGenerator`; anything else is a seq2seq Hub id or folder."""
    if config.query_generator == "span":
        return SpanQueryGenerator(queries_per_passage=config.queries_per_passage, seed=config.seed)
    return Seq2SeqQueryGenerator(
        config.query_generator,
        queries_per_passage=config.queries_per_passage,
        batch_size=config.generator_batch_size,
        prefix=config.generator_prefix,
        seed=config.seed,
        cache_dir=str(Path(config.cache_dir) / "generated_queries") if config.cache_dir else None,
    )


def _load_corpus(folder: str) -> dict[str, str]:
    # Any split will do: only the corpus is read (in file order, so cached embeddings are shared with evaluation).
    splits = available_splits(folder) if Path(folder).is_dir() else ["test"]
    if not splits:
        raise QueryFileError(f"{folder} has no qrels folder; expected a BEIR folder.")
    return load_beir(folder, split=splits[0]).corpus


def _generated_query_files(config: EmbedDistillConfig) -> tuple[list[str], list[str]]:
    """Generate queries for each corpus of ``generate_queries_from``; write them as query files (which then go
    through the same merging and leakage guard as real queries) and return their paths and the generators'
    reports (what was dropped as empty or duplicate)."""
    if not config.generate_queries_from:
        return [], []
    generator = make_query_generator(config)
    folder = Path(config.resolved_checkpoint_dir) / "generated_queries"
    paths, reports = [], []
    for position, corpus_folder in enumerate(config.generate_queries_from):
        corpus = _load_corpus(corpus_folder)
        if config.max_generated_passages is not None and len(corpus) > config.max_generated_passages:
            chosen = set(random.Random(config.seed).sample(list(corpus), config.max_generated_passages))
            corpus = {doc_id: text for doc_id, text in corpus.items() if doc_id in chosen}
        generated = generator.generate(corpus)
        reports.append(f"{corpus_folder}: {generated.report()}")
        logger.info("Generated queries: %s", reports[-1])
        if not generated.texts:
            logger.warning("No query generated from %s; it adds nothing to the training queries.", corpus_folder)
            continue
        path = folder / f"{position}-{Path(corpus_folder).name}.jsonl"
        rows = zip(generated.ids, generated.texts, strict=True)
        lines = [json.dumps({"_id": query_id, "text": text}, ensure_ascii=False) for query_id, text in rows]
        atomic_write_text(path, "\n".join(lines) + "\n")
        paths.append(str(path))
    return paths, reports


# ----------------------------------------------------------------------------------------------- candidates


def _candidate_pool(teacher: SentenceTransformer, config: EmbedDistillConfig) -> tuple[list[str], np.ndarray]:
    """The candidate documents' texts and teacher embeddings (one cache entry per corpus, shared with evaluation)."""
    cache = EmbeddingCache(Path(config.cache_dir) / "embeddings" if config.cache_dir else None)
    texts, blocks = [], []
    for folder in config.candidate_corpora:
        corpus = _load_corpus(folder)
        documents = [corpus[doc_id] for doc_id in corpus]
        blocks.append(
            cache.encode(
                teacher,
                documents,
                route="document",
                batch_size=config.teacher_batch_size,
                description=f"{Path(folder).name} documents (teacher)",
            )
        )
        texts += documents
    return texts, np.concatenate([np.asarray(block, dtype=np.float32) for block in blocks])


def select_candidates(
    query_embeddings: np.ndarray,
    document_embeddings: np.ndarray,
    top_k: int,
    random_k: int = 0,
    similarity: str = "cosine",
    seed: int = 0,
    chunk_size: int = 4096,
) -> np.ndarray:
    """Each query's candidate documents (row indices into ``document_embeddings``): the teacher's ``top_k``
    nearest, best first, then ``random_k`` uniformly random ones (which may repeat a top one; for the KL that
    only re-weights it)."""
    index = build_index(document_embeddings, SearchConfig(similarity=similarity))
    top_k = min(top_k, len(document_embeddings))
    top = np.concatenate(
        [
            search(index, query_embeddings[start : start + chunk_size], top_k, similarity)[1]
            for start in range(0, len(query_embeddings), chunk_size)
        ]
    )
    rng = np.random.default_rng(seed)
    extra = rng.integers(0, len(document_embeddings), size=(len(top), random_k))
    return np.concatenate([top, extra], axis=1).astype(np.int64)


def _training_dataset(
    queries: QuerySet,
    targets: np.ndarray,
    teacher: SentenceTransformer,
    config: EmbedDistillConfig,
) -> tuple[Dataset, dict[str, str], dict[str, Any]]:
    """The training rows (``query`` [+ ``document_k``] + ``label``), the router mapping, and what was built."""
    # The torch format hands the label to the collator as tensors (stacked, not rebuilt from nested lists);
    # strings stay strings and the column order (query first) is kept.
    targets = np.asarray(targets, dtype=np.float32)
    if not config.needs_candidates:
        dataset = Dataset.from_dict({"query": queries.texts, "label": targets})
        return dataset.with_format("torch"), {"query": "query"}, {}
    with distributed_state().main_process_first():
        pool_texts, pool = _candidate_pool(teacher, config)
    if pool.shape[1] != targets.shape[1]:
        raise ValueError(f"Candidate embeddings are {pool.shape[1]}-dimensional, queries' {targets.shape[1]}.")
    indices = select_candidates(
        targets,
        pool,
        config.num_candidates,
        config.random_candidates,
        retriever_similarity(teacher),
        seed=config.seed,
    )
    columns: dict[str, Any] = {"query": queries.texts}
    mapping = {"query": "query"}
    if config.train_document_tower:  # the student's document tower must embed the candidates itself
        for k in range(indices.shape[1]):
            columns[f"document_{k + 1}"] = [pool_texts[i] for i in indices[:, k]]
            mapping[f"document_{k + 1}"] = "document"
    columns["label"] = np.concatenate([targets[:, None, :], pool[indices]], axis=1)
    dataset = Dataset.from_dict(columns).with_format("torch")
    facts = {
        "candidate_corpora": list(config.candidate_corpora),
        "candidate_pool_size": len(pool_texts),
        "candidates_per_query": int(indices.shape[1]),
    }
    return dataset, mapping, facts


# ----------------------------------------------------------------------------------------------- student


def _student(config: EmbedDistillConfig) -> tuple[SentenceTransformer, SentenceTransformer]:
    """The student and the frozen teacher (a separate copy when the student's document tower trains)."""
    model = build_asymmetric_model(
        config.teacher,
        query_tower_config(config, encoder=config.query_encoder),
        revision=config.teacher_revision,
        freeze_document_tower=not config.train_document_tower,
    )
    model.asym_st_record.method = METHOD
    # With a trainable document tower the teacher must not move with it: targets and the retention baseline
    # come from a frozen copy.
    teacher = extract_tower(model, "document", copy_modules=config.train_document_tower)
    teacher.requires_grad_(False)
    if config.train_document_tower and config.document_max_seq_length:
        first = tower_modules(model, "document")[0]
        if hasattr(first, "max_seq_length"):
            first.max_seq_length = config.document_max_seq_length
    return model, teacher


# ----------------------------------------------------------------------------------------------- pipeline


def embed_distill(
    config: EmbedDistillConfig, callbacks: Sequence[TrainerCallback] = (), evaluate: bool = True
) -> EmbedDistillResult:
    """Run EmbedDistill end to end and save the student (see the module docstring for the steps).

    Args:
        config: the run's settings.
        callbacks: extra ``transformers`` trainer callbacks.
        evaluate: evaluate teacher and student on ``config.eval_datasets`` and measure latency at the end.

    Example::

        from asym_st.training import EmbedDistillConfig, embed_distill

        result = embed_distill(EmbedDistillConfig(
            teacher="sentence-transformers/all-MiniLM-L6-v2",
            query_layers=[0, 5],
            train_queries=["../shared/data/beir/scifact:train"],
            generate_queries_from=["../shared/data/beir/scifact"],  # model-free span queries
            candidate_corpora=["../shared/data/beir/scifact"],
            eval_datasets=["../shared/data/beir/scifact:test"],
            output_dir="minilm-embed-distill-2l",
        ))
        print(result.retention.to_markdown())
    """
    config.require_sources()
    state = distributed_state()
    model, teacher = _student(config)
    eval_datasets, dev, excluded = evaluation_splits(config)
    with state.main_process_first():
        generated_files, generation_reports = _generated_query_files(config)
    queries = collect_training_queries(
        list(config.train_queries) + generated_files, exclude=excluded, limit=config.max_train_queries
    )
    targets = teacher_query_targets(teacher, queries, config)
    train_dataset, router_mapping, candidate_facts = _training_dataset(queries, targets, teacher, config)
    loss = AsymmetricEmbedDistillLoss(
        model,
        query_weight=config.query_weight,
        document_weight=config.document_weight,
        score_weight=config.score_weight,
        score_loss=config.score_loss,
        distance_metric=config.distance,
        temperature=config.temperature,
    )
    dev_evaluator = RetrievalDevEvaluator(dev, config.teacher_batch_size, cache_dir=config.cache_dir) if dev else None
    trainer = SentenceTransformerTrainer(
        model=model,
        args=training_arguments(config, has_dev=dev_evaluator is not None, router_mapping=router_mapping),
        train_dataset=train_dataset,
        loss=loss,
        evaluator=dev_evaluator,
        callbacks=list(callbacks),
    )
    started = time.perf_counter()
    trainer.train(resume_from_checkpoint=resume_checkpoint(config))
    result = EmbedDistillResult(
        model=model,
        output_dir=None,
        training_queries=queries,
        train_seconds=time.perf_counter() - started,
        log_history=list(trainer.state.log_history),
        details={
            "loss": {"class": type(loss).__name__, **loss.get_config_dict()},
            "generated_queries": generation_reports,
            **candidate_facts,
        },
    )
    if state.is_main_process:
        evaluate_and_save(
            result, teacher, eval_datasets, config, evaluate=evaluate, method=METHOD, extra_record=result.details
        )
    state.wait_for_everyone()
    return result
