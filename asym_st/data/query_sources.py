"""Training queries from real sources, merged, cleaned, and kept apart from evaluation queries.

A source is named by a short string (the CLI and YAML configs use the same syntax):

=======================================  ================================================================
``path/to/queries.{jsonl,tsv,txt}``      a query file (see :mod:`asym_st.data.queries`)
``path/to/beir_folder:train``            the queries judged in a BEIR split (``:all`` = every query)
``hf:org/dataset[:split[:column]]``      a Hub dataset (or a local dataset folder) through ``datasets``
``pseudo:path/to/beir_folder[:n]``       n model-free pseudo-queries per passage of a BEIR corpus (fallback)
=======================================  ================================================================

Queries that also appear among the evaluation queries are excluded by default (the leakage guard), so the
test queries are never trained on. Everything dropped is counted in the returned :class:`QuerySet`'s report.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from asym_st.data.beir import RetrievalDataset, load_beir
from asym_st.data.queries import QueryFileError, QuerySet, clean_queries, read_query_file
from asym_st.data.query_generation import SpanQueryGenerator

__all__ = [
    "QuerySource",
    "parse_query_source",
    "load_query_source",
    "collect_training_queries",
    "evaluation_query_texts",
    "without_evaluation_queries",
]

logger = logging.getLogger(__name__)

_QUERY_COLUMNS = ("query", "question", "text", "anchor", "sentence")


@dataclass
class QuerySource:
    """A parsed query source (see the module docstring for the string syntax)."""

    kind: str  # "file" | "beir" | "hub" | "pseudo"
    location: str
    split: str | None = None
    column: str | None = None
    per_passage: int = 1

    def describe(self) -> str:
        detail = {"beir": f":{self.split}", "hub": f":{self.split or 'train'}", "pseudo": f":{self.per_passage}"}
        return f"{self.kind} {self.location}{detail.get(self.kind, '')}"


def parse_query_source(spec: str) -> QuerySource:
    """Parse a source string into a :class:`QuerySource`."""
    spec = spec.strip()
    if spec.startswith("hf:"):
        parts = spec[3:].split(":")
        if not parts[0]:
            raise ValueError(f"Query source {spec!r}: expected hf:org/dataset[:split[:column]].")
        return QuerySource(
            "hub", parts[0], split=parts[1] if len(parts) > 1 else None, column=parts[2] if len(parts) > 2 else None
        )
    if spec.startswith("pseudo:"):
        location, _, count = spec[7:].rpartition(":") if spec[7:].rsplit(":", 1)[-1].isdigit() else (spec[7:], "", "1")
        return QuerySource("pseudo", location, per_passage=int(count))
    location, _, split = spec.rpartition(":") if ":" in spec and not os.path.exists(spec) else (spec, "", "")
    path = Path(location)
    if path.is_dir():
        return QuerySource("beir", location, split=split or "train")
    if path.is_file():
        if split:
            raise ValueError(f"Query source {spec!r}: a split (':{split}') only applies to BEIR folders.")
        return QuerySource("file", location)
    raise FileNotFoundError(f"Query source {spec!r}: {location} is neither a query file nor a BEIR folder.")


def _load_hub(source: QuerySource) -> QuerySet:
    import datasets

    split = source.split or "train"
    try:
        dataset = datasets.load_dataset(source.location, split=split)
    except Exception as error:  # datasets raises many types for "missing / offline / bad split"
        raise QueryFileError(f"Could not load Hub dataset {source.location!r} split {split!r}: {error}") from error
    column = source.column or next((c for c in _QUERY_COLUMNS if c in dataset.column_names), None)
    if column is None or column not in dataset.column_names:
        raise QueryFileError(
            f"Hub dataset {source.location!r} has no query column {source.column or ''!r}; columns: "
            f"{dataset.column_names}. Name one: hf:{source.location}:{split}:COLUMN."
        )
    texts = [str(t) if t is not None else "" for t in dataset[column]]
    ids = [str(i) for i in dataset["_id"]] if "_id" in dataset.column_names else [str(i) for i in range(len(texts))]
    return clean_queries(ids, texts, source=source.describe())


def _load_beir_queries(source: QuerySource) -> QuerySet:
    folder = Path(source.location)
    if source.split == "all":
        return read_query_file(folder / "queries.jsonl")
    dataset = load_beir(folder, split=source.split)
    return clean_queries(list(dataset.queries), list(dataset.queries.values()), source=source.describe())


def load_query_source(source: str | QuerySource) -> QuerySet:
    """Load one source's queries (cleaned: empty and duplicate queries dropped and counted)."""
    source = parse_query_source(source) if isinstance(source, str) else source
    if source.kind == "file":
        return read_query_file(source.location)
    if source.kind == "beir":
        return _load_beir_queries(source)
    if source.kind == "hub":
        return _load_hub(source)
    if source.kind == "pseudo":
        corpus = load_beir(source.location, split=_any_split(source.location)).corpus
        return SpanQueryGenerator(queries_per_passage=source.per_passage).generate(corpus)
    raise ValueError(f"Unknown query source kind {source.kind!r}.")


