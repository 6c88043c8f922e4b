"""Topic-aware batch sampling (TAS): every batch is drawn from one cluster of similar training queries.

Hofstätter et al., "Efficiently Teaching an Effective Dense Retriever with Balanced Topic Aware Sampling"
(SIGIR 2021, https://arxiv.org/abs/2104.06967), §3.1: the training queries are clustered once, with k-means on
the teacher's query embeddings (the paper uses k = 2000 on MS MARCO's 400k queries), and each batch takes its
queries from a single cluster. In-batch negatives of topically close queries are informative ones, which makes
the in-batch part of the dual-teacher loss (:class:`asym_st.losses.DualTeacherMarginMSELoss`) worth having.

Pieces:

- :func:`cluster_queries` runs ``faiss.Kmeans`` on query embeddings (computed by the caller, e.g. with
  :class:`asym_st.data.EmbeddingCache`: a sampler knows indices and cluster labels, never models) and returns
  :class:`QueryClusters` (ids, labels, centroids; saved and loaded without pickle).
- :class:`TopicAwareBatchSampler` is a sentence-transformers batch sampler. Pass
  ``TopicAwareBatchSampler.factory(clusters, pairs=...)`` as ``batch_sampler=`` in
  ``SentenceTransformerTrainingArguments``. With a :class:`~asym_st.sampling.BalancedMarginSampler` as ``pairs``,
  the dataset holds every (query, positive, negative) pair row and the sampler draws one pair per query per epoch
  (TAS-Balanced); without it, dataset row ``i`` is query ``clusters.query_ids[i]`` (plain TAS).

How an epoch is built (deterministic from ``seed`` and the epoch, :meth:`~TopicAwareBatchSampler.set_epoch`):

1. Each cluster's queries are shuffled and cut into batches of ``batch_size``; the batches of all clusters are
   then shuffled together. Every query appears in every epoch (coverage).
2. A cluster's last, incomplete chunk (its "tail") is filled up with other queries of the same cluster (drawn
   without replacement, so no query twice in a batch): these are the only repeats within an epoch. With
   ``drop_last=True`` tails are dropped instead (no repeats, but up to ``batch_size - 1`` queries per cluster
   sit out that epoch; a different set each epoch).
3. **Clusters smaller than the batch** cannot fill a batch on their own. They are merged, smallest first, into
   the cluster with the nearest centroid (needs centroids, which :func:`cluster_queries` provides; plain labels
   with an undersized cluster raise an error that says so). If all queries together are fewer than a batch, the
   epoch is one short batch (or, with ``drop_last``, an error).
4. Under DDP the sampler yields the *global* sequence of batches, identical on every rank (same seed, same
   clusters; checked across ranks when ``torch.distributed`` is initialised), and accelerate's
   ``BatchSamplerShard`` (which the Trainer wraps around any batch sampler) gives rank ``r`` batches
   ``r, r + world, ...``: ranks get disjoint batches. The number of batches is rounded up to a multiple of the
   world size (extra batches drawn from clusters at random) so that every rank takes the same number of steps.
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
import os
import warnings
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import faiss
import numpy as np
import torch
from sentence_transformers.base.sampler import DefaultBatchSampler
from torch.utils.data import SequentialSampler

from asym_st.sampling.balanced_margin import BalancedMarginSampler
from asym_st.utils.io import atomic_write_bytes

__all__ = ["ClusteringConfig", "QueryClusters", "TopicAwareBatchSampler", "cluster_queries"]

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------- clustering


@dataclass
class ClusteringConfig:
    """k-means over teacher query embeddings.

    Args:
        num_clusters: k (the paper: 2000 clusters for 400k MS MARCO queries, i.e. ~200 queries per cluster).
        min_cluster_size: clusters with fewer queries are merged into the nearest cluster (set it to the batch
            size; the sampler does this merge itself too).
        too_few_queries: when there are fewer queries than ``num_clusters``: ``"reduce"`` k to the number of
            queries with a warning, or ``"error"``.
        niter: k-means iterations.
        seed: k-means seed (faiss' initialisation and sub-sampling).
        spherical: normalise centroids (cosine k-means); embeddings of normalising models are unit length anyway.
        max_points_per_centroid: faiss sub-samples ``k * this`` points for training when there are more
            (assignments always use all queries).
    """

    num_clusters: int = 2000
    min_cluster_size: int = 1
    too_few_queries: Literal["reduce", "error"] = "reduce"
    niter: int = 20
    seed: int = 42
    spherical: bool = False
    max_points_per_centroid: int = 256

    def __post_init__(self) -> None:
        if not isinstance(self.num_clusters, int) or self.num_clusters < 1:
            raise ValueError(f"ClusteringConfig.num_clusters must be a positive integer, got {self.num_clusters!r}.")
        if self.too_few_queries not in ("reduce", "error"):
            raise ValueError(f"ClusteringConfig.too_few_queries={self.too_few_queries!r}; use 'reduce' or 'error'.")
        if self.min_cluster_size < 1:
            raise ValueError(f"ClusteringConfig.min_cluster_size must be >= 1, got {self.min_cluster_size}.")


@dataclass
class QueryClusters:
    """Cluster labels of training queries.

    Attributes:
        query_ids: the queries, in the order of ``labels``.
        labels: cluster of each query, ``0 .. num_clusters - 1`` (every label used).
        centroids: ``num_clusters × dim`` centroids, or ``None`` when made from plain labels.
    """

    query_ids: list[Hashable]
    labels: np.ndarray
    centroids: np.ndarray | None = None
    merged: int = field(default=0, compare=False)

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64)
        if self.labels.ndim != 1 or len(self.labels) != len(self.query_ids):
            raise ValueError(f"{len(self.query_ids)} query ids but labels of shape {self.labels.shape}.")
        if len(set(self.query_ids)) != len(self.query_ids):
            raise ValueError("QueryClusters.query_ids has duplicates; each query must have one cluster.")
        if len(self.labels) and self.labels.min() < 0:
            raise ValueError("Cluster labels must be >= 0.")
        if self.centroids is not None and len(self.labels) and self.labels.max() >= len(self.centroids):
            raise ValueError(f"A label ({self.labels.max()}) has no centroid (there are {len(self.centroids)}).")

    @classmethod
    def from_labels(cls, labels: Sequence[int], query_ids: Sequence[Hashable] | None = None) -> QueryClusters:
        """Clusters from given labels (no centroids: undersized clusters cannot be merged and raise instead)."""
        labels = np.asarray(labels, dtype=np.int64)
        query_ids = list(range(len(labels))) if query_ids is None else list(query_ids)
        _, dense = np.unique(labels, return_inverse=True)
        return cls(query_ids, dense.reshape(-1))

    @property
    def num_clusters(self) -> int:
        return int(self.labels.max()) + 1 if len(self.labels) else 0

    def sizes(self) -> np.ndarray:
        return np.bincount(self.labels, minlength=self.num_clusters)

    def members(self) -> list[np.ndarray]:
        """Query positions of each cluster (ascending)."""
        order = np.argsort(self.labels, kind="stable")
        return np.split(order, np.cumsum(self.sizes())[:-1])

    def subset(self, query_ids: Sequence[Hashable]) -> QueryClusters:
        """The clusters restricted (and re-ordered) to ``query_ids``; empty clusters are dropped."""
        position = {query_id: index for index, query_id in enumerate(self.query_ids)}
        missing = [query_id for query_id in query_ids if query_id not in position]
        if missing:
            raise KeyError(f"{len(missing)} quer(ies) have no cluster, e.g. {missing[:10]}.")
        labels = self.labels[[position[query_id] for query_id in query_ids]]
        used, dense = np.unique(labels, return_inverse=True)
        centroids = None if self.centroids is None else self.centroids[used]
        return QueryClusters(list(query_ids), dense.reshape(-1), centroids, self.merged)

    def merge_small(self, min_size: int) -> QueryClusters:
        """Merge clusters smaller than ``min_size``, smallest first, into the cluster with the nearest centroid."""
        sizes = self.sizes()
        if len(sizes) <= 1 or sizes.min() >= min_size:
            return self
        if self.centroids is None:
            small = np.flatnonzero(sizes < min_size)
            raise ValueError(
                f"{len(small)} cluster(s) have fewer than {min_size} queries (e.g. cluster {int(small[0])} has "
                f"{int(sizes[small[0]])}), so they cannot fill a batch of {min_size}, and these clusters have no "
                "centroids to merge them by. Cluster with asym_st.sampling.cluster_queries (which keeps centroids) "
                f"or with ClusteringConfig(min_cluster_size={min_size})."
            )
        labels = self.labels.copy()
        centroids = self.centroids.astype(np.float64)
        alive = np.ones(len(sizes), dtype=bool)
        sizes = sizes.astype(np.int64)
        merged = 0
        while alive.sum() > 1:
            candidates = np.flatnonzero(alive & (sizes < min_size))
            if not len(candidates):
                break
            source = candidates[np.argmin(sizes[candidates])]
            distances = ((centroids - centroids[source]) ** 2).sum(axis=1)
            distances[~alive] = np.inf
            distances[source] = np.inf
            target = int(np.argmin(distances))
            total = sizes[source] + sizes[target]
            centroids[target] = (centroids[target] * sizes[target] + centroids[source] * sizes[source]) / total
            labels[labels == source] = target
            sizes[target], sizes[source], alive[source] = total, 0, False
            merged += 1
        used, dense = np.unique(labels, return_inverse=True)
        return QueryClusters(
            list(self.query_ids), dense.reshape(-1), centroids[used].astype(np.float32), self.merged + merged
        )

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        digest.update(repr([str(query_id) for query_id in self.query_ids]).encode())
        digest.update(self.labels.tobytes())
        return digest.hexdigest()

    # ------------------------------------------------------------------------------------------- persistence

    def save(self, path: str | os.PathLike) -> Path:
        """Write an ``.npz`` atomically (no pickle: ids are stored as a unicode array)."""
        buffer = io.BytesIO()
        arrays = {"query_ids": np.asarray([str(query_id) for query_id in self.query_ids]), "labels": self.labels}
        if self.centroids is not None:
            arrays["centroids"] = np.asarray(self.centroids, dtype=np.float32)
        np.savez(buffer, **arrays)
        return atomic_write_bytes(path, buffer.getvalue())

    @classmethod
    def load(cls, path: str | os.PathLike) -> QueryClusters:
        """Read a file written by :meth:`save` (query ids come back as strings)."""
        try:
            with np.load(path, allow_pickle=False) as data:
                centroids = data["centroids"] if "centroids" in data.files else None
                return cls(data["query_ids"].tolist(), data["labels"], centroids)
        except (OSError, ValueError, KeyError) as error:
            raise ValueError(f"{path}: not a query-cluster file written by QueryClusters.save ({error}).") from error


def cluster_queries(
    embeddings: np.ndarray, query_ids: Sequence[Hashable] | None = None, config: ClusteringConfig | None = None
) -> QueryClusters:
    """k-means (``faiss.Kmeans``) over query embeddings; one cluster label per query.

    Args:
        embeddings: ``num_queries × dim`` teacher query embeddings (may be memory-mapped).
        query_ids: the queries' ids (default ``0 .. n-1``).
        config: k, seed, what to do with fewer queries than clusters, minimum cluster size.

    Example::

        embeddings = EmbeddingCache().encode(teacher, query_texts, route="query")
        clusters = cluster_queries(embeddings, query_ids, ClusteringConfig(num_clusters=200, min_cluster_size=32))
        clusters.save("clusters.npz")
    """
    config = config or ClusteringConfig()
    vectors = np.ascontiguousarray(embeddings, dtype=np.float32)
    if vectors.ndim != 2 or len(vectors) == 0:
        raise ValueError(f"cluster_queries needs a non-empty num_queries × dim matrix, got shape {vectors.shape}.")
    query_ids = list(range(len(vectors))) if query_ids is None else list(query_ids)
    if len(query_ids) != len(vectors):
        raise ValueError(f"{len(query_ids)} query ids for {len(vectors)} embeddings.")
    k = config.num_clusters
    if len(vectors) < k:
        message = f"{len(vectors)} queries are fewer than the {k} clusters asked for"
        if config.too_few_queries == "error":
            raise ValueError(message + "; lower ClusteringConfig.num_clusters or pass too_few_queries='reduce'.")
        warnings.warn(f"{message}; using k = {len(vectors)}.", stacklevel=2)
        k = len(vectors)
    if k == 1:
        labels, centroids = np.zeros(len(vectors), dtype=np.int64), vectors.mean(axis=0, keepdims=True)
    else:
        kmeans = faiss.Kmeans(
            vectors.shape[1],
            k,
            niter=config.niter,
            seed=config.seed,
            spherical=config.spherical,
            max_points_per_centroid=config.max_points_per_centroid,
            min_points_per_centroid=1,
            verbose=False,
        )
        kmeans.train(vectors)
        _, assignment = kmeans.index.search(vectors, 1)
        labels, centroids = assignment[:, 0].astype(np.int64), kmeans.centroids
    used, dense = np.unique(labels, return_inverse=True)  # k-means can leave a centroid without queries
    clusters = QueryClusters(query_ids, dense.reshape(-1), np.asarray(centroids[used], dtype=np.float32))
    clusters = clusters.merge_small(config.min_cluster_size)
    logger.info(
        "Clustered %d queries into %d clusters (sizes %d-%d, %d merged for min size %d).",
        len(vectors),
        clusters.num_clusters,
        clusters.sizes().min(),
        clusters.sizes().max(),
        clusters.merged,
        config.min_cluster_size,
    )
    return clusters


# ----------------------------------------------------------------------------------------------- sampler


def _world_size() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size()
    return 1


class TopicAwareBatchSampler(DefaultBatchSampler):
    """Batches of queries from one cluster each; optionally one balanced-margin pair per query (TAS-Balanced).

    Args:
        dataset: the training dataset. With ``pairs``, one row per pair (``len == pairs.num_rows``); without,
            one row per query, row ``i`` being ``clusters.query_ids[i]``.
        batch_size: queries per batch.
        drop_last: drop the incomplete tail of each cluster instead of filling it (see the module docstring).
        valid_label_columns: unused (part of the sentence-transformers batch-sampler signature).
        generator: unused: the order comes from ``seed`` and the epoch alone, so every DDP rank computes it.
        seed: the Trainer passes ``args.seed``.
        clusters: the query clusters (from :func:`cluster_queries`).
        pairs: a :class:`BalancedMarginSampler` over the dataset's rows (``num_bins=1`` for uniform pairs).
        world_size: number of DDP ranks to round the batch count for (default: ``torch.distributed``'s, else 1).

    A single cluster (``QueryClusters.from_labels([0] * n)``) gives plain random batches: the ablation baseline.

    Example::

        from sentence_transformers import SentenceTransformerTrainingArguments

        pairs = build_margin_pairs(scored_candidates)
        args = SentenceTransformerTrainingArguments(
            output_dir="out",
            per_device_train_batch_size=32,
            batch_sampler=TopicAwareBatchSampler.factory(clusters, pairs=pairs.sampler(num_bins=10)),
            router_mapping={"query": "query", "positive": "document", "negative": "document"},
        )
        # train_dataset = pairs.with_texts(queries, corpus)
    """

    def __init__(
        self,
        dataset,
        batch_size: int,
        drop_last: bool = False,
        valid_label_columns: list[str] | None = None,
        generator: torch.Generator | None = None,
        seed: int = 0,
        *,
        clusters: QueryClusters,
        pairs: BalancedMarginSampler | None = None,
        world_size: int | None = None,
    ) -> None:
        super().__init__(
            dataset,
            batch_size=batch_size,
            drop_last=drop_last,
            valid_label_columns=valid_label_columns,
            generator=generator,
            seed=seed,
        )
        self.pairs = pairs
        self.world_size = world_size if world_size is not None else _world_size()
        if self.world_size < 1:
            raise ValueError(f"world_size must be >= 1, got {self.world_size}.")
        self.clusters = self._aligned_clusters(dataset, clusters)
        self._members = self.clusters.members()
        self._check_sizes()
        self._check_same_on_all_ranks()

    @classmethod
    def factory(
        cls,
        clusters: QueryClusters,
        pairs: BalancedMarginSampler | None = None,
        world_size: int | None = None,
    ) -> Callable[..., DefaultBatchSampler]:
        """A callable for ``SentenceTransformerTrainingArguments(batch_sampler=...)``.

        The Trainer builds the sampler with the dataset, batch size, ``drop_last`` and seed from the training
        arguments. It also builds one for evaluation datasets; a dataset whose length does not match the training
        data gets a plain sequential sampler instead.
        """
        return _TopicAwareFactory(cls, clusters, pairs, world_size)

    # ------------------------------------------------------------------------------------------- setup

    def _aligned_clusters(self, dataset, clusters: QueryClusters) -> QueryClusters:
        if self.pairs is not None:
            if self.pairs.num_rows != len(dataset):
                raise ValueError(
                    f"The pair sampler describes {self.pairs.num_rows} rows but the dataset has {len(dataset)}; "
                    "build both from the same MarginPairs."
                )
            extra = len(clusters.query_ids) - self.pairs.num_queries
            if extra > 0:
                logger.info("%d clustered queries have no pair rows (e.g. no negatives) and are left out.", extra)
            return clusters.subset(self.pairs.query_ids)
        if len(clusters.query_ids) != len(dataset):
            raise ValueError(
                f"The clusters cover {len(clusters.query_ids)} queries but the dataset has {len(dataset)} rows; "
                "without a pair sampler, row i must be query clusters.query_ids[i]."
            )
        return clusters

    def _check_sizes(self) -> None:
        total = len(self.clusters.labels)
        if total < self.batch_size:
            if self.drop_last or self.world_size > 1:
                reason = "drop_last is set" if self.drop_last else f"{self.world_size} DDP ranks need a batch each"
                raise ValueError(
                    f"{total} queries are fewer than one batch of {self.batch_size} and {reason}: "
                    "an epoch would have no usable batch."
                )
            logger.warning("Only %d queries for a batch size of %d: one short batch per epoch.", total, self.batch_size)
            self.clusters = QueryClusters(self.clusters.query_ids, np.zeros(total, dtype=np.int64))
            self._members = self.clusters.members()
            return
        before = self.clusters.num_clusters
        self.clusters = self.clusters.merge_small(self.batch_size)
        if self.clusters.num_clusters != before:
            logger.warning(
                "%d of %d clusters had fewer queries than the batch size (%d) and were merged into their nearest "
                "cluster.",
                before - self.clusters.num_clusters,
                before,
                self.batch_size,
            )
            self._members = self.clusters.members()

    def _check_same_on_all_ranks(self) -> None:
        # Disjointness relies on every rank computing the same global batch sequence.
        if self.world_size == 1 or not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return
        digest = hashlib.sha256(f"{self.clusters.fingerprint()}|{self.seed}|{self.batch_size}".encode())
        if self.pairs is not None:
            digest.update(self.pairs.row_query.tobytes() + self.pairs.row_bin.tobytes())
        gathered: list[str | None] = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(gathered, digest.hexdigest())
        if len(set(gathered)) != 1:
            raise RuntimeError(
                "TopicAwareBatchSampler differs across DDP ranks (clusters, pairs, seed or batch size), so ranks "
                "would not get disjoint batches. Compute the clusters once (e.g. on the main process), save them "
                "with QueryClusters.save and load the file on every rank."
            )

    # ------------------------------------------------------------------------------------------- epochs

    def _rng(self, salt: int = 0) -> np.random.Generator:
        return np.random.default_rng([int(self.seed), int(self.epoch), salt])

    def _query_batches(self, rng: np.random.Generator) -> list[np.ndarray]:
        """This epoch's batches as query positions (before pair selection and DDP padding)."""
        batches: list[np.ndarray] = []
        size = self.batch_size
        for members in self._members:
            shuffled = rng.permutation(members)
            full = len(shuffled) // size
            batches.extend(shuffled[: full * size].reshape(full, size))
            tail = shuffled[full * size :]
            if len(tail) and not self.drop_last:
                if len(shuffled) >= size:
                    filler = rng.choice(shuffled[: full * size], size - len(tail), replace=False)
                    tail = np.concatenate([tail, filler])
                batches.append(tail)
        order = rng.permutation(len(batches))
        batches = [batches[index] for index in order]
        return self._pad_for_world_size(batches, rng)

    def _pad_for_world_size(self, batches: list[np.ndarray], rng: np.random.Generator) -> list[np.ndarray]:
        remainder = len(batches) % self.world_size
        if remainder == 0:
            return batches
        if self.drop_last:
            return batches[: len(batches) - remainder]
        sizes = np.array([len(members) for members in self._members], dtype=np.float64)
        for _ in range(self.world_size - remainder):
            cluster = rng.choice(len(self._members), p=sizes / sizes.sum())
            batches.append(rng.choice(self._members[cluster], self.batch_size, replace=False))
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        rng = self._rng()
        for queries in self._query_batches(rng):
            rows = queries if self.pairs is None else self.pairs.sample(queries, rng)
            yield rows.tolist()

    def __len__(self) -> int:
        if len(self.clusters.labels) < self.batch_size:
            count = 1
        else:
            sizes = self.clusters.sizes()
            rounding = np.floor if self.drop_last else np.ceil
            count = int(rounding(sizes / self.batch_size).sum())
        if count % self.world_size:
            rounded = count / self.world_size
            count = (math.floor(rounded) if self.drop_last else math.ceil(rounded)) * self.world_size
        return count

    def epoch_queries(self, epoch: int | None = None) -> list[np.ndarray]:
        """The query positions of every batch of an epoch (for inspection and tests)."""
        if epoch is not None:
            self.set_epoch(epoch)
        return self._query_batches(self._rng())


@dataclass
class _TopicAwareFactory:
    """Picklable callable handed to the Trainer (training args are saved with checkpoints)."""

    sampler_class: type[TopicAwareBatchSampler]
    clusters: QueryClusters
    pairs: BalancedMarginSampler | None = None
    world_size: int | None = None

    @property
    def num_rows(self) -> int:
        return self.pairs.num_rows if self.pairs is not None else len(self.clusters.query_ids)

    def __call__(
        self,
        dataset,
        batch_size: int,
        drop_last: bool = False,
        valid_label_columns: list[str] | None = None,
        generator: torch.Generator | None = None,
        seed: int = 0,
    ) -> DefaultBatchSampler:
        if len(dataset) != self.num_rows:
            logger.info(
                "Dataset of %d rows is not the %d-row training set (an evaluation set?): sequential batches.",
                len(dataset),
                self.num_rows,
            )
            return DefaultBatchSampler(
                SequentialSampler(dataset), batch_size=batch_size, drop_last=drop_last, seed=seed
            )
        return self.sampler_class(
            dataset,
            batch_size=batch_size,
            drop_last=drop_last,
            valid_label_columns=valid_label_columns,
            generator=generator,
            seed=seed,
            clusters=self.clusters,
            pairs=self.pairs,
            world_size=self.world_size,
        )
