"""The QED configuration: one dataclass that the Python API, the CLI, YAML files and recipes share."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from asym_st.data.beir import split_dataset_spec
from asym_st.training.config_io import ConfigError, YamlConfigMixin

__all__ = ["QEDConfig", "ConfigError"]

DISTANCES = ("mse", "l2", "cosine")


@dataclass
class QEDConfig(YamlConfigMixin):
    """Query-encoder distillation (QED) settings. Defaults follow the paper: MSE, lr 1e-4 with warm-up, the
    teacher's mean pooling, student layers ``[0, L-1]``.

    Load from YAML with :meth:`from_yaml`; every field is also a ``--flag`` of ``asym-st distill`` and of
    ``recipes/qed.py`` (through ``transformers.HfArgumentParser``).
    """

    teacher: str = field(default="sentence-transformers/all-MiniLM-L6-v2", metadata={"help": "teacher id or path"})
    teacher_revision: str | None = field(default=None, metadata={"help": "teacher revision on the Hub"})
    query_layers: list[int] | None = field(default=None, metadata={"help": "explicit teacher layers, e.g. 0 5"})
    layer_strategy: str = field(default="first_last", metadata={"help": "first_last | first_k | evenly_spaced"})
    num_query_layers: int = field(default=2, metadata={"help": "layers in the query tower (without query_layers)"})
    query_max_seq_length: int = field(default=64, metadata={"help": "max tokens of the query tower"})

    train_queries: list[str] = field(default_factory=list, metadata={"help": "query sources (see docs)"})
    max_train_queries: int | None = field(default=None, metadata={"help": "cap on training queries"})
    eval_datasets: list[str] = field(
        default_factory=list, metadata={"help": "BEIR folders (FOLDER or FOLDER:split, default split test)"}
    )
    dev_dataset: str | None = field(default=None, metadata={"help": "BEIR FOLDER:split logged during training"})
    dev_max_queries: int = field(default=200, metadata={"help": "dev queries (sub-sampled)"})
    dev_max_documents: int | None = field(
        default=None, metadata={"help": "sub-sample the dev corpus (default: whole corpus, embeddings cached)"}
    )
    exclude_eval_queries: bool = field(default=True, metadata={"help": "never train on evaluation queries"})

    output_dir: str = field(default="qed-student", metadata={"help": "the final model folder"})
    checkpoint_dir: str | None = field(default=None, metadata={"help": "default: OUTPUT_DIR.checkpoints"})
    overwrite_output_dir: bool = field(default=False, metadata={"help": "replace an existing output folder"})
    resume_from_checkpoint: str | None = field(
        default=None, metadata={"help": "'auto' (last checkpoint in checkpoint_dir), a path, or none"}
    )

    distance: str = field(default="mse", metadata={"help": "mse (QED) | l2 | cosine"})
    learning_rate: float = 1e-4
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    num_train_epochs: float = 10.0
    max_steps: int = -1
    per_device_train_batch_size: int = 64
    logging_steps: int = 50
    save_steps: int = 500
    eval_steps: int | None = field(default=None, metadata={"help": "dev evaluation every N steps (default save_steps)"})
    save_total_limit: int = 2
    seed: int = 42

    teacher_batch_size: int = field(default=64, metadata={"help": "batch size for teacher targets / evaluation"})
    cache_dir: str | None = field(default=None, metadata={"help": "embedding cache root (default ~/.cache/asym_st)"})
    measure_latency: bool = field(default=True, metadata={"help": "measure query latency of student and teacher"})
    latency_queries: int = 200
    report_to: str = field(default="none", metadata={"help": "trainer loggers (none, tensorboard, wandb, ...)"})

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check values that would otherwise fail late, after minutes of work."""
        if self.distance not in DISTANCES:
            raise ConfigError(f"distance={self.distance!r}; choose one of {', '.join(DISTANCES)}.")
        if self.layer_strategy not in ("first_last", "first_k", "evenly_spaced"):
            raise ConfigError(f"layer_strategy={self.layer_strategy!r}; choose first_last, first_k or evenly_spaced.")
        for name in ("learning_rate", "per_device_train_batch_size", "num_query_layers", "teacher_batch_size"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}.")
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}.")
        if self.max_steps <= 0 and self.num_train_epochs <= 0:
            raise ConfigError("Set num_train_epochs > 0 or max_steps > 0.")

    def require_sources(self) -> None:
        """Checks needed before a run (not at construction, so configs can be filled in steps)."""
        if not self.train_queries:
            raise ConfigError("train_queries is empty: name at least one query source (a file, FOLDER:train, ...).")
        for spec in self.eval_datasets + ([self.dev_dataset] if self.dev_dataset else []):
            folder, _ = split_dataset_spec(spec)
            if not Path(folder).is_dir():
                raise ConfigError(f"Evaluation dataset {spec!r}: folder {folder} does not exist.")
        output = Path(self.output_dir)
        if output.is_dir() and any(output.iterdir()) and not self.overwrite_output_dir:
            raise ConfigError(f"output_dir {output} exists and is not empty; set overwrite_output_dir to replace it.")

    @property
    def resolved_checkpoint_dir(self) -> str:
        return self.checkpoint_dir or f"{self.output_dir.rstrip('/')}.checkpoints"
