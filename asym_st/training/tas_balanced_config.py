"""The TAS-Balanced configuration: QED's student, evaluation and optimisation settings plus mining, the pairwise and
in-batch teachers, topic clustering and balanced margin sampling."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from asym_st.data.beir import split_dataset_spec
from asym_st.training.config_io import ConfigError
from asym_st.training.qed_config import QEDConfig

__all__ = ["TASBalancedConfig", "PAIRWISE_TEACHER_KINDS", "TOWERS"]

PAIRWISE_TEACHER_KINDS = ("bi_encoder", "cross_encoder", "score_file")
TOWERS = ("query", "both")


@dataclass
class TASBalancedConfig(QEDConfig):
    """TAS-Balanced (Hofstätter et al., SIGIR 2021) settings.

    The student comes from ``init_from`` (an asym-st model folder, e.g. a QED student) or is built from ``teacher``
    and ``query_layers`` as in QED. It trains on the labelled queries of ``train_dataset`` (a BEIR
    ``FOLDER:split`` with qrels; QED's ``train_queries`` is not used):

    1. **mining**: the teacher retrieves ``num_candidates`` documents per query; judged positives are dropped;
    2. **pairwise teacher** scores every (query, positive) and (query, candidate) pair, cached on disk;
    3. **margin pairs**: every (positive, negative) pair with the teacher's margin, capped per query;
    4. **topic-aware batches**: k-means (``num_clusters``) over the teacher's query embeddings; each batch comes
       from one cluster (``topic_aware: false`` gives random batches);
    5. **balanced margins**: one pair per query per batch, drawn from ``num_margin_bins`` equal-width margin bins
       (``1`` draws pairs uniformly);
    6. **loss**: ``L_pair + alpha * L_inbatch`` (Margin-MSE against the pairwise teacher, and over the in-batch
       negatives against ``inbatch_teacher``; ``alpha: 0`` is plain Margin-MSE).

    ``towers: query`` trains the query tower only; the document tower stays the frozen teacher, so the index stays
    valid and every passage embedding is read from the embedding cache (no passage forward pass in training).
    ``towers: both`` trains both towers (the corpus must be re-indexed).

    Paper defaults and what is scaled down here: 2000 clusters for 400k MS MARCO queries (~200 queries a
    cluster; set ``num_clusters`` to about queries / 100), 10 margin bins, α = 0.75, batch 32 (the paper's
    DistilBERT runs used 32 too, with lr 7e-6 on both towers; a 2-layer query tower against a frozen index takes
    a larger rate). With ``init_from`` the student's shape and lengths are the saved model's.
    """

    output_dir: str = field(default="tas-balanced-student", metadata={"help": "the final model folder"})
    init_from: str | None = field(
        default=None, metadata={"help": "an asym-st model folder to start from (e.g. a QED student)"}
    )
    train_dataset: str | None = field(
        default=None, metadata={"help": "BEIR FOLDER:split with qrels (default split train)"}
    )
    towers: str = field(default="query", metadata={"help": "query (frozen document index) | both (re-index)"})

    num_candidates: int = field(default=30, metadata={"help": "mined candidates per query (positives dropped)"})
    min_relevance: int = field(default=1, metadata={"help": "qrels grade that counts as a positive"})
    max_positives_per_query: int | None = field(default=4, metadata={"help": "positives kept per query"})
    max_negatives_per_query: int | None = field(default=None, metadata={"help": "negatives kept per query"})

    pairwise_teacher: str = field(
        default="teacher", metadata={"help": "'teacher' (the document tower's model), a model id/path or score file"}
    )
    pairwise_teacher_kind: str = field(
        default="bi_encoder", metadata={"help": "bi_encoder | cross_encoder | score_file"}
    )
    inbatch_teacher: str | None = field(
        default="teacher", metadata={"help": "'teacher', a bi-encoder id/path, or none (no in-batch term)"}
    )
    alpha: float = field(default=0.75, metadata={"help": "weight of the in-batch Margin-MSE (paper: 0.75)"})

    topic_aware: bool = field(default=True, metadata={"help": "batches from one query cluster (TAS)"})
    num_clusters: int = field(default=2000, metadata={"help": "k-means clusters of the training queries"})
    num_margin_bins: int = field(default=10, metadata={"help": "balanced margin bins (1: uniform pairs)"})

    per_device_train_batch_size: int = 32
    num_train_epochs: float = 5.0
    learning_rate: float = 1e-4

    def validate(self) -> None:
        super().validate()
        if self.towers not in TOWERS:
            raise ConfigError(f"towers={self.towers!r}; choose one of {', '.join(TOWERS)}.")
        if self.pairwise_teacher_kind not in PAIRWISE_TEACHER_KINDS:
            raise ConfigError(
                f"pairwise_teacher_kind={self.pairwise_teacher_kind!r}; choose one of "
                f"{', '.join(PAIRWISE_TEACHER_KINDS)}."
            )
        if self.alpha < 0:
            raise ConfigError(f"alpha must be >= 0, got {self.alpha}.")
        for name in ("num_candidates", "num_clusters", "num_margin_bins", "min_relevance"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}.")

    @property
    def uses_inbatch_teacher(self) -> bool:
        return self.alpha > 0 and self.inbatch_teacher not in (None, "", "none")

    def require_sources(self) -> None:
        if self.train_queries:
            raise ConfigError(
                "train_queries is not used by TAS-Balanced, which trains on the labelled queries of train_dataset "
                "(it needs qrels for positives); remove it."
            )
        if not self.train_dataset:
            raise ConfigError("train_dataset is empty: name a BEIR FOLDER:split with qrels (e.g. nfcorpus:train).")
        folder, _ = split_dataset_spec(self.train_dataset)
        if not Path(folder).is_dir():
            raise ConfigError(f"train_dataset {self.train_dataset!r}: folder {folder} does not exist.")
        if self.init_from and not Path(self.init_from).is_dir():
            raise ConfigError(f"init_from {self.init_from}: no such model folder.")
        if self.pairwise_teacher_kind == "score_file" and not Path(self.pairwise_teacher).is_file():
            raise ConfigError(f"pairwise_teacher {self.pairwise_teacher}: score file not found.")
        # QED's checks (evaluation folders, output folder) on a copy that names a placeholder query source.
        QEDConfig.require_sources(replace(self, train_queries=["<train_dataset>"]))
