"""Light query encoders for heterogeneous towers (DAFT): a static token-embedding encoder and a small transformer.

DAFT (Leonhardt et al., 2022) pairs a large document encoder with a query encoder that shares neither its
parameters nor its initialisation, e.g. a mean of static token embeddings or a 2-layer transformer. Both are built
here from sentence-transformers' own modules, so the towers and the asymmetric model made from them load with
plain ``SentenceTransformer(path)``:

* ``static``: ``StaticEmbedding`` (the mean of per-token vectors, an ``nn.EmbeddingBag``) over the teacher's
  tokenizer, initialised at random or from the teacher's input token embeddings, then an optional ``Dense`` and
  the teacher's normalisation;
* ``transformer``: a few-layer transformer, either randomly initialised with the teacher's tokenizer and
  architecture (shrunk), or the chosen layers of another checkpoint (through
  :func:`~asym_st.modeling.towers.build_asymmetric_model` with ``QueryTowerConfig(encoder=...)``).
"""

from __future__ import annotations

import copy
import tempfile
from dataclasses import asdict, dataclass
from typing import Literal

import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.modules import Dense, Normalize, Pooling, StaticEmbedding, Transformer
from torch import nn
from transformers import AutoModel

from asym_st.modeling.config import QueryTowerConfig
from asym_st.modeling.towers import (
    DOCUMENT_ROUTE,
    IncompatibleTowersError,
    assemble_asymmetric_model,
    build_asymmetric_model,
    load_sentence_transformer,
    tower_embedding_dimension,
    tower_modules,
)

__all__ = [
    "LightEncoderConfig",
    "static_embedding_encoder",
    "small_transformer_encoder",
    "build_light_encoder",
    "build_light_asymmetric_model",
]

ENCODER_KINDS = ("static", "transformer")
STATIC_INITS = ("random", "teacher")


@dataclass
class LightEncoderConfig:
    """How to build a light query encoder next to a teacher's document tower.

    Args:
        kind: ``"static"`` (mean of token embeddings) or ``"transformer"`` (a few-layer transformer).
        init: static only: ``"random"`` (normal(0, 1) token vectors) or ``"teacher"`` (the teacher's input token
            embedding matrix, i.e. its layer-0 lookup table; same vocabulary, no context).
        embedding_dim: static + random only: the token-vector width (default: the document tower's width).
        checkpoint: transformer only: another checkpoint (Hub id or path, sentence-transformers or plain
            transformers) whose ``layers`` are kept. ``None``: a randomly initialised transformer with the teacher's
            tokenizer and architecture, ``num_layers`` deep and ``hidden_size`` wide.
        layers: transformer + checkpoint: which layers of the checkpoint to keep (default: all).
        num_layers: transformer, random init: depth.
        hidden_size: transformer, random init: width.
        num_attention_heads: transformer, random init: attention heads (must divide ``hidden_size``).
        max_seq_length: transformer: the longest input in tokens (queries are short).
        dense: append a trainable ``Dense`` (linear, no activation) to the document tower's width. Needed when the
            widths differ (except with ``checkpoint``, where the projection is added automatically).
        allow_different_tokenizers: with ``checkpoint``: accept a tokenizer that differs from the teacher's.
        seed: the random initialisation's seed.
    """

    kind: Literal["static", "transformer"] = "static"
    init: Literal["random", "teacher"] = "random"
    embedding_dim: int | None = None
    checkpoint: str | None = None
    layers: list[int] | None = None
    num_layers: int = 2
    hidden_size: int = 128
    num_attention_heads: int = 4
    max_seq_length: int = 64
    dense: bool = False
    allow_different_tokenizers: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in ENCODER_KINDS:
            raise ValueError(f"LightEncoderConfig.kind={self.kind!r}; choose one of {', '.join(ENCODER_KINDS)}.")
        if self.init not in STATIC_INITS:
            raise ValueError(f"LightEncoderConfig.init={self.init!r}; choose one of {', '.join(STATIC_INITS)}.")
        if self.kind == "static" and self.init == "teacher" and self.embedding_dim is not None:
            raise ValueError(
                "LightEncoderConfig: embedding_dim cannot be set with init='teacher' (the teacher's token embeddings "
                "fix the width); add dense=True to project them instead."
            )
        for name in ("num_layers", "hidden_size", "num_attention_heads", "max_seq_length"):
            if getattr(self, name) <= 0:
                raise ValueError(f"LightEncoderConfig.{name} must be positive, got {getattr(self, name)}.")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"LightEncoderConfig: hidden_size={self.hidden_size} is not divisible by "
                f"num_attention_heads={self.num_attention_heads}."
            )

    def describe(self) -> str:
        """A short label, e.g. ``static(random, 384 dims)`` or ``transformer(2 layers, random init)``."""
        if self.kind == "static":
            width = "teacher width" if self.embedding_dim is None else f"{self.embedding_dim} dims"
            return f"static({self.init}, {width}{', dense' if self.dense else ''})"
        if self.checkpoint:
            return f"transformer({self.checkpoint}, layers {self.layers or 'all'})"
        return f"transformer({self.num_layers} layers × {self.hidden_size}, random init)"

    def to_dict(self) -> dict:
        return asdict(self)


