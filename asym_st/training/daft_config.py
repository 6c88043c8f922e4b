"""The DAFT configuration: one dataclass shared by the Python API, YAML files and ``recipes/daft.py``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from asym_st.data.beir import split_dataset_spec
from asym_st.modeling.light_encoders import LightEncoderConfig
from asym_st.training.collapse import CollapseDetector
from asym_st.training.config_io import ConfigError, YamlConfigMixin

__all__ = ["DAFTConfig", "StageSettings", "STAGES"]

STAGES = ("align", "finetune")
ALIGN_LOSSES = ("mse", "cosine", "contrastive")
FINETUNE_LOSSES = ("auto", "frozen_documents", "mnrl", "cached_mnrl")
ALIGN_ON = ("documents", "queries", "both")

# Static token vectors start at normal(0, 1) and move one Adam step per update, so they need a far larger rate
# than transformer weights (sentence-transformers' static-embedding examples train at 0.05-0.2).
_DEFAULT_LEARNING_RATES = {"static": 0.05, "transformer": 1e-4}


@dataclass
class StageSettings:
    """The optimisation settings of one stage, with the field names that the shared trainer-argument builder
    (:func:`asym_st.training.trainer_setup.training_arguments`) and resume logic read."""

    name: str
    resolved_checkpoint_dir: str
    resume_from_checkpoint: str | None
    learning_rate: float
    num_train_epochs: float
    max_steps: int
    per_device_train_batch_size: int
    eval_steps: int
    save_steps: int
    patience: int
    warmup_ratio: float
    weight_decay: float
    logging_steps: int
    save_total_limit: int
    seed: int
    report_to: str


@dataclass
class DAFTConfig(YamlConfigMixin):
    """DAFT (Leonhardt et al., 2022) settings: heterogeneous towers, stage 1 (alignment), stage 2 (contrastive).

    Stage 1 freezes the document tower and trains the query tower until the k-NN KL divergence between the two
    towers' embedding distributions stops decreasing on held-out texts. Stage 2 fine-tunes the query tower (or
    both towers) contrastively with in-batch negatives until the dev nDCG@10 stops improving. Run both
    (``stages: [align, finetune]``), stage 1 alone, or stage 2 alone from a stage-1 checkpoint
    (``stage1_checkpoint``); ``allow_unaligned: true`` runs stage 2 from unaligned towers (the plain contrastive
    baseline that tends to collapse).

    Load from YAML with :meth:`from_yaml`; every field is also a ``--flag`` of ``recipes/daft.py``.
    """

    # ---- towers
    teacher: str = field(default="sentence-transformers/all-MiniLM-L6-v2", metadata={"help": "document tower"})
    teacher_revision: str | None = field(default=None, metadata={"help": "teacher revision on the Hub"})
    query_encoder: str = field(default="static", metadata={"help": "static | transformer"})
    query_init: str = field(default="random", metadata={"help": "static: random | teacher (token embeddings)"})
    query_embedding_dim: int | None = field(default=None, metadata={"help": "static+random: token-vector width"})
    query_checkpoint: str | None = field(
        default=None, metadata={"help": "transformer: another checkpoint (default: random init)"}
    )
    query_layers: list[int] | None = field(default=None, metadata={"help": "transformer+checkpoint: layers kept"})
    query_num_layers: int = field(default=2, metadata={"help": "transformer, random init: depth"})
    query_hidden_size: int = field(default=128, metadata={"help": "transformer, random init: width"})
    query_num_attention_heads: int = field(default=4, metadata={"help": "transformer, random init: heads"})
    query_max_seq_length: int = field(default=64, metadata={"help": "transformer: max query tokens"})
    query_dense: bool = field(default=False, metadata={"help": "append a Dense projection to the teacher's width"})
    allow_different_tokenizers: bool = False

    # ---- stages
    stages: list[str] = field(default_factory=lambda: list(STAGES), metadata={"help": "align and/or finetune"})
    stage1_checkpoint: str | None = field(
        default=None, metadata={"help": "stage-1 output (default OUTPUT_DIR.stage1); stage 2's input"}
    )
    allow_unaligned: bool = field(
        default=False, metadata={"help": "stage 2 alone from unaligned towers (plain contrastive baseline)"}
    )

    # ---- data
    train_dataset: str = field(default="", metadata={"help": "BEIR FOLDER[:split] (default split train)"})
    train_max_queries: int | None = field(default=None, metadata={"help": "sub-sample the training split"})
    train_max_documents: int | None = field(
        default=None, metadata={"help": "sub-sample its corpus (smoke runs; default: whole corpus, cached)"}
    )
    align_on: str = field(default="both", metadata={"help": "stage-1 texts: documents | queries | both"})
    align_queries: list[str] = field(default_factory=list, metadata={"help": "extra stage-1 query sources"})
    align_max_documents: int | None = field(default=None, metadata={"help": "cap on stage-1 documents"})
    heldout_texts: int = field(default=500, metadata={"help": "texts held out for divergence / collapse checks"})
    max_train_pairs: int | None = field(default=None, metadata={"help": "cap on stage-2 (query, positive) pairs"})
    eval_datasets: list[str] = field(default_factory=list, metadata={"help": "BEIR FOLDER[:split] (default test)"})
    eval_max_queries: int | None = field(default=None, metadata={"help": "sub-sample evaluation (smoke runs)"})
    eval_max_documents: int | None = field(default=None, metadata={"help": "sub-sample evaluation corpora"})
    dev_dataset: str | None = field(
        default=None, metadata={"help": "BEIR FOLDER:split for stage-2 early stopping (default: held-out train)"}
    )
    dev_holdout_queries: int = field(default=100, metadata={"help": "train queries held out as dev (no dev set)"})
    dev_max_queries: int = 200
    dev_max_documents: int | None = field(default=None, metadata={"help": "sub-sample the dev corpus"})
    exclude_eval_queries: bool = field(default=True, metadata={"help": "never train on evaluation queries"})

    # ---- output
    output_dir: str = field(default="daft-model", metadata={"help": "the final model folder"})
    checkpoint_dir: str | None = field(default=None, metadata={"help": "default: OUTPUT_DIR.checkpoints"})
    overwrite_output_dir: bool = False
    resume_from_checkpoint: str | None = field(
        default=None, metadata={"help": "'auto': resume each stage (and reuse a finished stage 1), or none"}
    )

    # ---- stage 1: alignment
    align_loss: str = field(
        default="mse", metadata={"help": "mse | cosine (query tower(x) ≈ document tower(x)) | contrastive (paper)"}
    )
    align_learning_rate: float | None = field(default=None, metadata={"help": "default: 0.05 static, 1e-4 else"})
    align_num_train_epochs: float = 20.0
    align_max_steps: int = -1
    align_batch_size: int = 64
    align_eval_steps: int = field(default=50, metadata={"help": "steps between divergence estimates"})
    align_patience: int = field(default=2, metadata={"help": "estimates without improvement before stopping"})
    divergence_k: int = field(default=1, metadata={"help": "neighbour rank of the KL estimator"})

    # ---- stage 2: contrastive fine-tuning
    finetune_loss: str = field(
        default="auto",
        metadata={
            "help": "auto (frozen_documents when only the query tower trains, else mnrl) | frozen_documents "
            "(precomputed positives) | mnrl | cached_mnrl (large batches)"
        },
    )
    finetune_towers: str = field(
        default="query", metadata={"help": "query (index stays valid) | both (re-index needed)"}
    )
    finetune_learning_rate: float | None = field(default=None, metadata={"help": "query tower; default as stage 1"})
    finetune_document_learning_rate: float = field(default=2e-5, metadata={"help": "document tower (towers=both)"})
    finetune_num_train_epochs: float = 10.0
    finetune_max_steps: int = -1
    finetune_batch_size: int = 64
    finetune_mini_batch_size: int = field(default=16, metadata={"help": "cached_mnrl mini-batch"})
    finetune_scale: float = field(default=20.0, metadata={"help": "similarity scale (1 / temperature)"})
    gather_across_devices: bool = field(
        default=True, metadata={"help": "under DDP, in-batch negatives from every rank's batch (stage 2)"}
    )
    finetune_eval_steps: int = field(default=50, metadata={"help": "steps between dev evaluations"})
    finetune_patience: int = field(default=3, metadata={"help": "dev evaluations without improvement"})

    # ---- shared optimisation
    warmup_ratio: float = 0.1
    weight_decay: float = 0.0
    logging_steps: int = 10
    save_total_limit: int = 2
    seed: int = 42

    # ---- collapse diagnostics
    collapse_action: str = field(default="warn", metadata={"help": "warn | stop"})
    collapse_check_steps: int | None = field(default=None, metadata={"help": "default: the stage's eval steps"})
    collapse_probe_texts: int = field(default=256, metadata={"help": "held-out texts the diagnostics encode"})
    collapse_max_mean_cosine: float = 0.9
    collapse_min_effective_rank: float = 2.0
    collapse_min_variance_ratio: float = 0.05

    # ---- evaluation and caches
    teacher_batch_size: int = field(default=64, metadata={"help": "batch size for teacher targets / evaluation"})
    cache_dir: str | None = field(default=None, metadata={"help": "embedding cache root (default ~/.cache/asym_st)"})
    measure_latency: bool = True
    latency_queries: int = 200
    report_to: str = "none"

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------------------------------------- checks

    def validate(self) -> None:
        """Check values that would otherwise fail late, after minutes of work."""
        choices = {
            "align_loss": ALIGN_LOSSES,
            "finetune_loss": FINETUNE_LOSSES,
            "align_on": ALIGN_ON,
            "finetune_towers": ("query", "both"),
            "collapse_action": ("warn", "stop"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name}={getattr(self, name)!r}; choose one of {', '.join(allowed)}.")
        if self.finetune_loss == "frozen_documents" and self.finetune_towers == "both":
            raise ConfigError(
                "finetune_loss=frozen_documents needs a frozen document tower, but finetune_towers=both trains it; "
                "use auto, mnrl or cached_mnrl."
            )
        unknown = [s for s in self.stages if s not in STAGES]
        if unknown or not self.stages:
            raise ConfigError(f"stages={self.stages!r}; give 'align', 'finetune' or both (in that order).")
        if list(self.stages) != [s for s in STAGES if s in self.stages]:
            raise ConfigError(f"stages={self.stages!r}: stage 1 (align) runs before stage 2 (finetune).")
        positive = (
            "align_batch_size",
            "finetune_batch_size",
            "finetune_mini_batch_size",
            "align_eval_steps",
            "finetune_eval_steps",
            "teacher_batch_size",
            "divergence_k",
            "collapse_probe_texts",
            "finetune_scale",
            "finetune_document_learning_rate",
        )
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}.")
        for name in ("align_learning_rate", "finetune_learning_rate"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}.")
        if self.heldout_texts < 8:
            raise ConfigError(
                f"heldout_texts must be at least 8 (the divergence needs two halves), got {self.heldout_texts}."
            )
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}.")
        for stage in ("align", "finetune"):
            if getattr(self, f"{stage}_max_steps") <= 0 and getattr(self, f"{stage}_num_train_epochs") <= 0:
                raise ConfigError(f"Set {stage}_num_train_epochs > 0 or {stage}_max_steps > 0.")
        try:
            self.light_encoder()
        except ValueError as error:
            raise ConfigError(f"query encoder: {error}") from error

    def require_sources(self) -> None:
        """Checks needed before a run (not at construction, so configs can be filled in steps)."""
        if not self.train_dataset:
            raise ConfigError("train_dataset is empty: name a BEIR folder with training queries (FOLDER:train).")
        for spec in [self.train_dataset, *self.eval_datasets, *([self.dev_dataset] if self.dev_dataset else [])]:
            folder = _folder(spec)
            if not Path(folder).is_dir():
                raise ConfigError(f"Dataset {spec!r}: folder {folder} does not exist.")
        if "align" not in self.stages:
            self._require_stage1_input()
        self._require_free(Path(self.output_dir), "output_dir")
        if self.stages == list(STAGES) and self.resume_from_checkpoint != "auto":
            self._require_free(Path(self.resolved_stage1_dir), "stage1_checkpoint")

    def _require_stage1_input(self) -> None:
        if self.stage1_checkpoint is None:
            if not self.allow_unaligned:
                raise ConfigError(
                    "stages=[finetune] needs stage1_checkpoint: the folder that stage 1 (align) wrote. To fine-tune "
                    "unaligned towers on purpose (the plain contrastive baseline, which tends to collapse), set "
                    "allow_unaligned: true."
                )
            return
        path = Path(self.stage1_checkpoint)
        if not path.is_dir():
            raise ConfigError(
                f"stage1_checkpoint {path} does not exist. Run stage 1 first (stages: [align], which writes "
                f"{self.output_dir}), or point stage1_checkpoint at the folder a stage-1 run wrote."
            )
        if not (path / "modules.json").is_file():
            raise ConfigError(
                f"stage1_checkpoint {path} is not a saved model (no modules.json); point it at the folder a stage-1 "
                "run wrote (OUTPUT_DIR.stage1, or OUTPUT_DIR of a stages: [align] run)."
            )

    def _require_free(self, output: Path, name: str) -> None:
        if output.is_dir() and any(output.iterdir()) and not self.overwrite_output_dir:
            raise ConfigError(f"{name} {output} exists and is not empty; set overwrite_output_dir to replace it.")

    # ------------------------------------------------------------------------------------------- derived

    @property
    def resolved_checkpoint_dir(self) -> str:
        return self.checkpoint_dir or f"{self.output_dir.rstrip('/')}.checkpoints"

    @property
    def resolved_stage1_dir(self) -> str:
        """Where stage 1 saves its model when stage 2 follows (``stage1_checkpoint`` or ``OUTPUT_DIR.stage1``)."""
        return self.stage1_checkpoint or f"{self.output_dir.rstrip('/')}.stage1"

    def light_encoder(self) -> LightEncoderConfig:
        return LightEncoderConfig(
            kind=self.query_encoder,
            init=self.query_init,
            embedding_dim=self.query_embedding_dim,
            checkpoint=self.query_checkpoint,
            layers=self.query_layers,
            num_layers=self.query_num_layers,
            hidden_size=self.query_hidden_size,
            num_attention_heads=self.query_num_attention_heads,
            max_seq_length=self.query_max_seq_length,
            dense=self.query_dense,
            allow_different_tokenizers=self.allow_different_tokenizers,
            seed=self.seed,
        )

    def collapse_detector(self) -> CollapseDetector:
        return CollapseDetector(
            max_mean_cosine=self.collapse_max_mean_cosine,
            min_effective_rank=self.collapse_min_effective_rank,
            min_variance_ratio=self.collapse_min_variance_ratio,
        )

    def stage_settings(self, stage: str) -> StageSettings:
        """Optimisation settings of ``"align"`` or ``"finetune"`` (checkpoints in ``CHECKPOINT_DIR/<stage>``)."""
        if stage not in STAGES:
            raise ValueError(f"Unknown stage {stage!r}; choose one of {', '.join(STAGES)}.")
        default_lr = _DEFAULT_LEARNING_RATES[self.query_encoder]
        align_lr = self.align_learning_rate or default_lr
        learning_rate = align_lr if stage == "align" else (self.finetune_learning_rate or align_lr)
        eval_steps = getattr(self, f"{stage}_eval_steps")
        return StageSettings(
            name=stage,
            resolved_checkpoint_dir=str(Path(self.resolved_checkpoint_dir) / stage),
            resume_from_checkpoint=self.resume_from_checkpoint,
            learning_rate=learning_rate,
            num_train_epochs=getattr(self, f"{stage}_num_train_epochs"),
            max_steps=getattr(self, f"{stage}_max_steps"),
            per_device_train_batch_size=getattr(self, f"{stage}_batch_size"),
            eval_steps=eval_steps,
            save_steps=eval_steps,  # load_best_model_at_end needs a checkpoint at every evaluation
            patience=getattr(self, f"{stage}_patience"),
            warmup_ratio=self.warmup_ratio,
            weight_decay=self.weight_decay,
            logging_steps=self.logging_steps,
            save_total_limit=self.save_total_limit,
            seed=self.seed,
            report_to=self.report_to,
        )


def _folder(spec: str) -> str:
    return split_dataset_spec(spec)[0]
