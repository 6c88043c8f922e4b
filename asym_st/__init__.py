"""asym-st: asymmetric dense retrievers on sentence-transformers.

A large document tower encodes the corpus offline; a small query tower, often a few layers of the same teacher,
encodes each query online in the same embedding space. Models are plain ``SentenceTransformer`` objects with a
built-in ``Router``, so they load without asym-st installed.
"""

from asym_st.hub import CardConfig, PushConfig, push_model, render_card, write_card
from asym_st.indexing import CorpusEncodingConfig, encode_corpus
from asym_st.modeling import (
    DOCUMENT_ROUTE,
    QUERY_ROUTE,
    AsymmetricModelRecord,
    IncompatibleTowersError,
    NotASentenceTransformerError,
    QueryTowerConfig,
    assemble_asymmetric_model,
    build_asymmetric_model,
    extract_tower,
    fingerprint_modules,
    freeze_tower,
    index_is_compatible,
    is_asymmetric,
    load_asymmetric_model,
    resolve_layers,
    save_asymmetric_model,
    save_tower,
    tower_modules,
)
from asym_st.training import (
    DAFTConfig,
    EmbedDistillConfig,
    MD2PRConfig,
    QEDConfig,
    TASBalancedConfig,
    distill_query_tower,
    embed_distill,
    md2pr,
    tas_balanced,
    train_daft,
)
from asym_st.utils import OutputExistsError

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "DOCUMENT_ROUTE",
    "QUERY_ROUTE",
    "AsymmetricModelRecord",
    "IncompatibleTowersError",
    "NotASentenceTransformerError",
    "OutputExistsError",
    "QueryTowerConfig",
    "assemble_asymmetric_model",
    "build_asymmetric_model",
    "extract_tower",
    "fingerprint_modules",
    "freeze_tower",
    "index_is_compatible",
    "is_asymmetric",
    "load_asymmetric_model",
    "resolve_layers",
    "save_asymmetric_model",
    "save_tower",
    "tower_modules",
    "QEDConfig",
    "distill_query_tower",
    "EmbedDistillConfig",
    "embed_distill",
    "DAFTConfig",
    "train_daft",
    "TASBalancedConfig",
    "tas_balanced",
    "MD2PRConfig",
    "md2pr",
    "CorpusEncodingConfig",
    "encode_corpus",
    "CardConfig",
    "PushConfig",
    "push_model",
    "render_card",
    "write_card",
]
