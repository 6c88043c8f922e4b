import pytest
import torch
from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

from asym_st.losses.frozen_document_ranking import FrozenDocumentRankingLoss
from asym_st.modeling.light_encoders import LightEncoderConfig, build_light_asymmetric_model

QUERIES = ["capital of france", "covid vaccine", "protein in the cell", "dense retrieval index"]
DOCUMENTS = [
    "paris is the capital city of france",
    "the covid vaccine study",
    "a protein in the cell is a gene result",
    "dense retrieval with a query encoder and a document index",
]


@pytest.fixture(scope="module")
def model(tiny_teacher_path):
    return build_light_asymmetric_model(tiny_teacher_path, LightEncoderConfig(kind="static"))


def test_equals_mnrl_against_a_frozen_document_tower(model):
    queries = model.preprocess(QUERIES, task="query")
    documents = model.preprocess(DOCUMENTS, task="document")
    expected = MultipleNegativesRankingLoss(model, scale=20.0)([queries, documents], None)
    precomputed = model.encode_document(DOCUMENTS, convert_to_tensor=True)
    loss = FrozenDocumentRankingLoss(model, scale=20.0)
    actual = loss([model.preprocess(QUERIES, task="query")], precomputed)
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)
    actual.backward()  # gradients reach the query tower only
    assert model[0].sub_modules["query"][0].embedding.weight.grad is not None


def test_a_shared_positive_is_not_a_negative(model):
    documents = model.encode_document([DOCUMENTS[0], DOCUMENTS[0], DOCUMENTS[1]], convert_to_tensor=True)
    loss = FrozenDocumentRankingLoss(model)
    with_shared = loss([model.preprocess(QUERIES[:3], task="query")], documents)
    # Queries 0 and 1 share their positive: each sees it once (not the other's copy as a negative); query 2
    # has both copies as negatives.
    queries = torch.nn.functional.normalize(model.encode_query(QUERIES[:3], convert_to_tensor=True), dim=-1)
    scores = 20.0 * queries @ torch.nn.functional.normalize(documents, dim=-1).T
    rows = [
        torch.nn.functional.cross_entropy(scores[0, [0, 2]][None], torch.tensor([0])),
        torch.nn.functional.cross_entropy(scores[1, [1, 2]][None], torch.tensor([0])),
        torch.nn.functional.cross_entropy(scores[2][None], torch.tensor([2])),
    ]
    torch.testing.assert_close(with_shared.detach(), torch.stack(rows).mean(), atol=1e-5, rtol=1e-5)
    unmasked = torch.nn.functional.cross_entropy(scores, torch.tensor([0, 1, 2]))
    assert with_shared.item() < unmasked.item()


def test_bad_inputs_are_named(model):
    loss = FrozenDocumentRankingLoss(model)
    queries = model.preprocess(QUERIES, task="query")
    with pytest.raises(ValueError, match="one text column"):
        loss([queries, queries], torch.zeros(4, 32))
    with pytest.raises(ValueError, match="outputs 32 dimensions but the document embeddings have 8"):
        loss([queries], torch.zeros(4, 8))
    with pytest.raises(ValueError, match="'label' column"):
        loss([queries], None)


def test_gathered_negatives_make_two_ranks_equal_one_global_batch(model, monkeypatch):
    """Under DDP each rank scores its queries against every rank's positives; the mean of the two ranks' losses
    (DDP averages their gradients) is the one-process loss over the global batch."""
    import asym_st.losses.frozen_document_ranking as module

    documents = model.encode_document(DOCUMENTS, convert_to_tensor=True)
    global_loss = FrozenDocumentRankingLoss(model)([model.preprocess(QUERIES, task="query")], documents)
    loss = FrozenDocumentRankingLoss(model, gather_across_devices=True)
    monkeypatch.setattr(module, "_distributed", lambda: True)
    monkeypatch.setattr(module, "all_gather", lambda local: documents)  # both ranks' halves, in rank order
    per_rank = []
    for rank, rows in enumerate((slice(0, 2), slice(2, 4))):
        monkeypatch.setattr(torch.distributed, "get_rank", lambda rank=rank: rank)
        per_rank.append(loss([model.preprocess(QUERIES[rows], task="query")], documents[rows]))
    torch.testing.assert_close((per_rank[0] + per_rank[1]) / 2, global_loss, atol=1e-5, rtol=1e-5)
    # Without gathering each rank only sees its own half: a different (easier) loss.
    local = FrozenDocumentRankingLoss(model)([model.preprocess(QUERIES[:2], task="query")], documents[:2])
    assert not torch.allclose(local, per_rank[0])
    assert loss.get_config_dict()["gather_across_devices"] is True
