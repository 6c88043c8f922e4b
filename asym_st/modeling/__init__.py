"""Towers: build from a teacher, choose layers, assemble, extract, fingerprint, save."""

from asym_st.modeling.config import RECORD_FILE_NAME, AsymmetricModelRecord, QueryTowerConfig
from asym_st.modeling.fingerprint import fingerprint_modules
from asym_st.modeling.layers import LAYER_STRATEGIES, count_parameters, resolve_layers, truncate_transformer
from asym_st.modeling.light_encoders import LightEncoderConfig, build_light_asymmetric_model
from asym_st.modeling.serialization import (
    index_is_compatible,
    load_asymmetric_model,
    refresh_record,
    save_asymmetric_model,
    save_tower,
)
from asym_st.modeling.towers import (
    DOCUMENT_ROUTE,
    QUERY_ROUTE,
    IncompatibleTowersError,
    NotASentenceTransformerError,
    assemble_asymmetric_model,
    build_asymmetric_model,
    extract_tower,
    freeze_tower,
    is_asymmetric,
    load_sentence_transformer,
    tokenizer_differences,
    tower_embedding_dimension,
    tower_modules,
)

__all__ = [
    "RECORD_FILE_NAME",
    "AsymmetricModelRecord",
    "QueryTowerConfig",
    "fingerprint_modules",
    "LAYER_STRATEGIES",
    "LightEncoderConfig",
    "build_light_asymmetric_model",
    "count_parameters",
    "resolve_layers",
    "truncate_transformer",
    "index_is_compatible",
    "load_asymmetric_model",
    "refresh_record",
    "save_asymmetric_model",
    "save_tower",
    "DOCUMENT_ROUTE",
    "QUERY_ROUTE",
    "IncompatibleTowersError",
    "NotASentenceTransformerError",
    "assemble_asymmetric_model",
    "build_asymmetric_model",
    "extract_tower",
    "freeze_tower",
    "is_asymmetric",
    "load_sentence_transformer",
    "tokenizer_differences",
    "tower_embedding_dimension",
    "tower_modules",
]
