"""Query files: read, validate and clean unlabelled queries.

Formats, chosen by extension:

* ``.jsonl``: one JSON object per line with the text under ``text`` (BEIR), ``query`` or ``question``, and an
  optional id under ``_id`` / ``id`` / ``query_id`` / ``qid``;
* ``.tsv``: ``id<TAB>text`` (MS MARCO), or one column of text;
* ``.txt``: one query per line.

Broken lines raise :class:`QueryFileError` naming the file and the line. Empty queries and exact duplicates
(after whitespace normalisation) are dropped and counted, never silently.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["QueryFileError", "QuerySet", "read_query_file", "clean_queries"]

TEXT_FIELDS = ("text", "query", "question")
ID_FIELDS = ("_id", "id", "query_id", "qid", "query-id")


class QueryFileError(ValueError):
    """A query file that cannot be read: names the file, the line and what is wrong."""


@dataclass
class QuerySet:
    """Queries with their ids and a report of what was dropped on the way."""

    ids: list[str]
    texts: list[str]
    source: str = ""
    dropped_empty: int = 0
    dropped_duplicates: int = 0
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.texts)

    def report(self) -> str:
        """One line: how many queries were kept and what was dropped."""
        parts = [f"{len(self)} queries from {self.source or 'memory'}"]
        if self.dropped_empty:
            parts.append(f"{self.dropped_empty} empty dropped")
        if self.dropped_duplicates:
            parts.append(f"{self.dropped_duplicates} duplicates dropped")
        return ", ".join(parts + self.notes)


def _normalise(text: str) -> str:
    return " ".join(text.split())


def clean_queries(ids: list[str], texts: list[str], source: str = "") -> QuerySet:
    """Drop empty and duplicate queries (first occurrence kept), counting both."""
    kept_ids, kept_texts, seen = [], [], set()
    empty = duplicates = 0
    for query_id, text in zip(ids, texts, strict=True):
        normalised = _normalise(text or "")
        if not normalised:
            empty += 1
            continue
        if normalised in seen:
            duplicates += 1
            continue
        seen.add(normalised)
        kept_ids.append(str(query_id))
        kept_texts.append(normalised)
    return QuerySet(kept_ids, kept_texts, source, dropped_empty=empty, dropped_duplicates=duplicates)


def _jsonl_line(path: Path, number: int, line: str) -> tuple[str | None, str]:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise QueryFileError(f"{path}, line {number}: not valid JSON ({error.msg}): {line[:80]!r}") from error
    if not isinstance(record, dict):
        raise QueryFileError(f"{path}, line {number}: expected a JSON object, got {type(record).__name__}.")
    text_field = next((name for name in TEXT_FIELDS if name in record), None)
    if text_field is None:
        raise QueryFileError(
            f"{path}, line {number}: missing field 'text' (also accepted: {', '.join(TEXT_FIELDS[1:])}); "
            f"fields present: {sorted(record)}."
        )
    if not isinstance(record[text_field], str):
        raise QueryFileError(f"{path}, line {number}: field {text_field!r} must be a string.")
    id_field = next((name for name in ID_FIELDS if name in record), None)
    return (str(record[id_field]) if id_field else None), record[text_field]


def _tsv_line(path: Path, number: int, line: str) -> tuple[str | None, str]:
    columns = line.split("\t")
    if len(columns) == 1:
        return None, columns[0]
    if len(columns) == 2:
        return columns[0].strip(), columns[1]
    raise QueryFileError(f"{path}, line {number}: expected 'id<TAB>text', found {len(columns)} tab-separated columns.")


def read_query_file(path: str | os.PathLike, limit: int | None = None) -> QuerySet:
    """Read queries from a ``.jsonl``, ``.tsv`` or ``.txt`` file (see the module docstring).

    Args:
        path: the file.
        limit: keep at most this many (after cleaning), in file order.

    Raises:
        QueryFileError: unknown format, a broken line (named), or no query left after cleaning.
    """
    path = Path(path)
    if not path.is_file():
        raise QueryFileError(f"Query file {path} does not exist.")
    suffix = path.suffix.lower()
    parsers = {".jsonl": _jsonl_line, ".tsv": _tsv_line, ".txt": lambda p, n, line: (None, line)}
    if suffix not in parsers:
        raise QueryFileError(f"{path}: unknown query file format {suffix!r}; use .jsonl, .tsv or .txt.")
    parse = parsers[suffix]
    ids, texts = [], []
    with path.open(encoding="utf-8") as handle:
        for number, raw in enumerate(handle, start=1):
            line = raw.rstrip("\n").rstrip("\r")
            if not line.strip():
                # A blank line is an empty query in .txt/.tsv; in .jsonl it is just spacing.
                if suffix != ".jsonl":
                    ids.append(str(number))
                    texts.append("")
                continue
            query_id, text = parse(path, number, line)
            ids.append(query_id if query_id is not None else str(number))
            texts.append(text)
    queries = clean_queries(ids, texts, source=str(path))
    if not queries.texts:
        raise QueryFileError(f"{path} holds no queries (after dropping {queries.dropped_empty} empty lines).")
    if limit is not None:
        queries.ids, queries.texts = queries.ids[:limit], queries.texts[:limit]
    return queries
