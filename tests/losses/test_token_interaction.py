import math

import numpy as np
import pytest
import torch
from torch import nn

from asym_st.losses import MD2PRSentenceLoss, TokenInteractionLoss
from asym_st.losses.token_interaction import compact_tokens

PAD, CLS, SEP = 0, 1, 2
SPECIAL = {PAD, CLS, SEP}
# Token embeddings: the special tokens get large, odd vectors, so any leak through the masks changes the loss.
VOCAB = [[5.0, 5.0], [3.0, -2.0], [-4.0, 1.0], [1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]]


class _TokenTable(nn.Module):
    """Token embeddings are rows of a table; the sentence embedding is their masked mean."""

    def __init__(self, rows):
        super().__init__()
        self.weight = nn.Parameter(torch.tensor(rows))

    def forward(self, features):
        tokens = self.weight[features["input_ids"]]
        mask = features["attention_mask"].unsqueeze(-1).float()
        return dict(features, token_embeddings=tokens, sentence_embedding=(tokens * mask).sum(1) / mask.sum(1))


class _Model(nn.Sequential):
    similarity_fn_name = "dot"


def _column(rows):
    ids = torch.tensor(rows)
    return {"input_ids": ids, "attention_mask": (ids != PAD).long()}


# Row 0: query [CLS] 3 4 [SEP] [PAD], positive [CLS] 3 5 6 [SEP], negative [CLS] 5 [SEP] (no teacher matrix).
# Row 1: query [CLS] 4 [SEP] [PAD] [PAD], positive [CLS] 6 3 [SEP] [PAD], negative [CLS] 3 [SEP].
FEATURES = [
    _column([[CLS, 3, 4, SEP, PAD], [CLS, 4, SEP, PAD, PAD]]),
    _column([[CLS, 3, 5, 6, SEP], [CLS, 6, 3, SEP, PAD]]),
    _column([[CLS, 5, SEP], [CLS, 3, SEP]]),
]
# Teacher matrices, zero-padded to 3 × 4: pair 0 = (row 0, positive), 1 = (row 1, positive), 2 = (row 1, negative).
TEACHER = np.zeros((3, 3, 4), dtype=np.float16)
TEACHER[0, :2, :3] = [[0.5, 0.25, 0.25], [1 / 3, 1 / 3, 1 / 3]]
TEACHER[1, :1, :2] = [[0.8, 0.2]]
TEACHER[2, :1, :1] = [[1.0]]
QUERY_LENGTHS, PASSAGE_LENGTHS = np.array([2, 1, 1]), np.array([3, 2, 1])
ROWS = torch.tensor([[0.0, -1.0], [1.0, 2.0]], dtype=torch.float64)  # attention row of each (row, candidate)


def _row_kl(teacher: list[float], similarities: list[float], tau: float) -> float:
    """KL(teacher || softmax(similarities / tau)) by hand."""
    z = sum(math.exp(s / tau) for s in similarities)
    return sum(a * (math.log(a) - (s / tau - math.log(z))) for a, s in zip(teacher, similarities, strict=True))


def _loss(model=None, **overrides):
    model = model or _Model(_TokenTable(VOCAB))
    arguments = dict(
        teacher_attention=TEACHER,
        query_lengths=QUERY_LENGTHS,
        passage_lengths=PASSAGE_LENGTHS,
        weight=2.0,
        temperature=0.5,
        normalize_tokens=False,
        special_token_ids=SPECIAL,
    )
    return TokenInteractionLoss(model, **{**arguments, **overrides})


def _features():
    return [dict(f) for f in FEATURES]


