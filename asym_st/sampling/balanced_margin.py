"""Balanced margin sampling (TAS-Balanced) and the margin pairs it draws from.

Hofstätter et al., "Efficiently Teaching an Effective Dense Retriever with Balanced Topic Aware Sampling"
(SIGIR 2021, https://arxiv.org/abs/2104.06967), §3.2: a query's (positive, negative) pairs are very unevenly
spread over the pairwise teacher's margin ``s(q, p+) - s(q, p-)``: most negatives are easy (a large margin).
Drawing a pair uniformly therefore mostly shows the student easy pairs. Balanced margin sampling bins each query's
pairs by margin into equal-width bins (10 by default) between the query's smallest and largest margin, draws a
bin uniformly among the non-empty ones, then a pair uniformly from that bin.

Two pieces live here:

- :func:`build_margin_pairs` turns scored candidate lists (the output of
  :func:`asym_st.data.mining.mine_candidates` plus :func:`asym_st.data.teacher_scores.add_teacher_scores`) into one
  row per (query, positive, negative) with the teacher margin as ``label``, ids only (texts are resolved lazily,
  see :meth:`MarginPairs.with_texts`). Queries without negatives or without positives are skipped and counted.
- :class:`BalancedMarginSampler` knows, for every pair row, its query and its margin, and draws one row per query.
  ``num_bins=1`` is plain uniform pair sampling (the "no balancing" ablation).

The sampler knows indices and margins only, never models or texts.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from datasets import Dataset, Features, Value

__all__ = ["BalancedMarginSampler", "MarginPairs", "MarginPairsConfig", "build_margin_pairs", "PAIR_COLUMNS"]

logger = logging.getLogger(__name__)

#: Columns of :attr:`MarginPairs.dataset`, in this order (the label is the teacher margin).
PAIR_COLUMNS = ("query_id", "positive_id", "negative_id", "label")
_REQUIRED_CANDIDATE_COLUMNS = ("query_id", "positive_ids", "candidate_ids", "positive_scores", "candidate_scores")


class BalancedMarginSampler:
    """Draw one (positive, negative) pair per query, balanced over equal-width margin bins.

    Args:
        row_query_ids: the query of every pair row (``len == number of rows``), e.g. ``pairs.dataset["query_id"]``.
            Queries are numbered in order of first appearance; :attr:`query_ids` gives that order.
        margins: the pairwise teacher's margin ``s(q, p+) - s(q, p-)`` of every row.
        num_bins: equal-width bins per query between its smallest and largest margin (the paper uses 10).
            ``1`` gives uniform sampling over a query's pairs.

    A query whose margins are all equal has a single bin. Empty bins are never drawn: the bin is drawn uniformly
    among the query's non-empty bins, which is what "draw a bin uniformly, redraw if empty" amounts to.

    Example::

        sampler = BalancedMarginSampler(pairs.dataset["query_id"], pairs.dataset["label"], num_bins=10)
        rng = np.random.default_rng(0)
        rows = sampler.sample_epoch(rng)  # one pair row per query
    """

    def __init__(self, row_query_ids: Sequence[Hashable], margins: Sequence[float] | np.ndarray, num_bins: int = 10):
        if not isinstance(num_bins, int | np.integer) or num_bins < 1:
            raise ValueError(f"num_bins must be a positive integer, got {num_bins!r}.")
        margins = np.asarray(margins, dtype=np.float64)
        if margins.ndim != 1:
            raise ValueError(f"margins must be one number per pair row, got an array of shape {margins.shape}.")
        if len(row_query_ids) != len(margins):
            raise ValueError(
                f"row_query_ids has {len(row_query_ids)} entries but margins has {len(margins)}: one of each per row."
            )
        if len(margins) == 0:
            raise ValueError("No pair rows: there is nothing to sample from.")
        bad = np.flatnonzero(~np.isfinite(margins))
        if len(bad):
            raise ValueError(f"{len(bad)} pair row(s) have a non-finite margin, e.g. rows {bad[:10].tolist()}.")
        self.num_bins = int(num_bins)
        self.query_ids, self.row_query = _index_queries(row_query_ids)
        self.margins = margins
        self.row_bin = _margin_bins(self.row_query, margins, len(self.query_ids), self.num_bins)
        self._build_groups()

    # ------------------------------------------------------------------------------------------- structure

    def _build_groups(self) -> None:
        # One "group" per non-empty (query, bin); rows sorted by group so a group is a slice of `order`.
        key = self.row_query.astype(np.int64) * self.num_bins + self.row_bin
        self._order = np.argsort(key, kind="stable")
        group_keys, group_start, group_size = np.unique(key[self._order], return_index=True, return_counts=True)
        self._group_start, self._group_size = group_start, group_size
        group_query = group_keys // self.num_bins
        self._query_group_start = np.searchsorted(group_query, np.arange(len(self.query_ids)), side="left")
        self._query_group_count = np.bincount(group_query, minlength=len(self.query_ids))

    @property
    def num_queries(self) -> int:
        return len(self.query_ids)

    @property
    def num_rows(self) -> int:
        return len(self.row_query)

    def rows_of(self, query_index: int) -> np.ndarray:
        """All pair rows of a query (sorted)."""
        return np.sort(self._order[self._query_slice(query_index)])

    def bins_of(self, query_index: int) -> dict[int, np.ndarray]:
        """The query's non-empty bins: bin number → its rows (sorted)."""
        bins = {}
        first, count = self._query_group_start[query_index], self._query_group_count[query_index]
        for group in range(first, first + count):
            rows = self._order[self._group_start[group] : self._group_start[group] + self._group_size[group]]
            bins[int(self.row_bin[rows[0]])] = np.sort(rows)
        return bins

    def _query_slice(self, query_index: int) -> slice:
        first, count = self._query_group_start[query_index], self._query_group_count[query_index]
        start = self._group_start[first]
        last = first + count - 1
        return slice(start, self._group_start[last] + self._group_size[last])

    # ------------------------------------------------------------------------------------------- sampling

    def sample(self, query_indices: Sequence[int] | np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One pair row for each query index (vectorised): a non-empty bin uniformly, then a row in it."""
        queries = np.asarray(query_indices, dtype=np.int64)
        groups = self._query_group_start[queries] + _uniform_below(rng, self._query_group_count[queries])
        offsets = self._group_start[groups] + _uniform_below(rng, self._group_size[groups])
        return self._order[offsets]

    def sample_epoch(self, rng: np.random.Generator) -> np.ndarray:
        """One pair row for every query, in query order."""
        return self.sample(np.arange(self.num_queries), rng)


def _uniform_below(rng: np.random.Generator, upper: np.ndarray) -> np.ndarray:
    # Integers uniform in [0, upper) elementwise; floor(u * n) is exact enough for n << 2**53.
    return np.minimum((rng.random(len(upper)) * upper).astype(np.int64), upper - 1)


def _index_queries(row_query_ids: Sequence[Hashable]) -> tuple[list, np.ndarray]:
    """Number the queries in order of first appearance; vectorised for string / integer ids (millions of rows)."""
    values = np.asarray(row_query_ids) if len(row_query_ids) else None
    if values is not None and values.ndim == 1 and values.dtype.kind in "iuU":
        unique, first, inverse = np.unique(values, return_index=True, return_inverse=True)
        order = np.argsort(first, kind="stable")
        rank = np.empty_like(order)
        rank[order] = np.arange(len(order))
        return unique[order].tolist(), rank[inverse.reshape(-1)].astype(np.int64)
    index: dict = {}
    row_query = np.empty(len(row_query_ids), dtype=np.int64)
    for row, query_id in enumerate(row_query_ids):
        row_query[row] = index.setdefault(query_id, len(index))
    return list(index), row_query


def _margin_bins(row_query: np.ndarray, margins: np.ndarray, num_queries: int, num_bins: int) -> np.ndarray:
    """Equal-width bin of every row between its query's smallest and largest margin."""
    low = np.full(num_queries, np.inf)
    high = np.full(num_queries, -np.inf)
    np.minimum.at(low, row_query, margins)
    np.maximum.at(high, row_query, margins)
    width = (high - low) / num_bins
    row_width = width[row_query]
    with np.errstate(divide="ignore", invalid="ignore"):
        bins = np.floor((margins - low[row_query]) / row_width)
    bins = np.where(row_width > 0, bins, 0)  # all margins equal: one bin
    # The largest margin lands exactly on the upper edge; it belongs to the last bin.
    return np.clip(bins, 0, num_bins - 1).astype(np.int64)


# ----------------------------------------------------------------------------------------------- pairs


@dataclass
class MarginPairsConfig:
    """How scored candidates become (query, positive, negative, margin) rows.

    Args:
        max_positives_per_query: keep at most this many positives per query (the first ones listed; ``None``: all).
            Collections with many judged positives per query (NFCorpus: ~40) multiply the pair count.
        max_negatives_per_query: keep at most this many negatives per query, the best-ranked ones (``None``: all).
        label_scale: multiply every margin (e.g. to bring cross-encoder logits to the student's score range).
    """

    max_positives_per_query: int | None = None
    max_negatives_per_query: int | None = None
    label_scale: float = 1.0

    def __post_init__(self) -> None:
        for name in ("max_positives_per_query", "max_negatives_per_query"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"MarginPairsConfig.{name} must be a positive integer or None, got {value!r}.")


@dataclass
class MarginPairs:
    """Pair rows with teacher margins, and what was skipped on the way.

    Attributes:
        dataset: columns :data:`PAIR_COLUMNS` (``query_id``, ``positive_id``, ``negative_id``, ``label`` = margin).
        skipped_no_negatives: query ids whose candidate list had no negative (skipped).
        skipped_no_positives: query ids without a positive (skipped).
    """

    dataset: Dataset
    skipped_no_negatives: list[str] = field(default_factory=list)
    skipped_no_positives: list[str] = field(default_factory=list)

    @property
    def num_queries(self) -> int:
        return len(set(self.dataset["query_id"]))

    def sampler(self, num_bins: int = 10) -> BalancedMarginSampler:
        """A :class:`BalancedMarginSampler` over these rows (``num_bins=1``: uniform pairs)."""
        return BalancedMarginSampler(self.dataset["query_id"], np.asarray(self.dataset["label"]), num_bins=num_bins)

    def with_texts(self, queries: Mapping[str, str], corpus: Mapping[str, str]) -> Dataset:
        """The training dataset: ``query``, ``positive``, ``negative``, ``label``, texts resolved lazily.

        Texts are looked up per batch with sentence-transformers' :func:`~sentence_transformers.util.resolve_ids`
        (a ``set_transform``), so a million pairs do not copy a million passages. Row ``i`` is still pair ``i``,
        so samplers built on :attr:`dataset` index this dataset directly.
        """
        from sentence_transformers.util import resolve_ids

        query_table = Dataset.from_dict({"id": list(queries), "text": list(queries.values())})
        corpus_table = Dataset.from_dict({"id": list(corpus), "text": list(corpus.values())})
        _check_known(self.dataset.unique("query_id"), queries, "query")
        _check_known(
            set(self.dataset.unique("positive_id")) | set(self.dataset.unique("negative_id")), corpus, "passage"
        )
        resolved = self.dataset.select_columns(list(PAIR_COLUMNS))
        resolved.set_transform(
            resolve_ids(
                {
                    "query_id": (query_table, "id", "text"),
                    "positive_id": (corpus_table, "id", "text"),
                    "negative_id": (corpus_table, "id", "text"),
                }
            )
        )
        return resolved


def _check_known(ids, known: Mapping[str, str], what: str) -> None:
    unknown = [i for i in ids if i not in known]
    if unknown:
        raise KeyError(f"{len(unknown)} {what} id(s) of the pairs have no text, e.g. {sorted(unknown)[:10]}.")


def build_margin_pairs(candidates: Dataset, config: MarginPairsConfig | None = None) -> MarginPairs:
    """Every (positive, negative) pair of every query, labelled with the pairwise teacher's margin.

    Args:
        candidates: scored candidate lists, one row per query with ``query_id``, ``positive_ids``,
            ``candidate_ids`` (negatives, best-ranked first), ``positive_scores`` and ``candidate_scores``.
        config: caps on positives / negatives per query and a label scale.

    Returns:
        :class:`MarginPairs`; queries with no negatives (or no positives) are skipped and counted there, and a
        warning says how many.
    """
    config = config or MarginPairsConfig()
    missing = [name for name in _REQUIRED_CANDIDATE_COLUMNS if name not in candidates.column_names]
    if missing:
        raise ValueError(
            f"The candidate dataset lacks column(s) {missing}; score it first with "
            f"asym_st.data.teacher_scores.add_teacher_scores (it has {candidates.column_names})."
        )
    columns: dict[str, list] = {name: [] for name in PAIR_COLUMNS}
    no_negatives, no_positives = [], []
    for row in candidates.select_columns(list(_REQUIRED_CANDIDATE_COLUMNS)):
        _check_lengths(row)
        positives = list(zip(row["positive_ids"], row["positive_scores"], strict=True))[
            : config.max_positives_per_query
        ]
        negatives = list(zip(row["candidate_ids"], row["candidate_scores"], strict=True))[
            : config.max_negatives_per_query
        ]
        if not negatives:
            no_negatives.append(row["query_id"])
            continue
        if not positives:
            no_positives.append(row["query_id"])
            continue
        for positive_id, positive_score in positives:
            for negative_id, negative_score in negatives:
                columns["query_id"].append(row["query_id"])
                columns["positive_id"].append(positive_id)
                columns["negative_id"].append(negative_id)
                columns["label"].append((positive_score - negative_score) * config.label_scale)
    if no_negatives or no_positives:
        logger.warning(
            "Margin pairs: skipped %d quer%s with no negative candidate and %d with no positive (of %d).",
            len(no_negatives),
            "y" if len(no_negatives) == 1 else "ies",
            len(no_positives),
            len(candidates),
        )
    if not columns["query_id"]:
        raise ValueError(
            f"No (positive, negative) pair could be built from {len(candidates)} queries: {len(no_negatives)} have "
            f"no negative and {len(no_positives)} no positive."
        )
    features = Features({**{name: Value("string") for name in PAIR_COLUMNS[:3]}, "label": Value("float32")})
    dataset = Dataset.from_dict(columns, features=features)
    return MarginPairs(dataset, no_negatives, no_positives)


def _check_lengths(row: dict) -> None:
    for ids, scores in (("positive_ids", "positive_scores"), ("candidate_ids", "candidate_scores")):
        if len(row[ids]) != len(row[scores]):
            raise ValueError(
                f"Query {row['query_id']!r}: {ids} has {len(row[ids])} entries but {scores} has {len(row[scores])}."
            )
