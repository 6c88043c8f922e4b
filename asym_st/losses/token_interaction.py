"""MD2PR's word-level distillation: the student's query×passage token similarities fitted to a cross-encoder's
query→passage attention."""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sentence_transformers import SentenceTransformer
from torch import Tensor, nn

from asym_st.losses.md2pr_sentence import MD2PR_CITATION, MD2PRSentenceLoss, document_tower_frozen, forward_columns
from asym_st.modeling.towers import DOCUMENT_ROUTE, QUERY_ROUTE, is_asymmetric, tower_modules

__all__ = ["TokenInteractionLoss", "compact_tokens", "interaction_kl"]


class TokenInteractionLoss(nn.Module):
    def __init__(
        self,
        model: SentenceTransformer,
        teacher_attention: np.ndarray | Tensor,
        query_lengths: np.ndarray | Tensor,
        passage_lengths: np.ndarray | Tensor,
        weight: float = 1.0,
        temperature: float = 0.1,
        normalize_tokens: bool = True,
        sentence_loss: MD2PRSentenceLoss | None = None,
        special_token_ids: Collection[int] | None = None,
        frozen_documents: bool | None = None,
    ) -> None:
        """
        MD2PR's word-level distillation (Li et al., 2023): the student's token-level interaction between a query and
        a passage, which a bi-encoder never computes at inference, is fitted to the interaction a cross-encoder
        computes when it reads the concatenated pair.

        For a pair ``(q, p)`` with content tokens ``i = 1..m`` (query) and ``j = 1..k`` (passage), i.e. without
        padding and special tokens (``[CLS]``, ``[SEP]``, ...):

        - **student**: ``S_ij = cos(h^q_i, h^p_j) / τ`` (``h^q``: the query tower's token embeddings, ``h^p``: the
          document tower's; plain dot products with ``normalize_tokens=False``), turned into one distribution per
          query token: ``P^s_i = softmax_j(S_ij)``;
        - **teacher**: ``A_ij``, the cross-encoder's attention of query token ``i`` to passage token ``j`` on
          ``[CLS] q [SEP] p [SEP]``, averaged over the chosen layers and heads and renormalised over the passage's
          content tokens (``Σ_j A_ij = 1``), precomputed by :mod:`asym_st.data.teacher_attention`;
        - **loss**: ``L_word = weight · mean_pairs (1/m) Σ_i KL(A_i || P^s_i)``
          ``= weight · mean_pairs (1/m) Σ_i Σ_j A_ij (log A_ij - log P^s_ij)``, over every candidate (positive and
          negatives) that has a teacher matrix.

        The teacher matrices are aligned to the student's tokens by construction: they were computed on the student
        towers' own content tokens (same vocabulary, same truncation), which this loss checks (the number of content
        tokens of every pair must equal the stored lengths). With a frozen document tower, the passage tokens come
        from it without gradients and in eval mode; only the query tower learns.

        With ``sentence_loss`` (a :class:`~asym_st.losses.md2pr_sentence.MD2PRSentenceLoss`) the same forward pass
        also gives the sentence-level term, and the loss returns both: ``{"sentence_kl": ..., "word_kl": ...}``
        (MD2PR's multi-level objective, ``L = w_sent · L_sent + w_word · L_word``).

        Args:
            model: the student (route the query column to ``query``, the candidates to ``document``).
            teacher_attention: ``N × Q × P``, row ``r`` holds pair ``r``'s matrix ``A`` in its top-left
                ``query_lengths[r] × passage_lengths[r]`` corner (zeros elsewhere). A memory-mapped array is read
                row by row, per batch.
            query_lengths: ``N``, content tokens of each pair's query.
            passage_lengths: ``N``, content tokens of each pair's passage.
            weight: multiplies ``L_word``.
            temperature: ``τ`` of the student's token similarities.
            normalize_tokens: cosine (``True``) or dot-product token similarities.
            sentence_loss: the sentence-level loss to compute from the same forward pass (``None``: word level only).
            special_token_ids: ids that are never content tokens (default: every special token of the towers'
                tokenizers except ``[UNK]``; must match the rule used to build the teacher matrices).
            frozen_documents: embed the candidates without gradients; ``None`` detects it.

        References:
            - Li, Hai and Tang, "MD2PR: A Multi-level Distillation based Dense Passage Retrieval Model", 2023:
              https://arxiv.org/abs/2312.16821

        Requirements:
            1. (query, positive, negative_1, ..., negative_n) rows
            2. towers with the same vocabulary as the cross-encoder, and token embeddings of the same width
            3. teacher attention matrices for the (query, candidate) pairs, indexed by the label

        Inputs:
            +------------------------------------------------+-------------------------------------------------------+
            | Texts                                          | Labels                                                |
            +================================================+=======================================================+
            | (query, positive, negative_1, ..., negative_n) | ``[scores (n+1) | attention rows (n+1)]``: the teacher's |
            |                                                | scores (read by ``sentence_loss``), then each         |
            |                                                | candidate's row in ``teacher_attention`` (-1: none)   |
            +------------------------------------------------+-------------------------------------------------------+

            Without ``sentence_loss`` the label may hold the ``n+1`` attention rows alone. Store the labels as
            float64 so that row numbers stay exact.

        Example:
            ::

                from asym_st.data.teacher_attention import AttentionCache, CrossEncoderAttention, pair_attention
                from asym_st.losses import MD2PRSentenceLoss, TokenInteractionLoss

                summaries = pair_attention(
                    CrossEncoderAttention(cross_encoder), student, queries, passages, passage_max_length=128,
                    cache=AttentionCache(),
                )
                loss = TokenInteractionLoss(
                    student, summaries.matrices, summaries.query_lengths, summaries.passage_lengths,
                    sentence_loss=MD2PRSentenceLoss(student, teacher_temperature=20.0),
                )
                # labels per row: [T(q, p+), T(q, n_1), ..., row(q, p+), row(q, n_1), ...]
        """
        super().__init__()
        if weight < 0:
            raise ValueError(f"weight must be >= 0, got {weight}.")
        if not temperature > 0:
            raise ValueError(f"temperature must be positive, got {temperature}.")
        self.model = model
        self.weight = weight
        self.temperature = temperature
        self.normalize_tokens = normalize_tokens
        self.sentence_loss = sentence_loss
        self.teacher_attention = teacher_attention
        self.query_lengths = np.asarray(query_lengths, dtype=np.int64).reshape(-1)
        self.passage_lengths = np.asarray(passage_lengths, dtype=np.int64).reshape(-1)
        if teacher_attention.ndim != 3 or not (
            teacher_attention.shape[0] == len(self.query_lengths) == len(self.passage_lengths)
        ):
            raise ValueError(
                f"teacher_attention must be N × Q × P with N lengths, got shape {tuple(teacher_attention.shape)} "
                f"and {len(self.query_lengths)}/{len(self.passage_lengths)} lengths."
            )
        if special_token_ids is None:
            special_token_ids = _special_token_ids(model)
        self.register_buffer("special_ids", torch.tensor(sorted(special_token_ids), dtype=torch.long), persistent=False)
        self.frozen_documents = document_tower_frozen(model) if frozen_documents is None else frozen_documents

    # ------------------------------------------------------------------------------------------- forward

    def forward(self, sentence_features: Iterable[dict[str, Tensor]], labels: Tensor) -> dict[str, Tensor]:
        outputs = forward_columns(self.model, sentence_features, self.frozen_documents)
        candidates = len(outputs) - 1
        scores, rows = self._split_labels(labels, candidates)
        losses: dict[str, Tensor] = {}
        if self.sentence_loss is not None:
            losses.update(self.sentence_loss.loss_from_embeddings([o["sentence_embedding"] for o in outputs], scores))
        losses["word_kl"] = self.weight * self.word_loss(outputs[0], outputs[1:], rows)
        return losses

    def _split_labels(self, labels: Tensor, candidates: int) -> tuple[Tensor | None, Tensor]:
        if labels.ndim != 2 or labels.shape[1] not in (candidates, 2 * candidates):
            raise ValueError(
                f"Labels must be batch × {2 * candidates} ([teacher scores | attention rows] of the {candidates} "
                f"candidates) or batch × {candidates} (attention rows alone), got shape {tuple(labels.shape)}."
            )
        if labels.shape[1] == candidates:
            if self.sentence_loss is not None:
                raise ValueError("With a sentence_loss the labels must also hold the teacher scores (batch × 2n).")
            return None, labels.round().long()
        return labels[:, :candidates], labels[:, candidates:].round().long()

    def word_loss(self, query: dict[str, Tensor], candidates: list[dict[str, Tensor]], rows: Tensor) -> Tensor:
        """``mean_pairs (1/m) Σ_i KL(A_i || P^s_i)`` over every (query, candidate) pair with a teacher row."""
        query_tokens, query_valid = compact_tokens(query["token_embeddings"], self._content(query))
        query_counts = query_valid.sum(dim=1)
        pair_losses, pair_valid = [], []
        for column, candidate in enumerate(candidates):
            passage_tokens, passage_valid = compact_tokens(candidate["token_embeddings"], self._content(candidate))
            if passage_tokens.shape[-1] != query_tokens.shape[-1]:
                raise ValueError(
                    f"The query tower's token embeddings are {query_tokens.shape[-1]}-dimensional but the document "
                    f"tower's {passage_tokens.shape[-1]}-dimensional: the word-level loss needs the same width."
                )
            column_rows = rows[:, column]
            has_teacher = column_rows >= 0
            teacher = self._teacher(column_rows, query_counts, passage_valid.sum(dim=1), has_teacher)
            teacher = teacher[:, : query_tokens.shape[1], : passage_tokens.shape[1]].to(query_tokens)
            losses, valid = interaction_kl(
                query_tokens,
                query_valid,
                passage_tokens,
                passage_valid,
                teacher,
                self.temperature,
                self.normalize_tokens,
            )
            pair_losses.append(losses)
            pair_valid.append(valid & has_teacher)
        losses, valid = torch.cat(pair_losses), torch.cat(pair_valid)
        if not bool(valid.any()):
            return query_tokens.sum() * 0.0  # nothing to fit in this batch; keeps the graph connected
        return losses[valid].mean()

    def _content(self, output: dict[str, Tensor]) -> Tensor:
        input_ids = output["input_ids"]
        special = self.special_ids.to(input_ids.device)
        return output["attention_mask"].bool() & ~torch.isin(input_ids, special)

    def _teacher(self, rows: Tensor, query_counts: Tensor, passage_counts: Tensor, has_teacher: Tensor) -> Tensor:
        """The teacher matrices of ``rows`` (zeros where a row is -1), after checking the token counts."""
        batch = rows.shape[0]
        _, max_query, max_passage = self.teacher_attention.shape
        out = torch.zeros(batch, max_query, max_passage, dtype=torch.float32)
        picked = rows[has_teacher].cpu().numpy()
        if picked.size == 0:
            return out
        if picked.max() >= len(self.query_lengths):
            raise IndexError(f"Attention row {picked.max()} is outside 0..{len(self.query_lengths) - 1}.")
        expected_q = self.query_lengths[picked]
        expected_p = self.passage_lengths[picked]
        got_q = query_counts[has_teacher].cpu().numpy()
        got_p = passage_counts[has_teacher].cpu().numpy()
        wrong = np.flatnonzero((expected_q != got_q) | (expected_p != got_p))
        if wrong.size:
            first = wrong[0]
            raise ValueError(
                f"Teacher attention row {picked[first]} covers {expected_q[first]} query × {expected_p[first]} "
                f"passage tokens, but the student has {got_q[first]} × {got_p[first]} content tokens for that pair: "
                "the matrices were built with another tokenizer, truncation length or text. Rebuild them with the "
                "student's towers and the training passage length."
            )
        order = np.argsort(picked, kind="stable")  # sorted reads are faster on a memory-mapped array
        matrices = np.empty((picked.size, max_query, max_passage), dtype=np.float32)
        matrices[order] = np.asarray(self.teacher_attention[picked[order]], dtype=np.float32)
        out[has_teacher.cpu()] = torch.from_numpy(matrices)
        return out.to(rows.device)

    # ------------------------------------------------------------------------------------------- metadata

    def get_config_dict(self) -> dict[str, Any]:
        config = {
            "weight": self.weight,
            "temperature": self.temperature,
            "normalize_tokens": self.normalize_tokens,
            "num_teacher_pairs": len(self.query_lengths),
            "frozen_documents": self.frozen_documents,
        }
        if self.sentence_loss is not None:
            config["sentence_loss"] = {
                "class": type(self.sentence_loss).__name__,
                **self.sentence_loss.get_config_dict(),
            }
        return config

    @property
    def citation(self) -> str:
        return MD2PR_CITATION


