import numpy as np
import pytest
import torch
from datasets import Dataset
from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments
from sentence_transformers.sentence_transformer.data_collator import SentenceTransformerDataCollator
from sentence_transformers.sentence_transformer.losses import MarginMSELoss
from torch import nn

from asym_st import QueryTowerConfig, build_asymmetric_model, tower_modules
from asym_st.losses import DualTeacherMarginMSELoss
from asym_st.sampling import QueryClusters, TopicAwareBatchSampler, build_margin_pairs

ROUTES = {"query": "query", "positive": "document", "negative": "document"}

# ----------------------------------------------------------------------------------------------- hand example


class _Table(nn.Module):
    """Embedding lookup: a text is its row number (input_ids[:, 0])."""

    def __init__(self, rows):
        super().__init__()
        self.weight = nn.Parameter(torch.tensor(rows, dtype=torch.float32))

    def forward(self, features):
        return dict(features, sentence_embedding=self.weight[features["input_ids"][:, 0]])


class _TableModel(nn.Sequential):
    tokenizer = object()  # one shared "vocabulary": no re-tokenisation
    max_seq_length = 8

    @property
    def device(self):
        return torch.device("cpu")

    def similarity(self, a, b):
        return a @ b.T


def _ids(*rows):
    return {"input_ids": torch.tensor([[r] for r in rows]), "attention_mask": torch.ones(len(rows), 1)}


# Rows: q1, q2, p1, p2, n1, n2
STUDENT = [[1, 0], [0, 1], [2, 1], [1, 3], [0, 1], [1, 0]]
TEACHER = [[1, 1], [1, -1], [1, 0], [0, 1], [1, 1], [-1, 0]]
FEATURES = [_ids(0, 1), _ids(2, 3), _ids(4, 5)]  # query, positive, negative columns
LABELS = torch.tensor([1.0, 2.0])  # the pairwise teacher's margins


def test_matches_the_hand_computed_example():
    # Student dot scores: q1·(p1, p2, n1, n2) = (2, 1, 0, 1); q2·(p1, p2, n1, n2) = (1, 3, 1, 0).
    # L_pair: margins (2 - 0, 3 - 0) vs labels (1, 2): ((2-1)^2 + (3-2)^2) / 2 = 1.
    # In-batch negatives of q1: p2, n2 -> student margins (2-1, 2-1) = (1, 1); of q2: p1, n1 -> (3-1, 3-1) = (2, 2).
    # Teacher dot scores: q1·(p1, p2, n2) = (1, 1, -1) -> margins (0, 2); q2·(p2, p1, n1) = (-1, 1, 0) -> (-2, -1).
    # L_inbatch = ((1-0)^2 + (1-2)^2 + (2+2)^2 + (2+1)^2) / 4 = 27/4; weighted by 0.75: 5.0625.
    student, teacher = _TableModel(_Table(STUDENT)), _TableModel(_Table(TEACHER))
    loss = DualTeacherMarginMSELoss(student, inbatch_teacher=teacher, alpha=0.75)
    parts = loss([dict(f) for f in FEATURES], LABELS)
    assert set(parts) == {"pair_margin_mse", "inbatch_margin_mse"}
    assert parts["pair_margin_mse"].item() == pytest.approx(1.0)
    assert parts["inbatch_margin_mse"].item() == pytest.approx(0.75 * 27 / 4)
    total = sum(parts.values())
    total.backward()
    assert student[0].weight.grad.abs().sum() > 0
    assert teacher[0].weight.grad is None  # the live teacher is frozen


def test_without_teacher_it_is_sentence_transformers_margin_mse():
    student = _TableModel(_Table(STUDENT))
    parts = DualTeacherMarginMSELoss(student, inbatch_teacher=None)([dict(f) for f in FEATURES], LABELS)
    reference = MarginMSELoss(student)([dict(f) for f in FEATURES], LABELS)
    assert list(parts) == ["pair_margin_mse"]
    assert parts["pair_margin_mse"].item() == pytest.approx(reference.item())
    zero_alpha = DualTeacherMarginMSELoss(student, _TableModel(_Table(TEACHER)), alpha=0.0)
    assert list(zero_alpha([dict(f) for f in FEATURES], LABELS)) == ["pair_margin_mse"]


def test_a_single_row_has_no_inbatch_negatives():
    student, teacher = _TableModel(_Table(STUDENT)), _TableModel(_Table(TEACHER))
    parts = DualTeacherMarginMSELoss(student, teacher)([_ids(0), _ids(2), _ids(4)], LABELS[:1])
    assert parts["inbatch_margin_mse"].item() == 0.0


def test_bad_arguments():
    student = _TableModel(_Table(STUDENT))
    with pytest.raises(ValueError, match="alpha must be >= 0"):
        DualTeacherMarginMSELoss(student, alpha=-1)
    with pytest.raises(ValueError, match="teacher_document_embeddings"):
        DualTeacherMarginMSELoss(student, teacher_document_embeddings="cache")
    with pytest.raises(ValueError, match="needs \\(query, positive, negative"):
        DualTeacherMarginMSELoss(student)([_ids(0), _ids(2)], LABELS)


# ----------------------------------------------------------------------------------------------- real towers

TRIPLETS = {
    "query": ["capital of france", "cat and dog", "protein cell", "covid vaccine"],
    "positive": ["paris is the capital city", "the dog and the cat", "a cell protein", "vaccine study result"],
    "negative": ["the dense index", "paris france", "gene study", "the cat"],
    "label": [0.4, 0.3, 0.2, 0.1],
}


