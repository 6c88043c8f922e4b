"""A tiny random T5 with a word-level tokenizer, saved like a Hub checkpoint (no seq2seq weights exist offline)."""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    BartConfig,
    BartForConditionalGeneration,
    PreTrainedTokenizerFast,
    T5Config,
    T5ForConditionalGeneration,
)

from tests.tiny_models import _WORDS


def _tokenizer(specials: list[str]) -> tuple[PreTrainedTokenizerFast, dict[str, int]]:
    vocab = {token: index for index, token in enumerate(specials + list(dict.fromkeys(_WORDS)))}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    named = {"pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>"}
    if "<s>" in specials:
        named["bos_token"] = "<s>"
    return PreTrainedTokenizerFast(tokenizer_object=backend, **named), vocab


def make_tiny_t5(folder: Path, seed: int = 0) -> Path:
    """Save a 1-layer, 16-wide random ``T5ForConditionalGeneration`` and its tokenizer to ``folder``."""
    folder = Path(folder)
    tokenizer, vocab = _tokenizer(["<pad>", "</s>", "<unk>"])
    torch.manual_seed(seed)
    config = T5Config(
        vocab_size=len(vocab),
        d_model=16,
        d_kv=8,
        d_ff=32,
        num_layers=1,
        num_decoder_layers=1,
        num_heads=2,
        dropout_rate=0.0,
        pad_token_id=vocab["<pad>"],
        eos_token_id=vocab["</s>"],
        decoder_start_token_id=vocab["<pad>"],
    )
    T5ForConditionalGeneration(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def make_tiny_bart(folder: Path, seed: int = 0) -> Path:
    """Save a 1-layer, 16-wide random ``BartForConditionalGeneration`` and its tokenizer to ``folder``."""
    folder = Path(folder)
    tokenizer, vocab = _tokenizer(["<s>", "<pad>", "</s>", "<unk>"])
    torch.manual_seed(seed)
    config = BartConfig(
        vocab_size=len(vocab),
        d_model=16,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        max_position_embeddings=128,
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        bos_token_id=vocab["<s>"],
        pad_token_id=vocab["<pad>"],
        eos_token_id=vocab["</s>"],
        decoder_start_token_id=vocab["</s>"],
        forced_eos_token_id=vocab["</s>"],
    )
    BartForConditionalGeneration(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
