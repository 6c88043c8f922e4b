"""The document side at scale: a whole corpus encoded by the document tower, sharded over processes."""

from asym_st.indexing.corpus_encoding import CorpusEncodingConfig, corpus_texts, encode_corpus

__all__ = ["CorpusEncodingConfig", "corpus_texts", "encode_corpus"]
