"""Dual-teacher Margin-MSE (TAS-Balanced): a pairwise teacher for the hard pairs, a live teacher for in-batch pairs."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import contextmanager
from typing import Any, Literal

import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.base.losses.merged_forward import embed_columns
from sentence_transformers.sentence_transformer.losses import MarginMSELoss
from sentence_transformers.util import batch_to_device, pairwise_dot_score, similarity_fct_name
from torch import Tensor, nn

from asym_st.modeling.towers import DOCUMENT_ROUTE, QUERY_ROUTE, is_asymmetric, tower_modules

__all__ = ["DualTeacherMarginMSELoss", "inbatch_margin_mse"]


class DualTeacherMarginMSELoss(nn.Module):
    def __init__(
        self,
        model: SentenceTransformer,
        inbatch_teacher: SentenceTransformer | None = None,
        alpha: float = 0.75,
        similarity_fct: Callable[[Tensor, Tensor], Tensor] = pairwise_dot_score,
        teacher_document_embeddings: Literal["teacher", "student"] = "teacher",
    ) -> None:
        """
        TAS-Balanced's dual supervision: ``L = L_pair + alpha * L_inbatch``.

        - ``L_pair`` is Margin-MSE (Hofstätter et al., 2020) of the student's margin
          ``s(q, p+) - s(q, p-)`` against the pairwise teacher's margin given as the label (e.g. a cross-encoder's
          logit margin, computed offline; see :mod:`asym_st.data.teacher_scores`). It is
          sentence-transformers' :class:`~sentence_transformers.sentence_transformer.losses.MarginMSELoss`,
          reused as is.
        - ``L_inbatch`` is Margin-MSE over the **in-batch negatives**: for query ``i`` every passage of the other
          rows of the batch (their positives and negatives) is a negative, and the student's margin
          ``s(q_i, p+_i) - s(q_i, p_j)`` is fitted to the margin of a second teacher that scores live, on the
          batch (ColBERT in the paper; any sentence-transformers bi-encoder here, e.g. the document tower's own
          teacher). The row's own negative is left to ``L_pair``.

        Both components are returned as a dict, which the sentence-transformers Trainer sums into the loss and
        logs separately: ``pair_margin_mse`` (``L_pair``) and ``inbatch_margin_mse`` (``alpha * L_inbatch``, the
        weighted term, so that the two logged values add up to the logged ``loss``).

        Works with asymmetric models (a ``Router`` with ``query`` and ``document`` routes): set
        ``router_mapping={"query": "query", "positive": "document", "negative": "document"}`` in the training
        arguments. The live teacher receives the same tokenised batch when its vocabulary matches the
        student's (the usual case: the query tower is a truncation of the teacher); otherwise the batch is
        decoded and re-tokenised for it.

        Args:
            model: the student.
            inbatch_teacher: the live teacher (frozen here: no gradients, eval mode during its forward). ``None``
                turns ``L_inbatch`` off (plain Margin-MSE).
            alpha: weight of ``L_inbatch`` (the paper: 0.75).
            similarity_fct: the student's pairwise score function (default dot product, as in ``MarginMSELoss``;
                for normalised embeddings it equals cosine). The teacher scores with its own
                ``similarity_fn_name``.
            teacher_document_embeddings: ``"teacher"`` encodes the batch's passages with the live teacher;
                ``"student"`` reuses the student's (detached) passage embeddings and saves a forward pass, for
                when the student's document tower *is* the live teacher, frozen (the query-tower-only setting);
                they equal the teacher's own embeddings when that tower runs without dropout (eval mode). The
                student's document tower then must have no trainable parameter.

        References:
            - Hofstätter et al., "Efficiently Teaching an Effective Dense Retriever with Balanced Topic Aware
              Sampling", SIGIR 2021: https://arxiv.org/abs/2104.06967
            - Hofstätter et al., "Improving Efficient Neural Ranking Models with Cross-Architecture Knowledge
              Distillation" (Margin-MSE): https://arxiv.org/abs/2010.02666

        Requirements:
            1. (query, positive, negative) triplets, or (query, positive, negative_1, ..., negative_n)
            2. the pairwise teacher's margins as labels (the ``MarginMSELoss`` label formats are accepted)
            3. batches of several rows (with one row there are no in-batch negatives and ``L_inbatch`` is 0);
               topic-aware batches (:class:`asym_st.sampling.TopicAwareBatchSampler`) make them informative

        Inputs:
            +-----------------------------------------------+---------------------------------------------------+
            | Texts                                         | Labels                                            |
            +===============================================+===================================================+
            | (query, positive, negative) triplets          | M(query, positive) - M(query, negative)           |
            +-----------------------------------------------+---------------------------------------------------+
            | (query, positive, negative_1, ..., negative_n)| [M(query, positive) - M(query, negative_i)]       |
            +-----------------------------------------------+---------------------------------------------------+

        Relations:
            - With ``inbatch_teacher=None`` (or ``alpha=0``) this is ``MarginMSELoss``.

        Example:
            ::

                from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer
                from sentence_transformers import SentenceTransformerTrainingArguments
                from datasets import Dataset

                from asym_st import build_asymmetric_model
                from asym_st.losses import DualTeacherMarginMSELoss

                teacher = SentenceTransformer("sentence-transformers/all-MiniLM-L6-v2")
                student = build_asymmetric_model(teacher)  # 2-layer query tower, frozen teacher documents
                train_dataset = Dataset.from_dict({
                    "query": ["what is the capital of france?", "how do cells make protein?"],
                    "positive": ["Paris is the capital of France.", "Ribosomes translate mRNA into protein."],
                    "negative": ["Lyon is a city in France.", "Cells divide by mitosis."],
                    "label": [4.1, 6.3],  # cross-encoder margins, computed offline
                })
                loss = DualTeacherMarginMSELoss(student, inbatch_teacher=teacher, alpha=0.75)
                args = SentenceTransformerTrainingArguments(
                    output_dir="tas-b",
                    router_mapping={"query": "query", "positive": "document", "negative": "document"},
                )
                trainer = SentenceTransformerTrainer(model=student, args=args, train_dataset=train_dataset, loss=loss)
                trainer.train()  # logs pair_margin_mse and inbatch_margin_mse
        """
        super().__init__()
        if alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {alpha}.")
        if teacher_document_embeddings not in ("teacher", "student"):
            raise ValueError(
                f"teacher_document_embeddings={teacher_document_embeddings!r}; use 'teacher' or 'student'."
            )
        self.model = model
        self.alpha = alpha
        self.similarity_fct = similarity_fct
        self.teacher_document_embeddings = teacher_document_embeddings
        self.pair_loss = MarginMSELoss(model, similarity_fct=similarity_fct)
        # Kept out of the module tree: the teacher is frozen, must not be saved with the loss or moved by it.
        self._teacher = [inbatch_teacher] if inbatch_teacher is not None else []
        if inbatch_teacher is not None:
            inbatch_teacher.requires_grad_(False)
            self._retokenize = {
                route: _must_retokenize(_tokenizer(model, route), inbatch_teacher, model)
                for route in (QUERY_ROUTE, DOCUMENT_ROUTE)
            }
            if teacher_document_embeddings == "student":
                self._check_frozen_document_tower()

    @property
    def inbatch_teacher(self) -> SentenceTransformer | None:
        return self._teacher[0] if self._teacher else None

    def _check_frozen_document_tower(self) -> None:
        modules = tower_modules(self.model, DOCUMENT_ROUTE)
        if any(p.requires_grad for module in modules for p in module.parameters()):
            raise ValueError(
                "teacher_document_embeddings='student' reuses the student's passage embeddings as the teacher's, "
                "which is only right when the student's document tower is the frozen teacher; this one is trainable."
            )

    # ------------------------------------------------------------------------------------------- forward

    def forward(self, sentence_features: Iterable[dict[str, Tensor]], labels: Tensor) -> dict[str, Tensor]:
        sentence_features = list(sentence_features)
        if len(sentence_features) < 3:
            raise ValueError(
                f"DualTeacherMarginMSELoss needs (query, positive, negative...) columns, got {len(sentence_features)}."
            )
        self._check_routes(sentence_features)
        # Shallow copies: the student's forward writes its outputs into the feature dicts it is given.
        teacher_features = [dict(features) for features in sentence_features]
        embeddings = embed_columns(self.model, sentence_features)
        losses = {"pair_margin_mse": self.pair_loss.compute_loss_from_embeddings(embeddings, labels)}
        if self.inbatch_teacher is not None and self.alpha > 0:
            losses["inbatch_margin_mse"] = self.alpha * self.inbatch_loss(embeddings, teacher_features)
        return losses

    def _check_routes(self, sentence_features: list[dict[str, Any]]) -> None:
        if is_asymmetric(self.model) and sentence_features[0].get("task") != QUERY_ROUTE:
            raise ValueError(
                "The student is asymmetric but the query column is not routed to its 'query' tower (it would train "
                "the document tower on queries). Set router_mapping={'query': 'query', 'positive': 'document', "
                "'negative': 'document'} (your column names) in the training arguments."
            )

    def inbatch_loss(self, embeddings: list[Tensor], teacher_features: list[dict[str, Any]]) -> Tensor:
        """Margin-MSE of every (own positive, other row's passage) margin against the live teacher's."""
        queries, passages = embeddings[0], torch.cat(embeddings[1:], dim=0)
        batch_size = queries.shape[0]
        if batch_size < 2:
            return queries.sum() * 0.0  # no in-batch negatives; keeps the graph connected
        student_scores = self._score_matrix(queries, passages)
        with torch.no_grad():
            teacher_scores = self._teacher_scores(embeddings, teacher_features).to(student_scores)
        return inbatch_margin_mse(student_scores, teacher_scores)

    def _score_matrix(self, queries: Tensor, passages: Tensor) -> Tensor:
        # Every (query, passage) score with the pairwise similarity_fct, so both losses use one definition.
        rows, cols = queries.shape[0], passages.shape[0]
        scores = self.similarity_fct(queries.repeat_interleave(cols, dim=0), passages.repeat(rows, 1))
        return scores.view(rows, cols)

    def _teacher_scores(self, embeddings: list[Tensor], features: list[dict[str, Any]]) -> Tensor:
        teacher = self.inbatch_teacher
        with _eval_mode(teacher):
            query = embed_columns(teacher, [self._teacher_inputs(features[0], QUERY_ROUTE)])[0]
            if self.teacher_document_embeddings == "student":
                passages = torch.cat([e.detach() for e in embeddings[1:]], dim=0)
            else:
                passage_features = [self._teacher_inputs(f, DOCUMENT_ROUTE) for f in features[1:]]
                passages = torch.cat(embed_columns(teacher, passage_features, separate_first=False), dim=0)
        return teacher.similarity(query, passages.to(query.device))

    def _teacher_inputs(self, features: dict[str, Any], default_route: str) -> dict[str, Any]:
        teacher = self.inbatch_teacher
        route = features.get("task") or default_route
        if not self._retokenize[route]:
            return batch_to_device(features, teacher.device)
        texts = _tokenizer(self.model, route).batch_decode(features["input_ids"], skip_special_tokens=True)
        return batch_to_device(teacher.preprocess(texts, task=route), teacher.device)

    # ------------------------------------------------------------------------------------------- metadata

    def get_config_dict(self) -> dict[str, Any]:
        teacher = self.inbatch_teacher
        return {
            "alpha": self.alpha,
            "similarity_fct": similarity_fct_name(self.similarity_fct),
            "inbatch_teacher": None
            if teacher is None
            else (teacher.model_card_data.base_model or type(teacher).__name__),
            "teacher_document_embeddings": self.teacher_document_embeddings,
        }

    @property
    def citation(self) -> str:
        return """
@inproceedings{hofstaetter2021tasb,
    title={Efficiently Teaching an Effective Dense Retriever with Balanced Topic Aware Sampling},
    author={Sebastian Hofst{\\"a}tter and Sheng-Chieh Lin and Jheng-Hong Yang and Jimmy Lin and Allan Hanbury},
    booktitle={Proceedings of the 44th International ACM SIGIR Conference on Research and Development in Information Retrieval},
    year={2021},
    eprint={2104.06967},
    archivePrefix={arXiv},
}
"""


def inbatch_margin_mse(student_scores: Tensor, teacher_scores: Tensor) -> Tensor:
    """``student_scores`` / ``teacher_scores``: ``batch × (batch · columns)``, passage ``j`` belongs to row ``j % batch``
    and row ``i``'s positive is passage ``i``."""
    batch_size, num_passages = student_scores.shape
    rows = torch.arange(batch_size, device=student_scores.device)
    owner = torch.arange(num_passages, device=student_scores.device) % batch_size
    others = owner.unsqueeze(0) != rows.unsqueeze(1)
    student_margins = student_scores[rows, rows].unsqueeze(1) - student_scores
    teacher_margins = teacher_scores[rows, rows].unsqueeze(1) - teacher_scores
    return nn.functional.mse_loss(student_margins[others], teacher_margins[others])


def _tokenizer(model: SentenceTransformer, route: str):
    if is_asymmetric(model):
        first = tower_modules(model, route)[0]
        return getattr(first, "tokenizer", model.tokenizer)
    return model.tokenizer


def _must_retokenize(student_tokenizer, teacher: SentenceTransformer, student: SentenceTransformer) -> bool:
    teacher_tokenizer = teacher.tokenizer
    if student_tokenizer is None or teacher_tokenizer is None:
        return True
    same_vocab = (
        student_tokenizer is teacher_tokenizer or student_tokenizer.get_vocab() == teacher_tokenizer.get_vocab()
    )
    teacher_length, student_length = teacher.max_seq_length, student.max_seq_length
    too_short = teacher_length is not None and student_length is not None and teacher_length < student_length
    return not same_vocab or too_short


@contextmanager
def _eval_mode(module: nn.Module):
    # The Trainer puts the student in train mode every step; a teacher that shares modules with the student's
    # frozen document tower must still score without dropout.
    states = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, training in states:
            m.train(training)
