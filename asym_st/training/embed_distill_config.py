"""The EmbedDistill configuration: QED's settings plus score matching, query generation and the student's shape."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from asym_st.losses.embed_distill import SCORE_LOSSES
from asym_st.training.qed_config import ConfigError, QEDConfig

__all__ = ["EmbedDistillConfig"]


@dataclass
class EmbedDistillConfig(QEDConfig):
    """EmbedDistill settings (Kim et al., 2023). Every :class:`~asym_st.training.QEDConfig` field applies (teacher,
    query tower layers, training queries, evaluation, optimisation, checkpoints); the fields below add:

    * **score matching** over each training query's candidates: the teacher's ``num_candidates`` nearest documents
      in ``candidate_corpora`` (plus ``random_candidates`` random ones), whose teacher embeddings come from the
      shared embedding cache;
    * **generated queries** from the passages of ``generate_queries_from``, by ``query_generator`` (``"span"``:
      model-free, offline; anything else: a seq2seq Hub id or folder, doc2query-style); the teacher embeds them,
      no labels needed;
    * **the student**: the query tower is the truncated teacher, or ``query_encoder`` (a smaller pretrained model,
      with a ``Dense`` projection when the widths differ); the document tower is the frozen teacher unless
      ``train_document_tower`` (then ``document_weight`` matches its embeddings to the teacher's, and the corpus
      must be re-indexed).

    With ``score_weight: 0`` and no generated queries this is QED with the chosen ``distance``.
    """

    output_dir: str = field(default="embed-distill-student", metadata={"help": "the final model folder"})
    distance: str = field(default="l2", metadata={"help": "l2 (EmbedDistill) | mse (QED) | cosine"})
    query_encoder: str | None = field(
        default=None, metadata={"help": "a smaller pretrained query encoder instead of truncated teacher layers"}
    )

    query_weight: float = field(default=1.0, metadata={"help": "weight of query-embedding matching"})
    score_weight: float = field(default=1.0, metadata={"help": "weight of score matching (0 turns it off)"})
    score_loss: str = field(default="kl", metadata={"help": "kl | margin_mse"})
    temperature: float = field(default=0.05, metadata={"help": "softmax temperature of the KL score matching"})
    candidate_corpora: list[str] = field(
        default_factory=list, metadata={"help": "BEIR folders searched for each query's candidate documents"}
    )
    num_candidates: int = field(default=8, metadata={"help": "the teacher's top documents per query"})
    random_candidates: int = field(default=0, metadata={"help": "extra random documents per query"})

    generate_queries_from: list[str] = field(
        default_factory=list, metadata={"help": "BEIR folders whose passages get generated queries"}
    )
    query_generator: str = field(default="span", metadata={"help": "span (model-free) or a seq2seq Hub id / folder"})
    queries_per_passage: int = field(default=1, metadata={"help": "generated queries per passage"})
    max_generated_passages: int | None = field(
        default=None, metadata={"help": "passages per corpus to generate from (seeded sample; default all)"}
    )
    generator_batch_size: int = field(default=16, metadata={"help": "passages per seq2seq generate call"})
    generator_prefix: str = field(default="", metadata={"help": "text before each passage (seq2seq models)"})

    train_document_tower: bool = field(default=False, metadata={"help": "train the document tower too"})
    document_weight: float = field(default=0.0, metadata={"help": "weight of document-embedding matching"})
    document_max_seq_length: int | None = field(
        default=None, metadata={"help": "document tokens while training the document tower (default: teacher's)"}
    )

    def validate(self) -> None:
        super().validate()
        if self.score_loss not in SCORE_LOSSES:
            raise ConfigError(f"score_loss={self.score_loss!r}; choose one of {', '.join(SCORE_LOSSES)}.")
        for name in ("query_weight", "score_weight", "document_weight"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}.")
        if self.query_weight == self.score_weight == self.document_weight == 0:
            raise ConfigError("query_weight, score_weight and document_weight are all 0: nothing to train.")
        if self.temperature <= 0:
            raise ConfigError(f"temperature must be positive, got {self.temperature}.")
        if self.num_candidates < 1 or self.random_candidates < 0:
            raise ConfigError(
                f"num_candidates must be >= 1 and random_candidates >= 0; got {self.num_candidates} and "
                f"{self.random_candidates}."
            )
        if self.score_weight > 0 and self.num_candidates + self.random_candidates < 2:
            raise ConfigError("score matching needs num_candidates + random_candidates >= 2.")
        if self.document_weight > 0 and not self.train_document_tower:
            raise ConfigError(
                "document_weight > 0 needs train_document_tower: the frozen teacher document tower already "
                "produces the teacher's document embeddings."
            )
        if self.queries_per_passage < 1 or self.generator_batch_size < 1:
            raise ConfigError("queries_per_passage and generator_batch_size must be at least 1.")

    @property
    def needs_candidates(self) -> bool:
        return self.score_weight > 0 or self.document_weight > 0

    def require_sources(self) -> None:
        if not self.train_queries:
            if not self.generate_queries_from:
                raise ConfigError(
                    "No training queries: set train_queries (files, FOLDER:train, ...) or generate_queries_from."
                )
            # Generated queries alone are a valid training set; QEDConfig checks the rest (evaluation folders,
            # output folder), on a copy that names a placeholder source.
            replace(self, train_queries=["<generated>"]).require_sources()
            return
        super().require_sources()
        if self.needs_candidates and not self.candidate_corpora:
            raise ConfigError(
                "score_weight / document_weight > 0 need candidate_corpora: BEIR folders whose documents the "
                "teacher retrieves as each query's candidates."
            )
        for name in ("candidate_corpora", "generate_queries_from"):
            for folder in getattr(self, name):
                if not Path(folder).exists():
                    raise ConfigError(f"{name}: {folder} does not exist (expected a BEIR folder or zip).")
