import math

import pytest
import torch
from sentence_transformers import SentenceTransformer

from asym_st import build_asymmetric_model, extract_tower
from asym_st.losses import AsymmetricEmbedDistillLoss, ProjectionShapeError
from asym_st.losses.embedding_alignment import EmbeddingAlignmentLoss, RouteMappingError

QUERIES = ["what is a dense retriever", "capital of france", "how do cells make protein"]


@pytest.fixture(scope="module")
def tiny(tiny_teacher_path):
    return SentenceTransformer(str(tiny_teacher_path))


def _t(rows):
    return torch.tensor(rows, dtype=torch.float32)


# ------------------------------------------------------------------------------------------- embedding matching


@pytest.mark.parametrize(
    ("distance", "expected"),
    [
        # student [1, 0] vs teacher [0.6, 0.8]: squared error 0.16 + 0.64 = 0.8; student [0, 2] vs [0, 1]: 1.
        ("mse", (0.8 + 1.0) / 4),  # mean over the 4 coordinates
        ("l2", (math.sqrt(0.8) + 1.0) / 2),  # mean Euclidean distance over the 2 queries
        ("cosine", ((1 - 0.6) + (1 - 1.0)) / 2),  # mean cosine distance
    ],
)
def test_query_embedding_matching_matches_hand_computed(tiny, distance, expected):
    loss = AsymmetricEmbedDistillLoss(tiny, query_weight=2.0, score_weight=0.0, distance_metric=distance)
    terms = loss.compute_components([_t([[1, 0], [0, 2]])], _t([[0.6, 0.8], [0, 1]]))
    assert set(terms) == {"query_embedding"}
    assert terms["query_embedding"].item() == pytest.approx(2.0 * expected, rel=1e-6)


# Teacher query [0.6, 0.8]; teacher candidates d1 = [1, 0], d2 = [0, 1] → teacher cosine scores [0.6, 0.8].
TEACHER = _t([[[0.6, 0.8], [1, 0], [0, 1]]])
# Student query [1, 0] scored against the frozen teacher candidates → student scores [1, 0].
STUDENT_QUERY = _t([[1, 0]])


def test_score_matching_margin_mse_matches_hand_computed(tiny):
    loss = AsymmetricEmbedDistillLoss(tiny, query_weight=0.0, score_weight=1.0, score_loss="margin_mse")
    terms = loss.compute_components([STUDENT_QUERY], TEACHER)
    # student margin s(q, d1) - s(q, d2) = 1 - 0 = 1; teacher margin 0.6 - 0.8 = -0.2; squared error 1.44
    assert terms["score"].item() == pytest.approx(1.44, rel=1e-6)


def test_score_matching_kl_matches_hand_computed(tiny):
    loss = AsymmetricEmbedDistillLoss(tiny, query_weight=0.0, score_weight=0.5, score_loss="kl", temperature=0.1)
    terms = loss.compute_components([STUDENT_QUERY], TEACHER)
    teacher_logits, student_logits = [6.0, 8.0], [10.0, 0.0]  # scores / temperature
    p = [math.exp(x) / sum(math.exp(y) for y in teacher_logits) for x in teacher_logits]
    log_q = [x - math.log(sum(math.exp(y) for y in student_logits)) for x in student_logits]
    kl = sum(pk * (math.log(pk) - lq) for pk, lq in zip(p, log_q, strict=True))  # ≈ 8.13
    assert terms["score"].item() == pytest.approx(0.5 * kl, rel=1e-5)
    # The same rows twice: batchmean keeps the value (no dependence on the batch size).
    doubled = loss.compute_components([STUDENT_QUERY.repeat(2, 1)], TEACHER.repeat(2, 1, 1))
    assert doubled["score"].item() == pytest.approx(0.5 * kl, rel=1e-5)


def test_trained_document_tower_terms_match_hand_computed(tiny):
    loss = AsymmetricEmbedDistillLoss(
        tiny, query_weight=0.5, document_weight=2.0, score_weight=3.0, score_loss="margin_mse", distance_metric="mse"
    )
    # The student's document tower swapped the two candidates: d1 = [0, 1], d2 = [1, 0].
    terms = loss.compute_components([STUDENT_QUERY, _t([[0, 1]]), _t([[1, 0]])], TEACHER)
    assert terms["query_embedding"].item() == pytest.approx(0.5 * (0.16 + 0.64) / 2, rel=1e-6)
    # [0, 1] vs [1, 0]: mean squared error 1, for each of the two documents
    assert terms["document_embedding"].item() == pytest.approx(2.0 * 1.0, rel=1e-6)
    # scores now use the student's documents: student [0, 1] → margin -1; teacher margin -0.2 → 0.64
    assert terms["score"].item() == pytest.approx(3.0 * 0.64, rel=1e-6)


# ------------------------------------------------------------------------------------------- projection


def _projection_loss(tiny, **kwargs):
    loss = AsymmetricEmbedDistillLoss(tiny, projection_dim=3, distance_metric="mse", **kwargs)
    with torch.no_grad():  # maps the student's first two coordinates onto the teacher's, third one 0
        loss.projection.weight.zero_()
        loss.projection.weight[0, 0] = loss.projection.weight[1, 1] = 1.0
        loss.projection.bias.copy_(_t([0.0, 0.0, 0.5]))
    return loss


