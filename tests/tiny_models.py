"""Tiny random models for fast unit tests (no download: vocabulary and weights are made here)."""

from __future__ import annotations

import string
from pathlib import Path

import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
from transformers import BertConfig, BertModel, BertTokenizerFast

_WORDS = (
    "the a of and to in is for on with what how why who which are was were be by as at from that this "
    "query document passage retrieval search index dense sparse model tower encoder teacher student "
    "cat dog paris france capital city science protein cell gene covid vaccine study result"
).split()


def _vocab(cased: bool) -> list[str]:
    letters = string.ascii_letters if cased else string.ascii_lowercase
    words = [w.capitalize() for w in _WORDS] + _WORDS if cased else _WORDS
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    pieces = list(letters) + [f"##{c}" for c in letters] + list(string.digits + string.punctuation)
    return specials + list(dict.fromkeys(words + pieces))


def make_tiny_sentence_transformer(
    folder: Path, layers: int = 4, hidden: int = 32, cased: bool = False, seed: int = 0, normalize: bool = True
) -> Path:
    """Create and save ``[Transformer(tiny BERT), Pooling(mean), Normalize]``; return the model folder."""
    folder = Path(folder)
    hf_dir = folder / "hf"
    hf_dir.mkdir(parents=True, exist_ok=True)
    vocab = {token: index for index, token in enumerate(_vocab(cased))}
    tokenizer = BertTokenizerFast(vocab=vocab, do_lower_case=not cased)
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=hidden * 2,
        max_position_embeddings=128,
        # No dropout: a random tiny model's embeddings differ by less than dropout noise, which would drown
        # the signal that training tests look for.
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    BertModel(config).save_pretrained(hf_dir)
    tokenizer.save_pretrained(hf_dir)
    transformer = Transformer(str(hf_dir), max_seq_length=64)
    modules = [transformer, Pooling(transformer.get_embedding_dimension(), "mean")]
    if normalize:
        modules.append(Normalize())
    model_dir = folder / "st"
    SentenceTransformer(modules=modules, device="cpu").save(str(model_dir))
    return model_dir
