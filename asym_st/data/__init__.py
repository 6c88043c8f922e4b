"""Data: query sources, BEIR collections with validation, the on-disk embedding cache and its sharded encoding."""

from asym_st.data.beir import (
    BeirFormatError,
    RetrievalDataset,
    available_splits,
    default_cache_dir,
    document_text,
    load_beir,
)
from asym_st.data.cache import EmbeddingCache, texts_hash
from asym_st.data.queries import QueryFileError, QuerySet, clean_queries, read_query_file
from asym_st.data.sharded_encoding import ShardedEncoding
from asym_st.data.sources import load_retrieval_source

__all__ = [
    "BeirFormatError",
    "RetrievalDataset",
    "available_splits",
    "default_cache_dir",
    "document_text",
    "load_beir",
    "EmbeddingCache",
    "texts_hash",
    "ShardedEncoding",
    "QueryFileError",
    "QuerySet",
    "clean_queries",
    "read_query_file",
    "load_retrieval_source",
]