def test_matches_the_hand_computed_example_with_padding_and_special_tokens():
    # Pair 0: query tokens 3 = (1, 0), 4 = (0, 1); passage tokens 3 = (1, 0), 5 = (-1, 0), 6 = (0, -1).
    #   similarities: row "3" = (1, -1, 0), row "4" = (0, 0, -1)
    # Pair 1: query token 4; passage tokens 6, 3: similarities (-1, 0). Pair 2: one passage token: KL 0.
    tau = 0.5
    pair0 = (_row_kl([0.5, 0.25, 0.25], [1, -1, 0], tau) + _row_kl([1 / 3, 1 / 3, 1 / 3], [0, 0, -1], tau)) / 2
    pair1 = _row_kl([0.8, 0.2], [-1, 0], tau)
    expected = 2.0 * (pair0 + pair1 + 0.0) / 3  # mean over the 3 pairs with a teacher matrix, times the weight
    model = _Model(_TokenTable(VOCAB))
    parts = _loss(model)(_features(), ROWS)
    assert list(parts) == ["word_kl"]
    assert parts["word_kl"].item() == pytest.approx(expected, rel=1e-3)  # float16 teacher
    parts["word_kl"].backward()
    grad = model[0].weight.grad
    assert grad[[PAD, CLS, SEP]].abs().sum() == 0  # special tokens and padding never enter the loss
    assert grad[[3, 4, 6]].abs().sum() > 0


def test_cosine_similarities_ignore_token_norms():
    unit = _loss(normalize_tokens=True)(_features(), ROWS)["word_kl"].item()
    scaled = _Model(_TokenTable([[3.0 * v for v in row] for row in VOCAB]))
    assert _loss(scaled, normalize_tokens=True)(_features(), ROWS)["word_kl"].item() == pytest.approx(unit, rel=1e-5)
    dot = _loss(scaled, normalize_tokens=False)(_features(), ROWS)["word_kl"].item()
    assert dot != pytest.approx(unit, rel=1e-3)


def test_shares_the_forward_pass_with_the_sentence_level_loss():
    scores = torch.tensor([[3.0, 1.0], [0.5, 2.0]], dtype=torch.float64)
    sentence = MD2PRSentenceLoss(_Model(_TokenTable(VOCAB)), weight=0.5)
    parts = _loss(sentence_loss=sentence)(_features(), torch.cat([scores, ROWS], dim=1))
    assert set(parts) == {"sentence_kl", "word_kl"}
    alone = MD2PRSentenceLoss(_Model(_TokenTable(VOCAB)), weight=0.5)(_features(), scores)
    assert parts["sentence_kl"].item() == pytest.approx(alone["sentence_kl"].item())
    assert parts["word_kl"].item() == pytest.approx(_loss()(_features(), ROWS)["word_kl"].item())


def test_no_teacher_matrix_gives_zero_and_a_connected_graph():
    none = torch.full_like(ROWS, -1.0)
    parts = _loss()(_features(), none)
    assert parts["word_kl"].item() == 0.0 and parts["word_kl"].requires_grad


def test_misaligned_tokens_and_bad_labels_are_refused():
    wrong = QUERY_LENGTHS.copy()
    wrong[1] = 2  # the stored matrix says 2 query tokens; the student has 1
    with pytest.raises(ValueError, match="built with another tokenizer, truncation length or text"):
        _loss(query_lengths=wrong)(_features(), ROWS)
    with pytest.raises(ValueError, match=r"batch × 4 \(\[teacher scores \| attention rows\]"):
        _loss()(_features(), ROWS[:, :1])
    with pytest.raises(ValueError, match="must also hold the teacher scores"):
        _loss(sentence_loss=MD2PRSentenceLoss(_Model(_TokenTable(VOCAB))))(_features(), ROWS)
    with pytest.raises(ValueError, match="N × Q × P with N lengths"):
        _loss(query_lengths=QUERY_LENGTHS[:2])


def test_compact_tokens_moves_content_first():
    tokens = torch.arange(5.0).view(1, 5, 1)
    content = torch.tensor([[False, True, False, True, False]])
    compacted, valid = compact_tokens(tokens, content)
    assert compacted.view(-1).tolist() == [1.0, 3.0] and valid.tolist() == [[True, True]]
