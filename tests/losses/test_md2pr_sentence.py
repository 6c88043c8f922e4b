import math

import pytest
import torch
from sentence_transformers.sentence_transformer.losses import DistillKLDivLoss

from asym_st.losses import MD2PRSentenceLoss
from asym_st.sampling import DynamicFalseNegativeFilter, FalseNegativeFilterConfig
from tests.losses.test_dual_teacher_margin_mse import _ids, _Table, _TableModel

# Rows: q1, q2, then candidates c1..c6. Dot scores: q1·(c1, c2, c3) = (2, 0, 1); q2·(c4, c5, c6) = (1, 3, 0).
EMBEDDINGS = [[1, 0], [0, 1], [2, 0], [0, 5], [1, 1], [4, 1], [7, 3], [-2, 0]]
FEATURES = [_ids(0, 1), _ids(2, 5), _ids(3, 6), _ids(4, 7)]  # query, positive, negative_1, negative_2
TEACHER = torch.tensor([[3.0, 0.0, 2.5], [0.5, 2.0, 1.0]], dtype=torch.float64)


def _model():
    return _TableModel(_Table(EMBEDDINGS))


def _kl(teacher: list[float], student: list[float], tau_s: float = 1.0, tau_t: float = 1.0) -> float:
    """KL(softmax(t / tau_t) || softmax(s / tau_s)) by hand."""
    zt = sum(math.exp(t / tau_t) for t in teacher)
    zs = sum(math.exp(s / tau_s) for s in student)
    pt = [math.exp(t / tau_t) / zt for t in teacher]
    ps = [math.exp(s / tau_s) / zs for s in student]
    return sum(p * (math.log(p) - math.log(q)) for p, q in zip(pt, ps, strict=True))


def test_matches_the_hand_computation_and_distill_kl_div():
    loss = MD2PRSentenceLoss(_model(), temperature=2.0, teacher_temperature=4.0, weight=3.0)
    parts = loss([dict(f) for f in FEATURES], TEACHER)
    assert list(parts) == ["sentence_kl"]
    by_hand = (_kl([3, 0, 2.5], [2, 0, 1], 2.0, 4.0) + _kl([0.5, 2, 1], [1, 3, 0], 2.0, 4.0)) / 2 * 2.0**2
    assert parts["sentence_kl"].item() == pytest.approx(3.0 * by_hand, rel=1e-5)
    reference = DistillKLDivLoss(_model(), temperature=2.0, teacher_temperature=4.0)
    assert parts["sentence_kl"].item() == pytest.approx(3.0 * reference([dict(f) for f in FEATURES], TEACHER).item())


def test_empty_slots_and_filtered_negatives_leave_both_softmaxes():
    model = _model()
    labels = TEACHER.clone()
    labels[1, 2] = float("nan")  # q2 has only one mined negative
    parts = MD2PRSentenceLoss(model)([dict(f) for f in FEATURES], labels)
    by_hand = (_kl([3, 0, 2.5], [2, 0, 1]) + _kl([0.5, 2], [1, 3])) / 2
    assert by_hand > 0.01 and parts["sentence_kl"].item() == pytest.approx(by_hand, rel=1e-5)
    parts["sentence_kl"].backward()
    assert torch.isfinite(model[0].weight.grad).all()
    assert model[0].weight.grad[7].abs().sum() == 0  # the empty slot's candidate gets no gradient

    # The filter: threshold = the 0.25 quantile of the pool (1, 2, 3) = 1.5: q1's c3 (2.5) and q2's c5 (2.0) are
    # dropped, c2 (0.0) and c6 (1.0) stay.
    keep = DynamicFalseNegativeFilter(FalseNegativeFilterConfig(quantile=0.25), positive_scores=[1.0, 2.0, 3.0])
    filtered = MD2PRSentenceLoss(_model(), candidate_filter=keep)([dict(f) for f in FEATURES], TEACHER)
    by_hand = (_kl([3, 0], [2, 0]) + _kl([0.5, 1], [1, 0])) / 2
    assert filtered["sentence_kl"].item() == pytest.approx(by_hand, rel=1e-5)
    assert (keep.threshold, keep.seen, keep.dropped, keep.current.rows_without_negatives) == (1.5, 4, 2, 0)


def test_the_positive_is_never_dropped_and_bad_labels_are_named():
    drop_all = lambda positives, negatives: torch.zeros_like(negatives, dtype=torch.bool)  # noqa: E731
    parts = MD2PRSentenceLoss(_model(), candidate_filter=drop_all)([dict(f) for f in FEATURES], TEACHER)
    assert parts["sentence_kl"].item() == pytest.approx(0.0)  # one candidate left: p_t = p_s = 1
    bad = TEACHER.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="finite teacher score for its positive"):
        MD2PRSentenceLoss(_model())([dict(f) for f in FEATURES], bad)
    with pytest.raises(ValueError, match="weight must be >= 0"):
        MD2PRSentenceLoss(_model(), weight=-1.0)
    with pytest.raises(ValueError, match="at least one candidate column"):
        MD2PRSentenceLoss(_model())([dict(FEATURES[0])], TEACHER[:, :1])


def test_config_dict_names_the_additions():
    config = MD2PRSentenceLoss(_model(), teacher_temperature=20.0, weight=0.5).get_config_dict()
    assert config["teacher_temperature"] == 20.0 and config["weight"] == 0.5
    assert config["false_negative_filter"] is False and config["frozen_documents"] is False
