"""Retrieval collections from any source, as one :class:`~asym_st.data.beir.RetrievalDataset`.

Accepted sources:

* a local BEIR folder (``corpus.jsonl``, ``queries.jsonl``, ``qrels/SPLIT.tsv|jsonl``) or a BEIR ``.zip``;
* a Hugging Face dataset in BEIR/mteb layout (configs ``corpus``, ``queries`` and ``default`` or ``qrels``, as in
  ``mteb/scifact``): a Hub id, or a local folder laid out like a Hub repo, read with ``datasets.load_dataset``;
* ``"mteb:TaskName"``: an official mteb retrieval task, loaded by mteb's own loader (optionally from a local
  ``mirror`` of its dataset repo, e.g. ``../shared/data/hf-datasets/mteb/scifact``).

Hub and mteb data are exported once into a BEIR folder in the cache (as zips are unpacked) and then read by
:func:`~asym_st.data.beir.load_beir`, so every source goes through the same validation: duplicate ids, empty
texts and qrels naming unknown queries or documents are reported the same way.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any

from asym_st.data.beir import BeirFormatError, RetrievalDataset, default_cache_dir, load_beir
from asym_st.utils.io import atomic_directory

__all__ = ["load_retrieval_source", "load_hub_dataset", "load_mteb_task", "mteb_task_for_source", "MTEB_PREFIX"]

MTEB_PREFIX = "mteb:"


def _export_beir(
    target: Path,
    corpus: list[dict[str, Any]],
    queries: list[dict[str, Any]],
    qrels: list[tuple[str, str, int]],
    split: str,
    note: str,
) -> Path:
    """Write rows as a BEIR folder (atomically; reused when already there)."""
    if (target / "corpus.jsonl").is_file():
        return target
    with atomic_directory(target, overwrite=True) as tmp:
        with (tmp / "corpus.jsonl").open("w", encoding="utf-8") as handle:
            for row in corpus:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        with (tmp / "queries.jsonl").open("w", encoding="utf-8") as handle:
            for row in queries:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        (tmp / "qrels").mkdir()
        buffer = io.StringIO()
        writer = csv.writer(buffer, delimiter="\t", lineterminator="\n")
        writer.writerow(["query-id", "corpus-id", "score"])
        writer.writerows(qrels)
        (tmp / "qrels" / f"{split}.tsv").write_text(buffer.getvalue(), encoding="utf-8")
        (tmp / "SOURCE.txt").write_text(note + "\n", encoding="utf-8")
    return target


def _cache_folder(kind: str, label: str, material: str) -> Path:
    digest = hashlib.sha256(material.encode()).hexdigest()[:16]
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in label).strip("_")
    return default_cache_dir() / kind / f"{safe}-{digest}"


def _id_column(columns: list[str], what: str, source: str) -> str:
    for name in ("_id", "id"):
        if name in columns:
            return name
    raise BeirFormatError(f"{source}: the {what} has no '_id' or 'id' column (columns: {columns}).")


def _load_config(repo: str, config: str, split: str | None, revision: str | None):
    import datasets

    try:
        configs = datasets.get_dataset_config_names(repo, revision=revision)
    except Exception as error:  # the Hub client raises many types for "not found" / "offline"
        raise BeirFormatError(
            f"Could not read the dataset {repo!r} ({type(error).__name__}: {error}). Offline, use a local mirror "
            "folder or set HF_DATASETS_OFFLINE=1 with a cache that holds it."
        ) from error
    if config not in configs:
        if config == "default" and "qrels" in configs:
            config = "qrels"
        else:
            raise BeirFormatError(
                f"{repo}: no {config!r} config; a BEIR/mteb-layout dataset has configs corpus, queries and "
                f"default (qrels); found {configs}."
            )
    splits = datasets.get_dataset_split_names(repo, config_name=config, revision=revision)
    if split is None:
        if len(splits) != 1:
            raise BeirFormatError(f"{repo}: config {config!r} has several splits {splits}; expected one.")
        split = splits[0]
    elif split not in splits:
        raise BeirFormatError(f"{repo}: no qrels for split {split!r}; available splits: {splits}.")
    return datasets.load_dataset(repo, config, split=split, revision=revision)


def load_hub_dataset(
    repo: str, split: str = "test", name: str | None = None, revision: str | None = None
) -> RetrievalDataset:
    """A Hugging Face dataset in BEIR/mteb layout (Hub id or local repo folder) as a :class:`RetrievalDataset`."""
    corpus_ds = _load_config(repo, "corpus", None, revision)
    queries_ds = _load_config(repo, "queries", None, revision)
    qrels_ds = _load_config(repo, "default", split, revision)
    missing = {"query-id", "corpus-id", "score"} - set(qrels_ds.column_names)
    if missing:
        raise BeirFormatError(f"{repo}: qrels split {split!r} lacks columns {sorted(missing)}.")
    doc_id = _id_column(corpus_ds.column_names, "corpus", repo)
    query_id = _id_column(queries_ds.column_names, "queries", repo)
    material = "|".join(
        [repo, split, revision or "", corpus_ds._fingerprint, queries_ds._fingerprint, qrels_ds._fingerprint]
    )
    target = _cache_folder("hub-beir", f"{repo}-{split}", material)
    _export_beir(
        target,
        [{"_id": str(r[doc_id]), "title": r.get("title") or "", "text": r.get("text") or ""} for r in corpus_ds],
        [{"_id": str(r[query_id]), "text": r.get("text") or ""} for r in queries_ds],
        [(str(r["query-id"]), str(r["corpus-id"]), int(r["score"])) for r in qrels_ds],
        split,
        f"Exported from the Hugging Face dataset {repo} (revision {revision or 'default'}) by asym-st.",
    )
    dataset = load_beir(target, split=split, name=name or repo.rstrip("/").split("/")[-1])
    dataset.source = repo
    return dataset


def mteb_task_for_source(task_name: str, mirror: str | os.PathLike | None = None):
    """The official mteb task object, its dataset path pointed at ``mirror`` when given (offline use).

    mteb keeps one metadata object per task class, and ``AbsTask.unload_data`` drops instance-level copies, so
    the mirror goes into a subclass with its own copy of the metadata: the path stays set for the task's whole
    life and never leaks into other instances of the official task.
    """
    import mteb

    task = mteb.get_task(task_name)
    if mirror is None:
        return task
    mirror = Path(mirror)
    if not mirror.is_dir():
        raise FileNotFoundError(f"mteb data mirror {mirror} does not exist.")
    metadata = task.metadata.model_copy(deep=True)
    metadata.dataset["path"] = str(mirror.resolve())
    mirrored = type(type(task).__name__, (type(task),), {"metadata": metadata})
    return mirrored()


def load_mteb_task(
    task_name: str, split: str = "test", name: str | None = None, mirror: str | os.PathLike | None = None
) -> RetrievalDataset:
    """An mteb retrieval task's data (loaded by mteb itself) as a :class:`RetrievalDataset`."""
    task = mteb_task_for_source(task_name, mirror)
    if task.metadata.type != "Retrieval":
        raise ValueError(f"mteb task {task_name!r} is a {task.metadata.type} task, not a retrieval task.")
    if split not in task.eval_splits:
        raise BeirFormatError(f"mteb task {task_name}: no split {split!r}; its eval splits are {task.eval_splits}.")
    try:
        task.load_data()
    except ConnectionError as error:  # datasets reports an unreachable / offline Hub this way
        raise BeirFormatError(
            f"mteb task {task_name}: could not load {task.metadata.dataset['path']} ({error}). Offline, pass a local "
            "mirror of the dataset repo (mirror=... / --data-mirror DIR)."
        ) from error
    task.convert_v1_dataset_format_to_v2(num_proc=None)
    subsets = list(task.dataset)
    if len(subsets) != 1:
        raise ValueError(f"mteb task {task_name} has several subsets {subsets}; asym-st evaluates one-subset tasks.")
    data = task.dataset[subsets[0]][split]
    material = "|".join(
        [task_name, split, str(task.metadata.dataset.get("path")), str(task.metadata.dataset.get("revision"))]
        + [data["corpus"]._fingerprint, data["queries"]._fingerprint]
    )
    target = _cache_folder("mteb-beir", f"{task_name}-{split}", material)
    qrels = [(q, d, int(s)) for q, docs in data["relevant_docs"].items() for d, s in docs.items()]
    _export_beir(
        target,
        [{"_id": r["id"], "title": r.get("title") or "", "text": r.get("text") or ""} for r in data["corpus"]],
        [{"_id": r["id"], "text": r.get("text") or ""} for r in data["queries"]],
        qrels,
        split,
        f"Exported from mteb task {task_name} (dataset {task.metadata.dataset.get('path')}) by asym-st.",
    )
    dataset = load_beir(target, split=split, name=name or task_name)
    dataset.source = f"{MTEB_PREFIX}{task_name}"
    return dataset


