"""How far apart two embedding distributions are: a k-nearest-neighbour estimate of the KL divergence.

DAFT (Leonhardt et al., 2022) stops its alignment stage when the divergence between the document tower's and the
query tower's embedding distributions stops decreasing on held-out texts. The paper's code estimates it with the
1-nearest-neighbour estimator of Pérez-Cruz (2008) / Wang, Kulkarni & Verdú (2009). For samples
``x_1..x_n ~ P`` and ``y_1..y_m ~ Q`` in ``R^d``::

    D(P || Q) ≈ d/n · Σ_i log(ν_k(i) / ρ_k(i)) + log(m / (n - 1))

where ``ρ_k(i)`` is the distance from ``x_i`` to its k-th nearest neighbour among the other x's and ``ν_k(i)`` the
distance from ``x_i`` to its k-th nearest neighbour among the y's. It is consistent as n, m → ∞ for independent
samples with continuous densities.

Two things differ from the paper's code, on purpose:

* **Independent samples.** The paper feeds the same texts to both towers. Those samples are paired, not
  independent: the closer the towers get, the closer each ``x_i`` is to its own ``y_i``, and the estimate runs to
  −∞ instead of 0. :func:`tower_divergence` therefore encodes two disjoint halves of the held-out texts, one per
  tower, and also reports the document tower against itself on the two halves (the estimator's noise floor).
* **Exact search.** Neighbours come from faiss' exact L2 index (the paper used an approximate k-d tree query with
  ``eps=0.01``), and exact duplicate points are removed first, since a zero ``ρ`` makes the estimate infinite.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import faiss
import numpy as np
from sentence_transformers import SentenceTransformer

__all__ = ["knn_kl_divergence", "tower_divergence", "TowerDivergence", "DimensionMismatchError"]


class DimensionMismatchError(ValueError):
    """The two samples live in spaces of different widths (a projection is missing)."""


def _as_matrix(sample, name: str) -> np.ndarray:
    matrix = np.asarray(sample, dtype=np.float32)
    if matrix.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (points × dimensions), got shape {matrix.shape}.")
    if not np.isfinite(matrix).all():
        raise ValueError(f"{name} contains NaN or infinite values.")
    return np.ascontiguousarray(matrix)


def _kth_neighbour_distances(points: np.ndarray, queries: np.ndarray, k: int, exclude_self: bool) -> np.ndarray:
    """Exact Euclidean distance from every query to its k-th nearest point (optionally skipping the query itself)."""
    index = faiss.IndexFlatL2(points.shape[1])
    index.add(points)
    extra = 1 if exclude_self else 0
    squared, ids = index.search(queries, k + extra)
    if exclude_self:
        # Drop the query's own entry (its id), or the farthest hit if rounding put another point first.
        own = ids == np.arange(len(queries))[:, None]
        missing = ~own.any(axis=1)
        own[missing, -1] = True
        squared = squared[~own].reshape(len(queries), k)
    # faiss computes |a|² + |b|² - 2ab, which can dip below zero by rounding.
    return np.sqrt(np.maximum(squared[:, k - 1], 0.0)).astype(np.float64)


def knn_kl_divergence(p_sample, q_sample, k: int = 1) -> float:
    """Estimate ``KL(P || Q)`` from samples of P and Q (k-NN estimator of Wang, Kulkarni & Verdú, 2009).

    Args:
        p_sample: ``(n, d)`` points drawn from P (in DAFT: document-tower embeddings).
        q_sample: ``(m, d)`` points drawn from Q (in DAFT: query-tower embeddings), independent of ``p_sample``.
        k: which neighbour to use (1 = the estimator in the DAFT paper's code).

    Returns:
        The estimate in nats. It is close to 0 for equal distributions (and can be slightly negative: it is an
        unbiased-in-the-limit estimate, not a bound) and grows as Q moves away from P.

    Raises:
        DimensionMismatchError: the samples have different widths (e.g. a query tower without a projection).
        ValueError: too few distinct points, or NaN / infinite values.

    Example::

        rng = np.random.default_rng(0)
        p = rng.normal(size=(2000, 2))
        q = rng.normal(loc=[1.0, 0.0], size=(2000, 2))
        knn_kl_divergence(p, q)  # ≈ 0.5 = |μ|² / 2
    """
    p = _as_matrix(p_sample, "p_sample")
    q = _as_matrix(q_sample, "q_sample")
    if p.shape[1] != q.shape[1]:
        raise DimensionMismatchError(
            f"The samples have different widths ({p.shape[1]} vs {q.shape[1]}), so their distributions cannot be "
            "compared. Give the narrower tower a projection: assemble_asymmetric_model(..., add_projection=True), "
            "or append Dense(in_features, out_features, activation_function=nn.Identity()) to its modules."
        )
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}.")
    p = np.unique(p, axis=0)  # duplicates give ρ = 0 and an infinite estimate
    if len(p) < k + 1 or len(q) < k:
        raise ValueError(
            f"Need at least {k + 1} distinct points of P and {k} of Q for the {k}-NN estimate; got {len(p)} distinct "
            f"points of P and {len(q)} of Q (a collapsed tower maps every text to the same point)."
        )
    n, m, d = len(p), len(q), p.shape[1]
    rho = _kth_neighbour_distances(p, p, k, exclude_self=True)
    nu = _kth_neighbour_distances(q, p, k, exclude_self=False)
    # ν = 0 means a Q point coincides with a P point; floor it so that the estimate stays finite.
    tiny = np.finfo(np.float32).tiny
    return float(d / n * np.sum(np.log(np.maximum(nu, tiny) / rho)) + math.log(m / (n - 1)))


@dataclass
class TowerDivergence:
    """The divergence between an asymmetric model's towers on held-out texts (see :func:`tower_divergence`)."""

    kl_divergence: float
    noise_floor: float
    num_texts: int
    dimension: int
    k: int

    def to_dict(self) -> dict:
        return asdict(self)


def _split_halves(count: int, seed: int) -> tuple[list[int], list[int]]:
    order = list(range(count))
    random.Random(seed).shuffle(order)
    half = count // 2
    return order[:half], order[half : 2 * half]


def tower_divergence(
    model: SentenceTransformer,
    texts: Sequence[str],
    document_embeddings: np.ndarray | None = None,
    k: int = 1,
    batch_size: int = 64,
    seed: int = 0,
) -> TowerDivergence:
    """``KL(document tower || query tower)`` over the distribution of ``texts`` (DAFT's alignment criterion).

    The texts are split into two disjoint halves (seeded): the document tower encodes one half and the query tower
    the other, so the two samples are independent (see the module docstring). ``noise_floor`` is the same estimate
    with the document tower on both halves: what the estimator reports for two perfectly aligned towers.

    Args:
        model: an asymmetric model (``encode_query`` = query tower, ``encode_document`` = document tower).
        texts: held-out texts, never trained on (at least 4 distinct ones; hundreds for a stable estimate).
        document_embeddings: the document tower's embeddings of ``texts``, if already computed (e.g. cached).
        k: the neighbour rank of the estimator.
        batch_size: encoding batch size.
        seed: the split into halves.
    """
    if len(texts) < 4:
        raise ValueError(f"tower_divergence needs at least 4 held-out texts, got {len(texts)}.")
    first, second = _split_halves(len(texts), seed)
    if document_embeddings is None:
        document_embeddings = model.encode_document(list(texts), batch_size=batch_size, convert_to_numpy=True)
    document_embeddings = np.asarray(document_embeddings)
    query_embeddings = model.encode_query([texts[i] for i in second], batch_size=batch_size, convert_to_numpy=True)
    p = document_embeddings[first]
    divergence = knn_kl_divergence(p, query_embeddings, k=k)
    floor = knn_kl_divergence(p, document_embeddings[second], k=k)
    return TowerDivergence(
        kl_divergence=divergence, noise_floor=floor, num_texts=2 * len(first), dimension=p.shape[1], k=k
    )
