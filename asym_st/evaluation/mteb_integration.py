"""MTEB integration: run ``mteb.evaluate`` on asym-st models, official tasks offline, local BEIR folders as tasks.

How mteb 2.x treats a ``SentenceTransformer``: ``mteb.evaluate`` wraps it in ``SentenceTransformerEncoderWrapper``,
whose ``encode`` receives mteb's ``PromptType`` and, on sentence-transformers >= 5, calls ``model.encode_query``
for ``PromptType.query`` and ``model.encode_document`` for ``PromptType.document`` (retrieval tasks always pass
one of the two). An asym-st model is a plain ``SentenceTransformer`` with a Router, so **mteb's default wrapper
already routes queries to the query tower and documents to the teacher**; asym-st adds nothing to that path.

What :class:`AsymSTEncoder` adds (a subclass of mteb's own wrapper, so mteb's prompt resolution, similarity and
model metadata are unchanged) is the shared :class:`~asym_st.data.cache.EmbeddingCache`: mteb hands the encoder
the whole corpus of a task in order (one chunk up to 50k documents) as ``title + " " + text``, the same texts and
order as asym-st's own evaluator, so both read one cache entry and a corpus is encoded once for mteb, for
asym-st's evaluator and for every query tower that shares the frozen document tower. ``use_cache=False`` gives
exactly mteb's default path.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sentence_transformers import SentenceTransformer

from asym_st.data.beir import RetrievalDataset
from asym_st.data.cache import EmbeddingCache
from asym_st.data.sources import MTEB_PREFIX, load_retrieval_source, mteb_task_for_source
from asym_st.evaluation.retrieval import RetrievalResult, load_model, model_name

__all__ = [
    "AsymSTEncoder",
    "beir_mteb_task",
    "resolve_mteb_task",
    "run_mteb",
    "mteb_to_retrieval_result",
    "mteb_version",
]

logger = logging.getLogger(__name__)


def mteb_version() -> str:
    import mteb

    return mteb.__version__


def _encoder_base():
    from mteb.models.sentence_transformer_wrapper import SentenceTransformerEncoderWrapper

    return SentenceTransformerEncoderWrapper


class AsymSTEncoder(_encoder_base()):
    """mteb's ``SentenceTransformerEncoderWrapper`` with embeddings read from / written to asym-st's cache.

    Args:
        model: the (asymmetric) ``SentenceTransformer``.
        cache: the embedding cache; ``None`` uses the shared default cache.
        use_cache: ``False`` behaves exactly like mteb's own wrapper.
        name: the model name mteb records in its results (default: where the model was loaded from).
        revision: the revision mteb records.

    The cache is only used when the text that mteb would encode is exactly what the cache keys: text inputs, and
    no task-specific prompts (the route's prompt, which ``encode_query`` / ``encode_document`` apply and the cache
    key contains, is then the one mteb resolves). Anything else goes through mteb's wrapper unchanged.

    Example::

        import mteb
        encoder = AsymSTEncoder(load_asymmetric_model("minilm-2l"))
        results = mteb.evaluate(encoder, mteb.get_tasks(tasks=["SciFact"]), cache=None)
    """

    def __init__(
        self,
        model: SentenceTransformer,
        cache: EmbeddingCache | None = None,
        use_cache: bool = True,
        name: str | None = None,
        revision: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, **kwargs)
        self.cache = (cache or EmbeddingCache()) if use_cache else None
        update = {"name": _mteb_model_name(name or model_name(model))}
        if revision is not None:
            update["revision"] = revision
        self.mteb_model_meta = self.mteb_model_meta.model_copy(update=update)

    def _cacheable(self, task_metadata) -> bool:
        task_specific = set(self.model_prompts or {}) - {"query", "document"}
        return self.cache is not None and list(task_metadata.modalities) == ["text"] and not task_specific

    def encode(self, inputs, *, task_metadata, hf_split: str, hf_subset: str, prompt_type=None, **kwargs):
        from mteb.types import PromptType

        if not self._cacheable(task_metadata):
            return super().encode(
                inputs,
                task_metadata=task_metadata,
                hf_split=hf_split,
                hf_subset=hf_subset,
                prompt_type=prompt_type,
                **kwargs,
            )
        # The same text list mteb's wrapper builds for text-only inputs.
        texts = [text for batch in inputs for text in batch["text"]]
        route = "query" if prompt_type == PromptType.query else "document"  # plain encode() is the document tower
        embeddings = self.cache.encode(
            self.model,
            texts,
            route=route,
            batch_size=kwargs.get("batch_size", 32),
            show_progress_bar=kwargs.get("show_progress_bar", True),
            description=f"{task_metadata.name} {'queries' if route == 'query' else 'documents'}",
        )
        return np.asarray(embeddings, dtype=np.float32)


def _mteb_model_name(name: str) -> str:
    # mteb stores results under a folder named after the model; keep "org/name" ids, flatten local paths.
    if os.path.isabs(name) or name.startswith("."):
        parts = Path(name).resolve().parts[-2:]
        return "/".join(parts)
    return name


def _retrieval_task_class():
    from mteb.abstasks.retrieval import AbsTaskRetrieval

    return AbsTaskRetrieval


class _LocalRetrievalTask(_retrieval_task_class()):
    """An mteb retrieval task whose data comes from an asym-st :class:`RetrievalDataset`.

    mteb keeps a task's metadata on its class (``unload_data`` drops any instance copy), so
    :func:`beir_mteb_task` makes one subclass per collection carrying its metadata.
    """

    def __init__(self, dataset: RetrievalDataset, **kwargs: Any) -> None:
        self._local_dataset = dataset
        super().__init__(**kwargs)

    def load_data(self, num_proc: int | None = None, **kwargs: Any) -> None:
        if self.data_loaded:
            return
        from datasets import Dataset

        data = self._local_dataset
        corpus = Dataset.from_dict(
            # The document text is already "title text"; an empty title makes mteb use it as is.
            {"id": data.corpus_ids, "title": [""] * len(data.corpus), "text": [data.corpus[d] for d in data.corpus_ids]}
        )
        queries = Dataset.from_dict({"id": data.query_ids, "text": [data.queries[q] for q in data.query_ids]})
        self.dataset = {
            "default": {
                data.split: {
                    "corpus": corpus,
                    "queries": queries,
                    "relevant_docs": {q: dict(docs) for q, docs in data.qrels.items()},
                    "top_ranked": None,
                }
            }
        }
        self.data_loaded = True


def beir_mteb_task(
    source: str | os.PathLike | RetrievalDataset,
    split: str = "test",
    name: str | None = None,
    language: str = "eng-Latn",
):
    """Any local BEIR folder (or zip, Hub-layout folder, or loaded :class:`RetrievalDataset`) as an mteb
    retrieval task, so that ``mteb.evaluate`` scores it with mteb's own retrieval evaluator.

    Example::

        task = beir_mteb_task("../shared/data/beir/trec-dl-2019-passage", split="test")
        mteb.evaluate(model, [task], cache=None)
    """
    from mteb.abstasks.task_metadata import TaskMetadata

    dataset = source if isinstance(source, RetrievalDataset) else load_retrieval_source(source, split=split)
    metadata = TaskMetadata(
        name=name or dataset.name,
        dataset={"path": dataset.source or dataset.name, "revision": dataset.fingerprint()[:12]},
        description=f"Local retrieval collection {dataset.name} ({dataset.source}), loaded by asym-st.",
        reference=None,
        type="Retrieval",
        category="t2t",
        modalities=["text"],
        eval_splits=[dataset.split],
        eval_langs=[language],
        main_score="ndcg_at_10",
    )
    task_class = type(f"LocalRetrieval_{_identifier(metadata.name)}", (_LocalRetrievalTask,), {"metadata": metadata})
    return task_class(dataset)


def _identifier(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text)


def resolve_mteb_task(task: Any, mirror: str | os.PathLike | None = None, split: str = "test"):
    """An mteb task from a task object, an official name (``"SciFact"`` or ``"mteb:SciFact"``, optionally read from
    a local ``mirror``), or a local BEIR source (folder, zip)."""
    from mteb.abstasks.abstask import AbsTask

    if isinstance(task, AbsTask):
        return task
    if isinstance(task, RetrievalDataset):
        return beir_mteb_task(task)
    text = os.fspath(task)
    if text.startswith(MTEB_PREFIX):
        return mteb_task_for_source(text[len(MTEB_PREFIX) :], mirror)
    if os.path.exists(text):
        return beir_mteb_task(text, split=split)
    return mteb_task_for_source(text, mirror)


def run_mteb(
    model: SentenceTransformer | str | os.PathLike,
    tasks: Sequence[Any] | Any,
    mirror: str | os.PathLike | None = None,
    cache: EmbeddingCache | None = None,
    use_cache: bool = True,
    output_folder: str | os.PathLike | None = None,
    batch_size: int = 32,
    show_progress_bar: bool = True,
    name: str | None = None,
    sizes: dict[str, dict[str, dict[str, int]]] | None = None,
) -> list:
    """``mteb.evaluate`` on an asym-st (or any sentence-transformers) model; returns mteb ``TaskResult`` objects.

    Args:
        model: the model, its folder or Hub id.
        tasks: task objects, official names (``"SciFact"``), or local BEIR folders; one or several.
        mirror: local copy of an official task's dataset repo (offline); for several official tasks pass them
            one call at a time, or set ``task.metadata.dataset["path"]`` yourself.
        cache: asym-st's embedding cache (shared with :func:`~asym_st.evaluation.evaluate_retrieval`).
        use_cache: ``False`` runs mteb's own default ``SentenceTransformerEncoderWrapper`` (no asym-st code on the
            encoding path at all).
        output_folder: where mteb writes its result JSON (an mteb ``ResultCache``); ``None`` writes nothing.
        batch_size: encoding batch size.
        name: model name recorded in mteb's results.
        sizes: a dict to fill with ``{task: {split: {"num_queries": n, "num_documents": m}}}`` as mteb evaluated
            them (queries without a relevant document are dropped by mteb); mteb's scores do not record them.

    Example::

        results = run_mteb("minilm-2l", ["SciFact"], mirror="../shared/data/hf-datasets/mteb/scifact")
        print(results[0].get_score())
    """
    import mteb

    if isinstance(tasks, (str, os.PathLike, RetrievalDataset)) or not isinstance(tasks, Sequence):
        tasks = [tasks]
    resolved = [resolve_mteb_task(task, mirror) for task in tasks]
    if sizes is not None:
        for task in resolved:
            _load_task_data(task)  # loaded here, mteb keeps the data after evaluating, so it can be counted
    st_model = load_model(model)
    label = name or model_name(model if isinstance(model, (str, os.PathLike)) else st_model)
    encoder = AsymSTEncoder(st_model, cache=cache, use_cache=use_cache, name=label)
    if not use_cache:
        encoder = _plain_wrapper(st_model, label)
    result_cache = mteb.ResultCache(cache_path=Path(output_folder)) if output_folder else None
    try:
        model_result = mteb.evaluate(
            encoder,
            resolved,
            cache=result_cache,
            overwrite_strategy="always",
            encode_kwargs={"batch_size": batch_size, "show_progress_bar": show_progress_bar},
            show_progress_bar=show_progress_bar,
        )
    except ConnectionError as error:  # datasets reports an unreachable / offline Hub this way
        names = ", ".join(task.metadata.name for task in resolved)
        raise ValueError(
            f"mteb could not load the data of {names} ({error}). Offline, point the task at a local mirror of its "
            "dataset repo (mirror=... / --data-mirror DIR)."
        ) from error
    if sizes is not None:
        for task in resolved:
            sizes[task.metadata.name] = _task_sizes(task)
            task.unload_data()
    return list(model_result.task_results)


def _load_task_data(task) -> None:
    try:
        task.load_data()
    except ConnectionError as error:
        raise ValueError(
            f"mteb could not load the data of {task.metadata.name} ({error}). Offline, point the task at a local "
            "mirror of its dataset repo (mirror=... / --data-mirror DIR)."
        ) from error


def _task_sizes(task) -> dict[str, dict[str, int]]:
    sizes = {}
    for subset in (task.dataset or {}).values():
        for split, data in subset.items():
            sizes[split] = {"num_queries": len(data["queries"]), "num_documents": len(data["corpus"])}
    return sizes


def _plain_wrapper(model: SentenceTransformer, name: str):
    from mteb.models.sentence_transformer_wrapper import SentenceTransformerEncoderWrapper

    wrapper = SentenceTransformerEncoderWrapper(model)
    wrapper.mteb_model_meta = wrapper.mteb_model_meta.model_copy(update={"name": _mteb_model_name(name)})
    return wrapper


def mteb_to_retrieval_result(
    task_result: Any,
    model: str,
    split: str = "test",
    num_documents: int | None = None,
    source: str | None = None,
    num_queries: int | None = None,
) -> RetrievalResult:
    """An mteb ``TaskResult`` of a retrieval task in asym-st's :class:`RetrievalResult` schema.

    ``map`` is mteb's ``map_at_100``: trec_eval's MAP over the top 100, what asym-st's evaluator reports with its
    default ``top_k=100``.
    """
    scores = task_result.scores.get(split)
    if not scores:
        raise ValueError(
            f"mteb result for {task_result.task_name} has no split {split!r} ({list(task_result.scores)})."
        )
    main = scores[0]
    metrics = {
        "ndcg_at_10": float(main["ndcg_at_10"]),
        "recall_at_100": float(main["recall_at_100"]),
        "mrr_at_10": float(main["mrr_at_10"]),
        "map": float(main["map_at_100"]),
    }
    return RetrievalResult(
        model=model,
        dataset=task_result.task_name,
        split=split,
        source=source or f"{MTEB_PREFIX}{task_result.task_name}",
        metrics=metrics,
        num_queries=int(num_queries or 0),
        num_documents=int(num_documents or 0),
        evaluator=f"mteb {mteb_version()}",
        timings={"evaluation_s": float(task_result.evaluation_time or 0.0)},
    )
