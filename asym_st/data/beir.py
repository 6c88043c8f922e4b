"""BEIR-format retrieval collections: load and validate.

A BEIR folder holds ``corpus.jsonl`` (``_id``, ``title``, ``text``), ``queries.jsonl`` (``_id``, ``text``) and
``qrels/SPLIT.tsv`` (``query-id<TAB>corpus-id<TAB>score`` with a header line); mteb's Hub mirrors use
``qrels/SPLIT.jsonl`` with the same three fields, which is read too. A ``.zip`` of such a folder (as BEIR
distributes them) is unpacked once into the cache folder.

We parse the files ourselves rather than through ``datasets.load_dataset("json")`` because a broken line must
be reported with its file and line number, and because qrels that name unknown queries or documents must be
counted and reported rather than silently dropped.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from asym_st.utils.io import atomic_directory

__all__ = [
    "BeirFormatError",
    "RetrievalDataset",
    "load_beir",
    "document_text",
    "available_splits",
    "default_cache_dir",
    "split_dataset_spec",
]

logger = logging.getLogger(__name__)


class BeirFormatError(ValueError):
    """A BEIR collection that cannot be used as is; the message names the file, line or field."""


def default_cache_dir() -> Path:
    """asym-st's cache root: ``$ASYM_ST_CACHE``, else ``~/.cache/asym_st``."""
    return Path(os.environ.get("ASYM_ST_CACHE", Path.home() / ".cache" / "asym_st"))


def document_text(title: str | None, text: str | None) -> str:
    """The text a document tower encodes: title and body joined by a space (the BEIR / mteb convention)."""
    return f"{title or ''} {text or ''}".strip()


@dataclass
class RetrievalDataset:
    """A retrieval test collection: corpus, the queries of one split, and their relevance judgements.

    ``queries`` only holds the queries that have judgements in ``qrels`` (the BEIR convention). ``report`` lists
    everything that was dropped or repaired while loading.
    """

    name: str
    split: str
    corpus: dict[str, str]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]
    source: str = ""
    report: dict[str, int] = field(default_factory=dict)

    @property
    def corpus_ids(self) -> list[str]:
        return list(self.corpus)

    @property
    def query_ids(self) -> list[str]:
        return list(self.queries)

    def fingerprint(self) -> str:
        """SHA-256 over the corpus ids and texts (keys document-embedding caches)."""
        digest = hashlib.sha256()
        for doc_id, text in self.corpus.items():
            digest.update(doc_id.encode())
            digest.update(b"\x00")
            digest.update(text.encode())
            digest.update(b"\x01")
        return digest.hexdigest()

    def subsample(
        self, max_queries: int | None = None, max_documents: int | None = None, seed: int = 0
    ) -> RetrievalDataset:
        """A smaller collection for quick runs: ``max_queries`` queries (seeded shuffle) and a corpus that keeps
        every judged document of those queries plus random others up to ``max_documents``. With
        ``max_documents=None`` the corpus is kept whole (in file order, so its cached embeddings are reused)."""
        import random

        rng = random.Random(seed)
        query_ids = sorted(self.queries)
        rng.shuffle(query_ids)
        query_ids = query_ids[:max_queries] if max_queries else query_ids
        judged = [d for q in query_ids for d in self.qrels[q] if d in self.corpus]
        keep = list(dict.fromkeys(judged)) if max_documents is not None else list(self.corpus)
        if max_documents is not None and len(keep) < max_documents:
            others = [d for d in self.corpus if d not in set(keep)]
            rng.shuffle(others)
            keep += others[: max_documents - len(keep)]
        keep_set = set(keep)
        return RetrievalDataset(
            name=self.name,
            split=self.split,
            corpus={d: t for d, t in self.corpus.items() if d in keep_set},
            queries={q: self.queries[q] for q in query_ids},
            qrels={q: {d: s for d, s in self.qrels[q].items() if d in keep_set} for q in query_ids},
            source=self.source,
            report=dict(self.report, subsampled=1),
        )


def _read_jsonl(path: Path, required: tuple[str, ...]) -> list[tuple[int, dict]]:
    if not path.is_file():
        raise BeirFormatError(f"Missing file {path}: a BEIR folder needs corpus.jsonl, queries.jsonl and qrels/.")
    rows = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise BeirFormatError(f"{path}, line {number}: not valid JSON ({error.msg}).") from error
            if not isinstance(record, dict):
                raise BeirFormatError(f"{path}, line {number}: expected a JSON object.")
            missing = [name for name in required if name not in record]
            if missing:
                raise BeirFormatError(
                    f"{path}, line {number}: missing field {missing[0]!r} (fields: {sorted(record)})."
                )
            rows.append((number, record))
    return rows


def _read_corpus(path: Path, report: dict[str, int]) -> dict[str, str]:
    corpus: dict[str, str] = {}
    for number, record in _read_jsonl(path, ("_id", "text")):
        doc_id = str(record["_id"])
        if doc_id in corpus:
            raise BeirFormatError(f"{path}, line {number}: duplicate document id {doc_id!r}.")
        text = document_text(record.get("title"), record.get("text"))
        if not text:
            report["empty_documents"] = report.get("empty_documents", 0) + 1
        corpus[doc_id] = text  # kept even if empty: it may be judged, and an empty doc is still a (bad) candidate
    if not corpus:
        raise BeirFormatError(f"{path} holds no documents.")
    return corpus


def _read_queries(path: Path, report: dict[str, int]) -> dict[str, str]:
    queries: dict[str, str] = {}
    for number, record in _read_jsonl(path, ("_id", "text")):
        query_id = str(record["_id"])
        if query_id in queries:
            raise BeirFormatError(f"{path}, line {number}: duplicate query id {query_id!r}.")
        text = " ".join(str(record["text"]).split())
        if not text:
            report["empty_queries"] = report.get("empty_queries", 0) + 1
            continue
        queries[query_id] = text
    return queries


