"""Query generation: synthetic queries from passages, to cover regions where real training queries are sparse.

All generators share one small interface, :class:`QueryGenerator`: ``generate(passages) -> QuerySet``. The
generated queries are unlabelled; the teacher embeds them, which is all that embedding alignment needs.

* :class:`SpanQueryGenerator` is model-free: it samples sentences or word spans from each passage (its first
  sentence is usually the title). It needs no weights, so it works offline, and it is the fallback when a
  dataset has too few real queries.
* Seq2seq (doc2query-style) generators plug into the same interface (EmbedDistill, issue 6).
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from tqdm.auto import tqdm

from asym_st.data.queries import QuerySet, clean_queries

__all__ = ["QueryGenerator", "SpanQueryGenerator"]

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


@runtime_checkable
class QueryGenerator(Protocol):
    """Anything that turns passages (id → text) into queries."""

    def generate(self, passages: Mapping[str, str]) -> QuerySet: ...


@dataclass
class SpanQueryGenerator:
    """Model-free pseudo-queries: sentences or word spans sampled from each passage.

    Args:
        queries_per_passage: how many pseudo-queries to draw per passage.
        min_words: spans shorter than this are skipped (too little to embed meaningfully).
        max_words: longer sentences are cut to a random window of this many words (queries are short).
        seed: the sampling seed (the same passages and seed give the same queries).

    Example::

        from asym_st.data import load_beir
        from asym_st.data.query_generation import SpanQueryGenerator
        corpus = load_beir("../shared/data/beir/scifact").corpus
        pseudo = SpanQueryGenerator(queries_per_passage=2).generate(corpus)
        print(pseudo.report())
    """

    queries_per_passage: int = 1
    min_words: int = 4
    max_words: int = 16
    seed: int = 0

    def __post_init__(self) -> None:
        if self.queries_per_passage < 1:
            raise ValueError("queries_per_passage must be at least 1.")
        if not 1 <= self.min_words <= self.max_words:
            raise ValueError(f"Need 1 <= min_words <= max_words; got {self.min_words} and {self.max_words}.")

    def _spans(self, text: str, rng: random.Random) -> list[str]:
        sentences = [s.split() for s in _SENTENCE_END.split(text) if len(s.split()) >= self.min_words]
        spans = []
        for words in sentences:
            if len(words) > self.max_words:
                start = rng.randrange(len(words) - self.max_words + 1)
                words = words[start : start + self.max_words]
            spans.append(" ".join(words))
        return spans

    def generate(self, passages: Mapping[str, str], show_progress_bar: bool = True) -> QuerySet:
        rng = random.Random(self.seed)
        ids, texts = [], []
        for passage_id, text in tqdm(passages.items(), desc="pseudo-queries", disable=not show_progress_bar):
            spans = self._spans(text or "", rng)
            if not spans:
                continue
            # The first sentence (usually the title) first, then random others.
            chosen = spans[:1] + rng.sample(spans[1:], min(len(spans) - 1, self.queries_per_passage - 1))
            for index, span in enumerate(chosen[: self.queries_per_passage]):
                ids.append(f"{passage_id}#pseudo{index}")
                texts.append(span)
        queries = clean_queries(ids, texts, source=f"SpanQueryGenerator({len(passages)} passages)")
        queries.notes.append(f"{len(passages) - len({i.split('#')[0] for i in queries.ids})} passages gave no query")
        return queries