def _features(model, routes=ROUTES):
    collator = SentenceTransformerDataCollator(preprocess_fn=model.preprocess, router_mapping=routes)
    rows = [dict(zip(TRIPLETS, values, strict=True)) for values in zip(*TRIPLETS.values(), strict=True)]
    batch = collator(rows)
    features = []
    for column in ("query", "positive", "negative"):
        prefix = f"{column}_"
        features.append({k[len(prefix) :]: v for k, v in batch.items() if k.startswith(prefix)})
    return features, batch["label"]


def test_asymmetric_student_with_router_mapping(tiny_teacher_path):
    teacher = SentenceTransformer(str(tiny_teacher_path))
    student = build_asymmetric_model(tiny_teacher_path, QueryTowerConfig(layers=[0]))
    student.eval()
    loss = DualTeacherMarginMSELoss(student, inbatch_teacher=teacher)
    assert loss._retokenize == {"query": False, "document": False}
    features, labels = _features(student)
    parts = loss(features, labels)
    # the pair term is Margin-MSE of the query tower against the labels, scored by hand here
    q = torch.tensor(student.encode_query(TRIPLETS["query"]))
    p = torch.tensor(student.encode_document(TRIPLETS["positive"]))
    n = torch.tensor(student.encode_document(TRIPLETS["negative"]))
    margins = (q * p).sum(-1) - (q * n).sum(-1)
    assert parts["pair_margin_mse"].item() == pytest.approx(((margins - labels) ** 2).mean().item(), rel=1e-4)
    # reusing the frozen document tower's embeddings as the teacher's gives the same in-batch term
    reuse = DualTeacherMarginMSELoss(student, inbatch_teacher=teacher, teacher_document_embeddings="student")
    again = reuse(_features(student)[0], labels)
    assert again["inbatch_margin_mse"].item() == pytest.approx(parts["inbatch_margin_mse"].item(), rel=1e-4)
    # without router_mapping the query column would go to the document tower: refused
    with pytest.raises(ValueError, match="router_mapping"):
        loss(_features(student, routes={})[0], labels)


def test_student_embeddings_need_a_frozen_document_tower(tiny_teacher_path):
    teacher = SentenceTransformer(str(tiny_teacher_path))
    both = build_asymmetric_model(tiny_teacher_path, freeze_document_tower=False)
    with pytest.raises(ValueError, match="trainable"):
        DualTeacherMarginMSELoss(both, inbatch_teacher=teacher, teacher_document_embeddings="student")


def test_teacher_with_another_vocabulary_gets_retokenised_text(tiny_teacher_path, tiny_cased_path):
    cased_teacher = SentenceTransformer(str(tiny_cased_path))
    student = build_asymmetric_model(tiny_teacher_path, QueryTowerConfig(layers=[0]))
    loss = DualTeacherMarginMSELoss(student, inbatch_teacher=cased_teacher)
    assert loss._retokenize == {"query": True, "document": True}
    features, labels = _features(student)
    inputs = loss._teacher_inputs(features[0], "query")
    expected = cased_teacher.preprocess(TRIPLETS["query"])
    assert torch.equal(inputs["input_ids"], expected["input_ids"])
    parts = loss(features, labels)
    assert torch.isfinite(parts["inbatch_margin_mse"])


def test_trains_with_topic_aware_balanced_batches_and_logs_both_terms(tiny_teacher_path, tmp_path):
    teacher = SentenceTransformer(str(tiny_teacher_path))
    student = build_asymmetric_model(tiny_teacher_path, QueryTowerConfig(layers=[0, 3]))
    words = ["cat", "dog", "paris", "france", "protein", "cell", "gene", "covid", "vaccine", "study", "index", "model"]
    queries = {f"q{i}": f"{words[i]} {words[(i + 3) % 12]}" for i in range(12)}
    corpus = {f"d{i}": f"the {words[i % 12]} and {words[(i * 5) % 12]} result" for i in range(24)}
    rng = np.random.default_rng(0)
    scored = Dataset.from_dict(
        {
            "query_id": list(queries),
            "positive_ids": [[f"d{i}"] for i in range(12)],
            "candidate_ids": [[f"d{j}" for j in rng.choice(range(12, 24), 4, replace=False)] for _ in range(12)],
            "positive_scores": [[5.0]] * 12,
            "candidate_scores": [rng.uniform(-2, 4, 4).tolist() for _ in range(12)],
        }
    )
    pairs = build_margin_pairs(scored)
    clusters = QueryClusters.from_labels([i % 3 for i in range(12)], list(queries))
    args = SentenceTransformerTrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        num_train_epochs=1,
        logging_steps=1,
        learning_rate=1e-3,
        batch_sampler=TopicAwareBatchSampler.factory(clusters, pairs=pairs.sampler(num_bins=10)),
        router_mapping=ROUTES,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
    )
    loss = DualTeacherMarginMSELoss(student, inbatch_teacher=teacher, alpha=0.75)
    before = {
        route: [p.detach().clone() for m in tower_modules(student, route) for p in m.parameters()]
        for route in ROUTES.values()
    }
    trainer = SentenceTransformerTrainer(
        model=student, args=args, train_dataset=pairs.with_texts(queries, corpus), loss=loss
    )
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logged) == 3  # 3 clusters of 4 queries, one batch each
    for entry in logged:  # both terms are logged, and they add up to the loss
        assert entry["pair_margin_mse"] > 0 and entry["inbatch_margin_mse"] >= 0
        assert entry["loss"] == pytest.approx(entry["pair_margin_mse"] + entry["inbatch_margin_mse"], abs=2e-3)
    assert any(entry["inbatch_margin_mse"] > 0 for entry in logged)
    after = {route: [p for m in tower_modules(student, route) for p in m.parameters()] for route in ROUTES.values()}
    assert any(not torch.equal(a, b) for a, b in zip(before["query"], after["query"], strict=True))
    assert all(torch.equal(a, b) for a, b in zip(before["document"], after["document"], strict=True))