def available_splits(folder: str | os.PathLike) -> list[str]:
    """The qrels splits of a BEIR folder (``qrels/*.tsv`` or ``qrels/*.jsonl``)."""
    qrels_dir = Path(folder) / "qrels"
    return sorted({p.stem for p in qrels_dir.glob("*") if p.suffix in (".tsv", ".jsonl")}) if qrels_dir.is_dir() else []


def _qrels_rows(path: Path):
    if path.suffix == ".jsonl":
        for number, record in _read_jsonl(path, ("query-id", "corpus-id", "score")):
            yield number, str(record["query-id"]), str(record["corpus-id"]), record["score"]
        return
    with path.open(encoding="utf-8", newline="") as handle:
        for number, row in enumerate(csv.reader(handle, delimiter="\t"), start=1):
            if not row or (number == 1 and row[0].strip().lower() in ("query-id", "query_id", "qid")):
                continue
            if len(row) < 3:
                raise BeirFormatError(f"{path}, line {number}: expected query-id, corpus-id, score; got {row!r}.")
            yield number, row[0].strip(), row[1].strip(), row[2].strip()


def _read_qrels(path: Path, corpus: dict, queries: dict, report: dict[str, int]) -> dict[str, dict[str, int]]:
    qrels: dict[str, dict[str, int]] = {}
    unknown_queries, unknown_documents = set(), 0
    for number, query_id, doc_id, score in _qrels_rows(path):
        try:
            score = int(float(score))
        except (TypeError, ValueError) as error:
            raise BeirFormatError(f"{path}, line {number}: score {score!r} is not a number.") from error
        if query_id not in queries:
            unknown_queries.add(query_id)
            continue
        if doc_id not in corpus:
            unknown_documents += 1
            continue
        qrels.setdefault(query_id, {})[doc_id] = score
    if unknown_queries:
        report["qrels_unknown_queries"] = len(unknown_queries)
        logger.warning(
            "%s: %d judged query ids are not in queries.jsonl; their qrels are dropped.", path, len(unknown_queries)
        )
    if unknown_documents:
        report["qrels_unknown_documents"] = unknown_documents
        logger.warning("%s: %d qrels name documents missing from corpus.jsonl; dropped.", path, unknown_documents)
    return qrels


def _unpack_zip(path: Path, cache_dir: Path | None) -> Path:
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile as error:
        raise BeirFormatError(f"{path} is not a zip file.") from error
    with archive:
        corpus_members = [n for n in archive.namelist() if n.endswith("corpus.jsonl")]
        if not corpus_members:
            raise BeirFormatError(f"{path} is not a BEIR zip: it has no corpus.jsonl.")
        digest = hashlib.sha256(
            f"{path.resolve()}|{path.stat().st_size}|{path.stat().st_mtime_ns}".encode()
        ).hexdigest()[:16]
        target = (cache_dir or default_cache_dir()) / "beir" / f"{path.stem}-{digest}"
        if not target.is_dir():
            with atomic_directory(target) as tmp:
                archive.extractall(tmp)
    return target / Path(corpus_members[0]).parent


def split_dataset_spec(spec: str, default_split: str = "test") -> tuple[str, str]:
    """``FOLDER`` or ``FOLDER:split`` → ``(folder, split)`` (a path that itself contains ``:`` is kept whole)."""
    if ":" in spec and not os.path.exists(spec):
        folder, split = spec.rsplit(":", 1)
        return folder, split
    return spec, default_split


def load_beir(
    source: str | os.PathLike, split: str = "test", name: str | None = None, cache_dir: str | os.PathLike | None = None
) -> RetrievalDataset:
    """Load a BEIR folder or zip.

    Args:
        source: a folder with ``corpus.jsonl``, ``queries.jsonl``, ``qrels/SPLIT.tsv|jsonl``, or a ``.zip`` of one.
        split: the qrels split (``test``, ``dev``, ``train``).
        name: display name; defaults to the folder name.
        cache_dir: where zips are unpacked (default :func:`default_cache_dir`).

    Raises:
        BeirFormatError: a missing file or split (the available splits are listed), a broken line (named),
            duplicate ids, or a zip that is not BEIR.

    Example::

        scifact = load_beir("../shared/data/beir/scifact", split="test")
        print(len(scifact.corpus), len(scifact.queries), scifact.report)
    """
    path = Path(source)
    if path.suffix == ".zip":
        path = _unpack_zip(path, Path(cache_dir) if cache_dir else None)
    if not path.is_dir():
        raise BeirFormatError(f"BEIR source {source} is neither a folder nor a .zip.")
    splits = available_splits(path)
    qrels_path = next(
        (
            path / "qrels" / f"{split}{ext}"
            for ext in (".tsv", ".jsonl")
            if (path / "qrels" / f"{split}{ext}").is_file()
        ),
        None,
    )
    if qrels_path is None:
        raise BeirFormatError(f"{path}: no qrels for split {split!r}; available splits: {splits or 'none'}.")
    report: dict[str, int] = {}
    corpus = _read_corpus(path / "corpus.jsonl", report)
    all_queries = _read_queries(path / "queries.jsonl", report)
    qrels = _read_qrels(qrels_path, corpus, all_queries, report)
    if not qrels:
        raise BeirFormatError(f"{qrels_path}: no judgement names a known query and document.")
    queries = {q: all_queries[q] for q in all_queries if q in qrels}
    return RetrievalDataset(
        name=name or path.name,
        split=split,
        corpus=corpus,
        queries=queries,
        qrels=qrels,
        source=str(path),
        report=report,
    )
