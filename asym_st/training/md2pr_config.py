"""The MD2PR configuration: QED's student, evaluation and optimisation settings plus the cross-encoder teacher,
mining, the sentence- and word-level losses and the dynamic false-negative filter."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from asym_st.data.beir import split_dataset_spec
from asym_st.sampling.false_negatives import FILTER_POOLS, FILTER_SCHEDULES, FalseNegativeFilterConfig
from asym_st.training.config_io import ConfigError
from asym_st.training.qed_config import QEDConfig

__all__ = ["MD2PRConfig", "TOWERS"]

TOWERS = ("query", "both")


@dataclass
class MD2PRConfig(QEDConfig):
    """MD2PR (Li, Hai and Tang, 2023: multi-level distillation from a cross-encoder) settings.

    The student comes from ``init_from`` (an asym-st model folder, e.g. a QED student) or is built from ``teacher``
    and ``query_layers`` as in QED. It trains on the labelled queries of ``train_dataset`` (a BEIR ``FOLDER:split``
    with qrels; QED's ``train_queries`` is not used):

    1. **teacher**: the cross-encoder ``cross_encoder`` (Hub id or path), or, when it is empty, one trained first on
       ``teacher_train_dataset`` (default: ``train_dataset``) from ``cross_encoder_base`` and saved to
       ``cross_encoder_output_dir`` (reused by later runs; see :mod:`asym_st.training.cross_encoder_teacher`);
    2. **mining**: the bi-encoder teacher (the document tower's model) retrieves ``num_candidates`` documents per
       query, positives dropped; each row is (query, a positive, ``num_negatives`` negatives sampled from them);
    3. **teacher scores** of every (query, candidate) pair, and, for the word level, the cross-encoder's
       query→passage attention on the student's tokens; both cached on disk (computed once, not per epoch);
    4. **loss**: ``sentence_weight · L_sent + word_weight · L_word``: the KL between the cross-encoder's and the
       student's softmax over each row's candidates (``temperature`` / ``teacher_temperature``), and the KL between
       the cross-encoder's attention and the student's token-similarity distributions (``word_temperature``);
       ``word_weight: 0`` turns the word level off;
    5. **dynamic false-negative filter** (``false_negative_filter``): negatives scored above the ``fn_quantile``
       quantile of the positives' teacher scores leave the sentence-level softmax; the threshold is recomputed
       every epoch or step (``fn_schedule``) while it moves from ``fn_quantile`` to ``fn_final_quantile``. The word
       level still sees the dropped negatives: the teacher's token interactions on a pair do not depend on its label.
       Negatives are mined once, before training (no re-mining between iterations).

    Temperatures: the student's scores are cosines in [-1, 1] and the cross-encoder's logits span several units;
    at the KL's optimum ``s / temperature = t / teacher_temperature`` (+ a constant per row), so only the ratio sets
    how the student's score gaps follow the teacher's (1/20: a logit gap of 10 becomes a cosine gap of 0.5), while
    ``temperature²`` scales the loss (as in sentence-transformers' ``DistillKLDivLoss``); keeping ``temperature`` at 1
    keeps the sentence term on the word term's scale.

    Before training, the teacher's ranking of the training rows is compared with the retriever's
    (:mod:`asym_st.training.teacher_signal`): a teacher that ranks the judged positives first less often than the
    student's own starting scores is refused (``allow_weaker_teacher`` overrides), and temperatures that flatten or
    stretch the student's score gaps more than four-fold are reported with the ``teacher_temperature`` that matches.

    Ablations are config changes: sentence level only (``word_weight: 0``, ``false_negative_filter: false``),
    + word level (``word_weight > 0``), + the filter (``false_negative_filter: true``).

    ``towers: query`` trains the query tower only: the document tower stays the frozen teacher (the index stays
    valid), and passages go through it without gradients (their token embeddings are needed at every step, so
    passages are truncated to ``passage_max_length`` tokens). ``towers: both`` trains both towers (re-index).
    """

    output_dir: str = field(default="md2pr-student", metadata={"help": "the final model folder"})
    init_from: str | None = field(
        default=None, metadata={"help": "an asym-st model folder to start from (e.g. a QED student)"}
    )
    train_dataset: str | None = field(
        default=None, metadata={"help": "BEIR FOLDER:split with qrels (default split train)"}
    )
    towers: str = field(default="query", metadata={"help": "query (frozen document tower) | both (re-index)"})

    num_candidates: int = field(default=30, metadata={"help": "mined documents per query (positives dropped)"})
    num_negatives: int = field(default=7, metadata={"help": "negatives per row, sampled from the candidates"})
    min_relevance: int = field(default=1, metadata={"help": "qrels grade that counts as a positive"})
    max_positives_per_query: int | None = field(default=1, metadata={"help": "rows (positives) per query"})
    passage_max_length: int = field(default=128, metadata={"help": "passage tokens in training (document tower)"})

    sentence_weight: float = field(default=1.0, metadata={"help": "weight of the sentence-level KL"})
    word_weight: float = field(default=1.0, metadata={"help": "weight of the word-level KL (0: off)"})
    temperature: float = field(
        default=1.0, metadata={"help": "sentence-level KL temperature of the student's scores (loss × its square)"}
    )
    teacher_temperature: float = field(
        default=20.0, metadata={"help": "temperature of the cross-encoder's logits in the sentence-level KL"}
    )
    word_temperature: float = field(default=0.1, metadata={"help": "temperature of the token cosine similarities"})
    attention_layers: list[int] | None = field(
        default=None, metadata={"help": "cross-encoder layers averaged for the word level (default: the last)"}
    )
    attention_heads: list[int] | None = field(default=None, metadata={"help": "heads averaged (default: all)"})

    false_negative_filter: bool = field(default=True, metadata={"help": "drop negatives scored like positives"})
    # The default threshold moves (0.75 → 0.5 quantile): the teacher scores are cached once, so a constant quantile
    # would give the same threshold every epoch, a static filter, where MD2PR updates it over training iterations.
    fn_quantile: float = field(default=0.75, metadata={"help": "quantile of positive teacher scores (threshold)"})
    fn_final_quantile: float | None = field(
        default=0.5, metadata={"help": "quantile at the last epoch/step (linear schedule; null: constant)"}
    )
    fn_schedule: str = field(default="epoch", metadata={"help": "recompute the threshold every epoch | step"})
    fn_pool: str = field(default="all", metadata={"help": "positives the quantile is over: all | batch"})

    cross_encoder: str | None = field(
        default=None,
        metadata={"help": "cross-encoder id/path (e.g. cross-encoder/ms-marco-MiniLM-L6-v2); empty: train"},
    )
    teacher_train_dataset: str | None = field(
        default=None, metadata={"help": "BEIR FOLDER:split to train the cross-encoder on (default train_dataset)"}
    )
    cross_encoder_base: str = field(
        default="sentence-transformers/all-MiniLM-L6-v2",
        metadata={"help": "encoder the trained cross-encoder starts from"},
    )
    cross_encoder_output_dir: str | None = field(
        default=None, metadata={"help": "where a trained cross-encoder goes (default OUTPUT_DIR.cross-encoder)"}
    )
    cross_encoder_epochs: float = field(default=1.0, metadata={"help": "cross-encoder training epochs"})
    cross_encoder_max_steps: int = field(default=-1, metadata={"help": "cross-encoder training steps (-1: epochs)"})
    cross_encoder_batch_size: int = field(default=16, metadata={"help": "cross-encoder training batch size"})
    cross_encoder_learning_rate: float = field(default=2e-5, metadata={"help": "cross-encoder learning rate"})
    cross_encoder_negatives: int = field(default=4, metadata={"help": "negatives per query for the cross-encoder"})
    cross_encoder_max_length: int = field(default=256, metadata={"help": "cross-encoder max tokens per pair"})
    allow_weaker_teacher: bool = field(
        default=False,
        metadata={"help": "distil a teacher that ranks the training rows worse than the retriever (tests, studies)"},
    )

    per_device_train_batch_size: int = 16
    num_train_epochs: float = 2.0
    learning_rate: float = 2e-5

    def validate(self) -> None:
        super().validate()
        if self.towers not in TOWERS:
            raise ConfigError(f"towers={self.towers!r}; choose one of {', '.join(TOWERS)}.")
        for name in ("num_candidates", "num_negatives", "min_relevance", "cross_encoder_negatives"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}.")
        if self.num_negatives > self.num_candidates:
            raise ConfigError(
                f"num_negatives ({self.num_negatives}) exceeds num_candidates ({self.num_candidates}): negatives are "
                "sampled from the mined candidates."
            )
        if self.max_positives_per_query is not None and self.max_positives_per_query < 1:
            raise ConfigError(
                f"max_positives_per_query must be at least 1 or empty, got {self.max_positives_per_query}."
            )
        if self.passage_max_length < 8:
            raise ConfigError(f"passage_max_length must be at least 8 tokens, got {self.passage_max_length}.")
        for name in ("sentence_weight", "word_weight"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}.")
        if self.sentence_weight == 0 and self.word_weight == 0:
            raise ConfigError("sentence_weight and word_weight are both 0: nothing to train.")
        for name in ("temperature", "teacher_temperature", "word_temperature"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ConfigError(f"{name} must be positive, got {value}.")
        if self.fn_schedule not in FILTER_SCHEDULES:
            raise ConfigError(f"fn_schedule={self.fn_schedule!r}; choose one of {', '.join(FILTER_SCHEDULES)}.")
        if self.fn_pool not in FILTER_POOLS:
            raise ConfigError(f"fn_pool={self.fn_pool!r}; choose one of {', '.join(FILTER_POOLS)}.")
        for name in ("fn_quantile", "fn_final_quantile"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= 1:
                raise ConfigError(f"{name} must be in [0, 1], got {value}.")

    @property
    def filter_config(self) -> FalseNegativeFilterConfig:
        return FalseNegativeFilterConfig(
            quantile=self.fn_quantile,
            final_quantile=self.fn_final_quantile,
            schedule=self.fn_schedule,
            pool=self.fn_pool,
        )

    @property
    def resolved_cross_encoder_dir(self) -> str:
        return self.cross_encoder_output_dir or f"{self.output_dir.rstrip('/')}.cross-encoder"

    @property
    def resolved_teacher_train_dataset(self) -> str | None:
        return self.teacher_train_dataset or self.train_dataset

    def require_sources(self) -> None:
        if self.train_queries:
            raise ConfigError(
                "train_queries is not used by MD2PR, which trains on the labelled queries of train_dataset "
                "(it needs qrels for positives); remove it."
            )
        if not self.train_dataset:
            raise ConfigError("train_dataset is empty: name a BEIR FOLDER:split with qrels (e.g. scifact:train).")
        for name in ("train_dataset", "teacher_train_dataset"):
            spec = getattr(self, name)
            if spec:
                folder, _ = split_dataset_spec(spec)
                if not Path(folder).is_dir():
                    raise ConfigError(f"{name} {spec!r}: folder {folder} does not exist.")
        if self.init_from and not Path(self.init_from).is_dir():
            raise ConfigError(f"init_from {self.init_from}: no such model folder.")
        if self.cross_encoder and _looks_like_path(self.cross_encoder) and not Path(self.cross_encoder).is_dir():
            raise ConfigError(f"cross_encoder {self.cross_encoder}: no such model folder.")
        # QED's checks (evaluation folders, output folder) on a copy that names a placeholder query source.
        QEDConfig.require_sources(replace(self, train_queries=["<train_dataset>"]))


def _looks_like_path(name: str) -> bool:
    # Hub ids are "name" or "org/name"; anything else (absolute, relative, nested) is meant as a local folder.
    return name.startswith(("/", ".", "~")) or name.count("/") > 1