def _is_hub_layout(folder: Path) -> bool:
    readme = folder / "README.md"
    return readme.is_file() and "config_name: corpus" in readme.read_text(encoding="utf-8", errors="replace")


def load_retrieval_source(
    source: str | os.PathLike,
    split: str = "test",
    name: str | None = None,
    mirror: str | os.PathLike | None = None,
    revision: str | None = None,
) -> RetrievalDataset:
    """Load a retrieval collection from a BEIR folder or zip, a Hub dataset id, or ``"mteb:TaskName"``.

    Args:
        source: the folder, ``.zip``, Hub dataset id, or ``mteb:TaskName``.
        split: qrels split (``test``, ``dev``, ``train``).
        name: display name (default: folder name, repo name or task name).
        mirror: for ``mteb:`` sources, a local copy of the task's dataset repo.
        revision: Hub dataset revision.

    Raises:
        BeirFormatError: missing files, split or columns, broken lines, duplicate ids, a zip that is not BEIR.

    Example::

        scifact = load_retrieval_source("../shared/data/beir/scifact")
        scifact_mteb = load_retrieval_source("mteb:SciFact", mirror="../shared/data/hf-datasets/mteb/scifact")
    """
    text = os.fspath(source)
    if text.startswith(MTEB_PREFIX):
        return load_mteb_task(text[len(MTEB_PREFIX) :], split=split, name=name, mirror=mirror)
    path = Path(text).expanduser()
    if path.suffix == ".zip" or (path.is_dir() and (path / "corpus.jsonl").is_file()):
        return load_beir(path, split=split, name=name)
    if path.is_dir() and _is_hub_layout(path):
        return load_hub_dataset(str(path), split=split, name=name or path.name, revision=revision)
    if path.exists() or text.startswith((".", "/", "~")):
        raise BeirFormatError(
            f"{text} is neither a BEIR folder (corpus.jsonl, queries.jsonl, qrels/), a .zip of one, nor a dataset "
            "folder in mteb layout."
        )
    return load_hub_dataset(text, split=split, name=name, revision=revision)