# ----------------------------------------------------------------------------------------------- tensor helpers


def compact_tokens(tokens: Tensor, content: Tensor) -> tuple[Tensor, Tensor]:
    """Move each row's content tokens to the front, in order: ``(batch × M × d, batch × M valid)`` with ``M`` the
    largest content count of the batch (padding rows are zero)."""
    counts = content.sum(dim=1)
    width = int(counts.max()) if counts.numel() else 0
    order = torch.argsort((~content).to(torch.int8), dim=1, stable=True)[:, :width]
    gathered = tokens.gather(1, order.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))
    valid = torch.arange(width, device=tokens.device).unsqueeze(0) < counts.unsqueeze(1)
    return gathered * valid.unsqueeze(-1).to(gathered.dtype), valid


def interaction_kl(
    query_tokens: Tensor,
    query_valid: Tensor,
    passage_tokens: Tensor,
    passage_valid: Tensor,
    teacher: Tensor,
    temperature: float,
    normalize_tokens: bool = True,
) -> tuple[Tensor, Tensor]:
    """Per pair ``(1/m) Σ_i KL(A_i || softmax_j(S_ij))`` and whether the pair has any (query, passage) token.

    Args:
        query_tokens: ``B × M × d`` (compacted, see :func:`compact_tokens`); ``query_valid``: ``B × M``.
        passage_tokens: ``B × K × d``; ``passage_valid``: ``B × K``.
        teacher: ``B × M × K`` non-negative interaction weights; each valid row is renormalised to sum to 1.
        temperature: ``τ`` of ``S_ij = sim(q_i, p_j) / τ``.
        normalize_tokens: cosine (``True``) or dot-product similarities.
    """
    if normalize_tokens:
        query_tokens, passage_tokens = F.normalize(query_tokens, dim=-1), F.normalize(passage_tokens, dim=-1)
    scores = query_tokens @ passage_tokens.transpose(1, 2) / temperature
    has_passage = passage_valid.any(dim=1)
    # Padding columns leave the softmax; a pair without passage tokens keeps finite (unused) scores, so that no
    # all -inf row makes NaN gradients.
    scores = scores.masked_fill((~passage_valid & has_passage.unsqueeze(1)).unsqueeze(1), -torch.inf)
    log_student = torch.log_softmax(scores, dim=-1)
    cells = query_valid.unsqueeze(2) & passage_valid.unsqueeze(1)
    teacher = teacher.float().clamp_min(0.0) * cells
    teacher = teacher / teacher.sum(dim=-1, keepdim=True).clamp_min(1e-12)
    kl_cells = torch.xlogy(teacher, teacher) - teacher * log_student.float().masked_fill(~cells, 0.0)
    rows = query_valid & has_passage.unsqueeze(1)
    row_kl = kl_cells.sum(dim=-1) * rows
    pair_loss = row_kl.sum(dim=1) / rows.sum(dim=1).clamp_min(1)
    return pair_loss, rows.any(dim=1)


def _special_token_ids(model: SentenceTransformer) -> set[int]:
    """Every special token id of the towers' tokenizers except ``[UNK]`` (unknown words are content)."""
    tokenizers = []
    if is_asymmetric(model):
        for route in (QUERY_ROUTE, DOCUMENT_ROUTE):
            tokenizers.append(getattr(tower_modules(model, route)[0], "tokenizer", None))
    else:
        tokenizers.append(getattr(model, "tokenizer", None))
    ids: set[int] = set()
    for tokenizer in tokenizers:
        if tokenizer is None:
            raise ValueError("The word-level loss needs towers with a tokenizer (a Transformer first module).")
        ids |= set(tokenizer.all_special_ids) - {tokenizer.unk_token_id}
    return ids
