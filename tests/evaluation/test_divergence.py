import math

import numpy as np
import pytest

from asym_st import QueryTowerConfig, build_asymmetric_model
from asym_st.evaluation.divergence import DimensionMismatchError, knn_kl_divergence, tower_divergence
from asym_st.modeling.light_encoders import LightEncoderConfig, build_light_asymmetric_model
from tests.tiny_models import _WORDS


def gaussian_kl(mean0, cov0, mean1, cov1) -> float:
    """Closed-form KL(N(mean0, cov0) || N(mean1, cov1))."""
    inverse = np.linalg.inv(cov1)
    delta = mean1 - mean0
    d = len(mean0)
    return 0.5 * (
        np.trace(inverse @ cov0) + delta @ inverse @ delta - d + math.log(np.linalg.det(cov1) / np.linalg.det(cov0))
    )


@pytest.mark.parametrize(
    ("shift", "scale"),
    [(0.0, 1.0), (1.0, 1.0), (2.0, 1.0), (0.0, 2.0)],
)
def test_estimate_matches_closed_form_for_gaussians(shift, scale):
    rng = np.random.default_rng(0)
    d, n = 2, 2000
    mean1 = np.array([shift, 0.0])
    cov1 = np.eye(d) * scale**2
    p = rng.normal(size=(n, d))
    q = rng.normal(size=(n, d)) * scale + mean1
    expected = gaussian_kl(np.zeros(d), np.eye(d), mean1, cov1)
    estimate = knn_kl_divergence(p, q)
    assert estimate == pytest.approx(expected, abs=0.12 + 0.1 * expected), (estimate, expected)


def test_higher_k_and_higher_dimension_stay_consistent():
    rng = np.random.default_rng(1)
    d, n = 4, 2000
    mean1 = np.full(d, 0.5)  # KL = |mean|² / 2 = 0.5
    p, q = rng.normal(size=(n, d)), rng.normal(size=(n, d)) + mean1
    assert knn_kl_divergence(p, q, k=3) == pytest.approx(0.5, abs=0.15)
    # It is a divergence of P from Q: the estimate grows with the shift.
    estimates = [knn_kl_divergence(p, rng.normal(size=(n, d)) + s) for s in (0.0, 0.5, 1.0)]
    assert estimates == sorted(estimates)


def test_width_mismatch_explains_the_projection():
    with pytest.raises(DimensionMismatchError, match=r"different widths \(8 vs 4\).*add_projection=True"):
        knn_kl_divergence(np.zeros((10, 8)), np.zeros((10, 4)))


def test_duplicates_are_dropped_and_a_constant_sample_is_refused():
    rng = np.random.default_rng(2)
    p = rng.normal(size=(300, 2))
    q = rng.normal(size=(300, 2))
    with_duplicates = np.concatenate([p, p[:50]])
    assert math.isfinite(knn_kl_divergence(with_duplicates, q))
    assert knn_kl_divergence(with_duplicates, q) == pytest.approx(knn_kl_divergence(p, q))
    with pytest.raises(ValueError, match="distinct points of P.*collapsed tower"):
        knn_kl_divergence(np.ones((50, 3)), q[:, :1].repeat(3, axis=1))
    with pytest.raises(ValueError, match="NaN"):
        knn_kl_divergence(np.full((5, 2), np.nan), q)


def _texts(count: int) -> list[str]:
    rng = np.random.default_rng(3)
    return [" ".join(rng.choice(_WORDS, size=6)) for _ in range(count)]


def test_tower_divergence_is_the_noise_floor_for_identical_towers(tiny_teacher_path):
    # Keeping every layer makes the query tower compute exactly what the document tower computes.
    same = build_asymmetric_model(tiny_teacher_path, QueryTowerConfig(layers=[0, 1, 2, 3]))
    texts = _texts(120)
    result = tower_divergence(same, texts)
    assert result.kl_divergence == pytest.approx(result.noise_floor, abs=1e-6)
    assert result.num_texts == 120 and result.dimension == 32

    unrelated = build_light_asymmetric_model(tiny_teacher_path, LightEncoderConfig(kind="static"))
    far = tower_divergence(unrelated, texts)
    assert far.kl_divergence > far.noise_floor + 5
    # Precomputed document embeddings give the same answer as encoding them.
    precomputed = tower_divergence(unrelated, texts, document_embeddings=unrelated.encode_document(texts))
    assert precomputed.kl_divergence == pytest.approx(far.kl_divergence, rel=1e-5)
    with pytest.raises(ValueError, match="at least 4"):
        tower_divergence(unrelated, texts[:3])
