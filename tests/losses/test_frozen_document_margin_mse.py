import numpy as np
import pytest
import torch

from asym_st.losses import DualTeacherMarginMSELoss, FrozenDocumentMarginMSELoss
from tests.losses.test_dual_teacher_margin_mse import FEATURES, LABELS, STUDENT, TEACHER, _ids, _Table, _TableModel

# The dual-teacher hand example (tests/losses/test_dual_teacher_margin_mse.py) with the passages pre-encoded:
# rows q1, q2 are the queries; p1, p2, n1, n2 the passages 0..3 of the index.
DOCUMENTS = np.array(STUDENT[2:], dtype=np.float32)
TEACHER_QUERIES = np.array(TEACHER[:2], dtype=np.float32)
TEACHER_DOCUMENTS = np.array(TEACHER[2:], dtype=np.float32)
# [margin, query row, positive row, negative row]
ROWS = torch.tensor([[1.0, 0, 0, 2], [2.0, 1, 1, 3]], dtype=torch.float64)


def _loss(alpha=0.75, **overrides):
    arguments = dict(
        teacher_query_embeddings=TEACHER_QUERIES, teacher_document_embeddings=TEACHER_DOCUMENTS, alpha=alpha
    )
    return FrozenDocumentMarginMSELoss(_TableModel(_Table(STUDENT)), DOCUMENTS, **{**arguments, **overrides})


def test_matches_the_hand_computed_example():
    loss = _loss()
    parts = loss([_ids(0, 1)], ROWS)
    assert parts["pair_margin_mse"].item() == pytest.approx(1.0)  # see the dual-teacher example
    assert parts["inbatch_margin_mse"].item() == pytest.approx(0.75 * 27 / 4)
    sum(parts.values()).backward()
    assert loss.model[0].weight.grad[:2].abs().sum() > 0  # the query rows get gradients
    assert loss.model[0].weight.grad[2:].abs().sum() == 0  # the passages are the frozen index


def test_equals_the_text_loss_with_a_frozen_document_tower():
    student, teacher = _TableModel(_Table(STUDENT)), _TableModel(_Table(TEACHER))
    text_loss = DualTeacherMarginMSELoss(student, inbatch_teacher=teacher, alpha=0.5)
    expected = text_loss([dict(f) for f in FEATURES], LABELS)
    parts = _loss(alpha=0.5)([_ids(0, 1)], ROWS)
    for name in expected:
        assert parts[name].item() == pytest.approx(expected[name].item())


def test_without_a_teacher_it_is_plain_margin_mse():
    parts = _loss(teacher_query_embeddings=None, teacher_document_embeddings=None)([_ids(0, 1)], ROWS)
    assert list(parts) == ["pair_margin_mse"]
    assert list(_loss(alpha=0.0)([_ids(0, 1)], ROWS)) == ["pair_margin_mse"]
    # the in-batch teacher defaults to the index's own embeddings
    same = _loss(teacher_document_embeddings=None, teacher_query_embeddings=DOCUMENTS[:2])
    assert set(same([_ids(0, 1)], ROWS)) == {"pair_margin_mse", "inbatch_margin_mse"}


def test_a_single_row_has_no_inbatch_negatives():
    parts = _loss()([_ids(0)], ROWS[:1])
    assert parts["inbatch_margin_mse"].item() == 0.0


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="alpha must be >= 0"):
        _loss(alpha=-1)
    with pytest.raises(ValueError, match="document_embeddings must be a non-empty"):
        FrozenDocumentMarginMSELoss(_TableModel(_Table(STUDENT)), np.zeros((0, 2)))
    with pytest.raises(ValueError, match="same passages in the same order"):
        _loss(teacher_document_embeddings=TEACHER_DOCUMENTS[:3])
    with pytest.raises(ValueError, match="3-dimensional"):
        _loss(teacher_query_embeddings=np.ones((2, 3), dtype=np.float32))
    loss = _loss()
    with pytest.raises(ValueError, match="one text column"):
        loss([_ids(0, 1), _ids(2, 3)], ROWS)
    with pytest.raises(ValueError, match="batch × 4"):
        loss([_ids(0, 1)], ROWS[:, :3])
    with pytest.raises(IndexError, match="negative_index 9 is outside 0..3"):
        loss([_ids(0, 1)], torch.tensor([[1.0, 0, 0, 9], [2.0, 1, 1, 3]], dtype=torch.float64))