def _any_split(folder: str) -> str:
    from asym_st.data.beir import available_splits

    splits = available_splits(folder)
    if not splits:
        raise QueryFileError(f"{folder} has no qrels folder; pseudo-queries need a BEIR folder.")
    return splits[0]


def _normalise(text: str) -> str:
    return " ".join(text.lower().split())


def evaluation_query_texts(datasets: Iterable[RetrievalDataset]) -> set[str]:
    """The normalised, lower-cased texts of the datasets' queries: what the leakage guard matches on."""
    return {_normalise(text) for dataset in datasets for text in dataset.queries.values()}


def without_evaluation_queries(
    queries: Mapping[str, str], exclude: Iterable[RetrievalDataset]
) -> tuple[dict[str, str], list[str]]:
    """The leakage guard for labelled training queries: ``queries`` minus those whose text is an evaluation
    query of ``exclude`` (the same query under another id included). Returns (kept, dropped ids)."""
    banned = evaluation_query_texts(exclude)
    kept = {qid: text for qid, text in queries.items() if _normalise(text) not in banned}
    return kept, [qid for qid in queries if qid not in kept]


def collect_training_queries(
    sources: Sequence[str | QuerySource],
    exclude: Iterable[RetrievalDataset] = (),
    limit: int | None = None,
) -> QuerySet:
    """Merge query sources, drop duplicates across them, and exclude evaluation queries (the leakage guard).

    Args:
        sources: query sources (strings or :class:`QuerySource`).
        exclude: evaluation collections whose queries must never be trained on (matched on normalised,
            lower-cased text, which also catches the same query under another id).
        limit: keep at most this many queries (in source order).

    Raises:
        QueryFileError: no query left (e.g. every source was empty or everything overlapped evaluation).
    """
    if not sources:
        raise QueryFileError("No training query source given.")
    banned = evaluation_query_texts(exclude)
    ids, texts, notes = [], [], []
    dropped_empty = dropped_duplicates = 0
    for source in sources:
        loaded = load_query_source(source)
        dropped_empty += loaded.dropped_empty
        dropped_duplicates += loaded.dropped_duplicates
        notes.append(loaded.report())
        ids += [f"{len(notes) - 1}:{i}" for i in loaded.ids]
        texts += loaded.texts
    overlap = {i for i, t in enumerate(texts) if _normalise(t) in banned}
    keep = [i for i in range(len(texts)) if i not in overlap]
    merged = clean_queries([ids[i] for i in keep], [texts[i] for i in keep], source=" + ".join(map(str, sources)))
    merged.dropped_empty += dropped_empty
    merged.dropped_duplicates += dropped_duplicates
    merged.notes = notes + (
        [f"{len(overlap)} evaluation queries excluded (leakage guard)"] if overlap or banned else []
    )
    if limit is not None:
        merged.ids, merged.texts = merged.ids[:limit], merged.texts[:limit]
    if not merged.texts:
        raise QueryFileError(f"No training queries left from {[str(s) for s in sources]} ({'; '.join(notes)}).")
    logger.info("Training queries: %s", merged.report())
    return merged