def _teacher_transformer(teacher: SentenceTransformer) -> Transformer:
    first = tower_modules(teacher, DOCUMENT_ROUTE)[0]
    if not isinstance(first, Transformer):
        raise ValueError(
            f"The teacher's document tower starts with {type(first).__name__}, not a Transformer, so there is no "
            "tokenizer or token-embedding table to build a light encoder from."
        )
    return first


def _normalizes(teacher: SentenceTransformer) -> bool:
    return any(isinstance(m, Normalize) for m in tower_modules(teacher, DOCUMENT_ROUTE))


def _finish(encoder_modules: list[nn.Module], width: int, teacher: SentenceTransformer, dense: bool) -> list:
    target = tower_embedding_dimension(tower_modules(teacher, DOCUMENT_ROUTE))
    if dense:
        # Linear (identity activation): a projection that alignment / fine-tuning trains.
        encoder_modules.append(Dense(width, target, bias=True, activation_function=nn.Identity()))
    if _normalizes(teacher):
        encoder_modules.append(Normalize())
    return encoder_modules


def _standalone(modules: list[nn.Module], teacher: SentenceTransformer) -> SentenceTransformer:
    model = SentenceTransformer(
        modules=modules, device=str(teacher.device), similarity_fn_name=teacher.similarity_fn_name
    )
    model.model_card_data.base_model = teacher.model_card_data.base_model
    return model


def static_embedding_encoder(
    teacher: str | SentenceTransformer,
    init: Literal["random", "teacher"] = "random",
    embedding_dim: int | None = None,
    dense: bool = False,
    seed: int = 0,
) -> SentenceTransformer:
    """A static token-embedding encoder (``StaticEmbedding`` → [``Dense``] → [``Normalize``]) over the teacher's
    tokenizer. It encodes a query with one table lookup per token and a mean, no attention.

    Args:
        teacher: the document encoder (id, path or model): its tokenizer, width and normalisation are used.
        init: ``"random"`` or ``"teacher"`` (the teacher's input token embeddings).
        embedding_dim: token-vector width for ``init="random"`` (default: the teacher's output width).
        dense: append a trainable linear ``Dense`` to the teacher's output width.
        seed: seed of the random initialisation.

    Example::

        from asym_st.modeling.light_encoders import static_embedding_encoder

        encoder = static_embedding_encoder("sentence-transformers/all-MiniLM-L6-v2", init="teacher")
        encoder.save("static-query-encoder")  # SentenceTransformer("static-query-encoder") loads it
    """
    teacher = load_sentence_transformer(teacher)
    transformer = _teacher_transformer(teacher)
    tokenizer = transformer.tokenizer
    if init == "teacher":
        weights = transformer.auto_model.get_input_embeddings().weight.detach().clone().float().cpu()
        static = StaticEmbedding(tokenizer, embedding_weights=weights)
    elif init == "random":
        width = embedding_dim or tower_embedding_dimension(tower_modules(teacher, DOCUMENT_ROUTE))
        generator = torch.Generator().manual_seed(seed)
        weights = torch.randn(len(tokenizer), width, generator=generator)
        static = StaticEmbedding(tokenizer, embedding_weights=weights)
    else:
        raise ValueError(f"init must be 'random' or 'teacher', got {init!r}.")
    modules = _finish([static], static.embedding_dim, teacher, dense)
    return _standalone(modules, teacher)