def test_projection_maps_the_student_into_the_teacher_space(tiny):
    loss = _projection_loss(tiny, query_weight=1.0, score_weight=1.0, score_loss="margin_mse")
    student = torch.zeros(1, 32)
    student[0, 0] = 1.0  # projected: [1, 0, 0.5]
    teacher = _t([[[0.6, 0.8, 0.0], [1, 0, 0], [0, 1, 0]]])
    terms = loss.compute_components([student.requires_grad_()], teacher)
    assert terms["query_embedding"].item() == pytest.approx((0.16 + 0.64 + 0.25) / 3, rel=1e-6)
    # cosine of [1, 0, 0.5] with d1 and d2: 1/sqrt(1.25) and 0; teacher margin -0.2
    assert terms["score"].item() == pytest.approx((1 / math.sqrt(1.25) + 0.2) ** 2, rel=1e-5)
    sum(terms.values()).backward()
    assert loss.projection.weight.grad is not None and loss.projection.weight.grad.abs().sum() > 0
    module = loss.projection_module()
    features = {"sentence_embedding": student.detach()}
    torch.testing.assert_close(module(features)["sentence_embedding"], loss.projection(student.detach()))


def test_projection_shape_mismatches_are_named(tiny):
    loss = _projection_loss(tiny, score_weight=0.0)
    with pytest.raises(ProjectionShapeError, match=r"maps 32 → 3 .* teacher's 4-dimensional.*projection_dim=4"):
        loss.compute_components([torch.zeros(2, 32)], torch.zeros(2, 4))
    with pytest.raises(ProjectionShapeError, match=r"student's query embeddings are 16-dimensional"):
        loss.compute_components([torch.zeros(2, 16)], torch.zeros(2, 3))
    plain = AsymmetricEmbedDistillLoss(tiny, score_weight=0.0)
    with pytest.raises(ProjectionShapeError, match=r"32-dimensional but the teacher's are 48.*projection_dim=48"):
        plain.compute_components([torch.zeros(2, 32)], torch.zeros(2, 48))
    with pytest.raises(ValueError, match="without projection_dim"):
        plain.projection_module()


# ------------------------------------------------------------------------------------------- bad input


def test_label_and_weight_errors_are_clear(tiny):
    with pytest.raises(ValueError, match="All weights are 0"):
        AsymmetricEmbedDistillLoss(tiny, query_weight=0, score_weight=0)
    with pytest.raises(ValueError, match="score_loss='hinge'"):
        AsymmetricEmbedDistillLoss(tiny, score_loss="hinge")
    loss = AsymmetricEmbedDistillLoss(tiny, score_weight=1.0)
    with pytest.raises(ValueError, match=r"score matching needs the candidates' embeddings.*\(batch, 1 \+ K, dim\)"):
        loss.compute_components([STUDENT_QUERY], _t([[0.6, 0.8]]))
    with pytest.raises(ValueError, match="at least 2 candidates"):
        loss.compute_components([STUDENT_QUERY], TEACHER[:, :2])
    with pytest.raises(ValueError, match="1 document column.* 2 candidate"):
        loss.compute_components([STUDENT_QUERY, _t([[0, 1]])], TEACHER)
    with pytest.raises(ValueError, match="document_weight > 0 needs the candidates' texts"):
        AsymmetricEmbedDistillLoss(tiny, document_weight=1.0).compute_components([STUDENT_QUERY], TEACHER)


# ------------------------------------------------------------------------------------------- through the model


def test_forward_on_an_asymmetric_student(tiny_teacher_path):
    model = build_asymmetric_model(tiny_teacher_path)
    teacher = extract_tower(model, "document")
    labels = torch.tensor(teacher.encode_query(QUERIES))
    features = model.preprocess(QUERIES, task="query")

    # Query-embedding matching with MSE only is QED's embedding alignment.
    qed = EmbeddingAlignmentLoss(model)([dict(features)], labels)
    ours = AsymmetricEmbedDistillLoss(model, score_weight=0.0, distance_metric="mse")([dict(features)], labels)
    torch.testing.assert_close(ours["query_embedding"], qed)

    documents = torch.tensor(teacher.encode_document(QUERIES[::-1]))
    full = torch.stack([labels, documents, documents.roll(1, 0)], dim=1)  # (3, 1 + 2, 32)
    terms = AsymmetricEmbedDistillLoss(model)([dict(features)], full)
    assert set(terms) == {"query_embedding", "score"} and all(v.item() > 0 for v in terms.values())
    sum(terms.values()).backward()
    query_grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert query_grads and any(g is not None and g.abs().sum() > 0 for g in query_grads)

    wrong = model.preprocess(QUERIES, task="document")
    with pytest.raises(RouteMappingError, match="route 'document'.*expects the 'query' route"):
        AsymmetricEmbedDistillLoss(model)([wrong], full)