def small_transformer_encoder(
    teacher: str | SentenceTransformer,
    num_layers: int = 2,
    hidden_size: int = 128,
    num_attention_heads: int = 4,
    max_seq_length: int = 64,
    dense: bool = False,
    seed: int = 0,
) -> SentenceTransformer:
    """A randomly initialised few-layer transformer with the teacher's architecture and tokenizer, shrunk to
    ``num_layers`` × ``hidden_size``, then the teacher's pooling, an optional ``Dense`` and normalisation.

    For the layers of *another checkpoint* use :func:`build_light_asymmetric_model` with
    ``LightEncoderConfig(kind="transformer", checkpoint=...)``.
    """
    teacher = load_sentence_transformer(teacher)
    transformer = _teacher_transformer(teacher)
    config = copy.deepcopy(transformer.auto_model.config)
    missing = [a for a in ("num_hidden_layers", "hidden_size", "num_attention_heads") if not hasattr(config, a)]
    if missing:
        raise ValueError(
            f"The teacher's {type(config).__name__} has no {missing}; build the small transformer from a "
            "checkpoint instead (LightEncoderConfig(kind='transformer', checkpoint=...))."
        )
    config.num_hidden_layers = num_layers
    config.hidden_size = hidden_size
    config.num_attention_heads = num_attention_heads
    if hasattr(config, "intermediate_size"):
        config.intermediate_size = 4 * hidden_size
    torch.manual_seed(seed)
    hf_model = AutoModel.from_config(config)
    pooling = next((m for m in tower_modules(teacher, DOCUMENT_ROUTE) if isinstance(m, Pooling)), None)
    # sentence-transformers' Transformer loads from a folder: write the fresh model and the teacher's tokenizer.
    with tempfile.TemporaryDirectory(prefix="asym_st_small_transformer_") as folder:
        hf_model.save_pretrained(folder)
        transformer.tokenizer.save_pretrained(folder)
        small = Transformer(folder, max_seq_length=max_seq_length)
    modules = [small, Pooling(hidden_size, pooling_mode=pooling.pooling_mode if pooling is not None else "mean")]
    return _standalone(_finish(modules, hidden_size, teacher, dense), teacher)


def build_light_encoder(teacher: str | SentenceTransformer, config: LightEncoderConfig) -> SentenceTransformer:
    """The standalone light query encoder that ``config`` describes (``static`` or random-init ``transformer``)."""
    if config.kind == "static":
        return static_embedding_encoder(teacher, config.init, config.embedding_dim, config.dense, config.seed)
    if config.checkpoint:
        raise ValueError("A transformer from a checkpoint is built with build_light_asymmetric_model().")
    return small_transformer_encoder(
        teacher,
        num_layers=config.num_layers,
        hidden_size=config.hidden_size,
        num_attention_heads=config.num_attention_heads,
        max_seq_length=config.max_seq_length,
        dense=config.dense,
        seed=config.seed,
    )


def build_light_asymmetric_model(
    teacher: str | SentenceTransformer, config: LightEncoderConfig | None = None, revision: str | None = None
) -> SentenceTransformer:
    """An asymmetric model: the teacher as (frozen) document tower, a light encoder as query tower.

    Raises:
        IncompatibleTowersError: the light encoder's width differs from the document tower's and ``dense`` is off;
            the message says how to add the projection.

    Example::

        from asym_st.modeling.light_encoders import LightEncoderConfig, build_light_asymmetric_model

        model = build_light_asymmetric_model("sentence-transformers/all-MiniLM-L6-v2", LightEncoderConfig("static"))
        model.encode_query(["fast query"])  # mean of static token vectors
        model.encode_document(["a passage"])  # all-MiniLM-L6-v2
    """
    config = config or LightEncoderConfig()
    teacher_model = load_sentence_transformer(teacher, revision=revision)
    if config.kind == "transformer" and config.checkpoint:
        model = build_asymmetric_model(
            teacher_model,
            QueryTowerConfig(
                layers=config.layers,
                encoder=config.checkpoint,
                truncate_encoder=config.layers is not None,
                allow_different_tokenizers=config.allow_different_tokenizers,
                max_seq_length=config.max_seq_length,
            ),
            revision=revision,
        )
    else:
        encoder = build_light_encoder(teacher_model, config)
        try:
            model = assemble_asymmetric_model(encoder, teacher_model, add_projection=False)
        except IncompatibleTowersError as error:
            if "dimensions" not in str(error):
                raise
            raise IncompatibleTowersError(
                f"{error} With a light encoder: set LightEncoderConfig(dense=True) (YAML / flag: query_dense: true) "
                "to append a trainable Dense projection to the document tower's width, or give the static encoder "
                "the document tower's width (embedding_dim / query_embedding_dim)."
            ) from error
    model.asym_st_record.teacher = teacher if isinstance(teacher, str) else model.asym_st_record.teacher
    model.asym_st_record.teacher_revision = revision or model.asym_st_record.teacher_revision
    model.asym_st_record.query_encoder = config.describe()
    model.asym_st_record.extra["light_encoder"] = config.to_dict()
    return model
