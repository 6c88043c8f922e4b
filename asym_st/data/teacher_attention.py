"""Cross-encoder attention summaries for MD2PR's word-level distillation, cached on disk.

For a (query, passage) pair the summary is an ``m × k`` matrix ``A``: how much each of the query's ``m`` content
tokens attends to each of the passage's ``k`` content tokens when a cross-encoder reads ``[CLS] q [SEP] p [SEP]``.

**Aggregation** (``AttentionConfig``): ``a = mean over the chosen layers ℓ and heads h of attn[ℓ, h]`` (each
``attn[ℓ, h]`` a row-stochastic ``L × L`` matrix over the whole input), then the query→passage block (query
content rows, passage content columns; special tokens and padding excluded) is **row-normalised** over the passage:
``A_ij = a_ij / Σ_j' a_ij'``. Default layers: the last one; default heads: all. (The MD2PR paper's abstract says
only that the cross-encoder gives the "word similarities" the dual encoder learns from; its body, with the exact
layers, heads and normalisation, was not reachable offline, so these are this library's choices and are settings.)

**Alignment**: the pair's input is built from the *student towers' own content tokens* (the query tower's
tokenization of the query, the document tower's of the passage, truncated as in training), wrapped in the
cross-encoder's special tokens. Every row and column of ``A`` is therefore one of the student's tokens; this needs the
cross-encoder to share the towers' vocabulary (e.g. a cross-encoder initialised from the bi-encoder's own encoder,
or a public one on the same base vocabulary: ``cross-encoder/ms-marco-MiniLM-L6-v2`` and all-MiniLM-L6-v2 both use
BERT's uncased vocabulary). Other vocabularies are refused (:class:`TokenizerMismatchError`).

**Cache** (:class:`AttentionCache`): one folder per key, ``sha256(cross-encoder fingerprint, aggregation, every
pair's texts and content token ids)``, holding ``attention.npy`` (``N × Q × P`` float16, zero-padded to the largest
pair), ``lengths.npy`` (``N × 2``) and ``meta.json``. It is written atomically (a temporary folder renamed into
place, :func:`asym_st.utils.io.atomic_directory`) and filled batch by batch through a memory-mapped file, so memory
stays bounded by one batch; readers memory-map it too. A missing, partial or mismatched entry is rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.cross_encoder import CrossEncoder
from tqdm.auto import tqdm

from asym_st.data.beir import default_cache_dir
from asym_st.modeling.fingerprint import fingerprint_modules
from asym_st.modeling.towers import DOCUMENT_ROUTE, QUERY_ROUTE, is_asymmetric, tower_modules
from asym_st.utils.io import atomic_directory, atomic_write_json

__all__ = [
    "AttentionCache",
    "AttentionConfig",
    "AttentionSummaries",
    "CrossEncoderAttention",
    "TokenizerMismatchError",
    "content_token_ids",
    "pair_attention",
    "special_token_ids",
]

logger = logging.getLogger(__name__)

_FORMAT_VERSION = 1


class TokenizerMismatchError(ValueError):
    """The cross-encoder and the student's towers do not share a vocabulary: token-level targets cannot align."""


@dataclass
class AttentionConfig:
    """How attention maps are aggregated into one matrix per pair.

    Args:
        layers: layer indices (negative: from the end); ``None``: the last layer.
        heads: head indices; ``None``: all heads.
        batch_size: pairs per cross-encoder forward pass.
        show_progress_bar: a progress bar over pairs.
    """

    layers: list[int] | None = None
    heads: list[int] | None = None
    batch_size: int = 32
    show_progress_bar: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"AttentionConfig.batch_size must be a positive integer, got {self.batch_size!r}.")
        for name in ("layers", "heads"):
            value = getattr(self, name)
            if value is not None and not value:
                raise ValueError(f"AttentionConfig.{name} is empty; use None for the default.")


@dataclass
class AttentionSummaries:
    """``N`` pairs' matrices: ``matrices[r, :query_lengths[r], :passage_lengths[r]]`` is pair ``r``'s ``A``."""

    matrices: np.ndarray
    query_lengths: np.ndarray
    passage_lengths: np.ndarray

    def __len__(self) -> int:
        return len(self.query_lengths)

    def matrix(self, row: int) -> np.ndarray:
        return np.asarray(self.matrices[row, : self.query_lengths[row], : self.passage_lengths[row]], np.float32)


# ----------------------------------------------------------------------------------------------- tokens


def special_token_ids(tokenizer) -> set[int]:
    """Ids that are never content tokens: every special token except ``[UNK]`` (an unknown word is content).
    :class:`~asym_st.losses.token_interaction.TokenInteractionLoss` applies the same rule."""
    return set(tokenizer.all_special_ids) - {tokenizer.unk_token_id}


def _route_tokenizer(model: SentenceTransformer, route: str):
    first = tower_modules(model, route)[0] if is_asymmetric(model) else model[0]
    tokenizer = getattr(first, "tokenizer", None)
    if tokenizer is None:
        raise TokenizerMismatchError(f"The student's {route} tower has no tokenizer: no token-level targets.")
    return tokenizer


def content_token_ids(
    model: SentenceTransformer,
    texts: Sequence[str],
    route: str,
    max_length: int | None = None,
    batch_size: int = 256,
) -> list[list[int]]:
    """The content token ids of ``texts`` as the training collator tokenizes them for ``route`` (``model.preprocess``
    with the route's task and the ``max_length`` override), without padding and special tokens."""
    tokenizer = _route_tokenizer(model, route)
    special = np.array(sorted(special_token_ids(tokenizer)))
    task = route if is_asymmetric(model) else None
    result: list[list[int]] = []
    for start in range(0, len(texts), batch_size):
        chunk = list(texts[start : start + batch_size])
        kwargs = {"max_length": max_length} if max_length is not None else {}
        features = model.preprocess(chunk, task=task, **kwargs)
        ids = features["input_ids"].cpu().numpy()
        keep = features["attention_mask"].cpu().numpy().astype(bool) & ~np.isin(ids, special)
        result += [row[mask].tolist() for row, mask in zip(ids, keep, strict=True)]
    return result


# ----------------------------------------------------------------------------------------------- cross-encoder


class CrossEncoderAttention:
    """A cross-encoder's query→passage attention, aggregated per :class:`AttentionConfig`.

    Args:
        model: a loaded ``CrossEncoder`` or its Hub id / path.
        config: layers, heads, batch size.
    """

    def __init__(self, model: CrossEncoder | str, config: AttentionConfig | None = None) -> None:
        self.model = model if isinstance(model, CrossEncoder) else CrossEncoder(model)
        self.config = config or AttentionConfig()
        self.tokenizer = self.model.tokenizer
        self._template = self._pair_template()
        self._fingerprint: str | None = None

    @property
    def hf_model(self) -> torch.nn.Module:
        return self.model[0].auto_model

    def fingerprint(self) -> str:
        """Hashes the cross-encoder's weights and settings, and the aggregation (layers, heads)."""
        if self._fingerprint is None:
            aggregation = {"layers": self.config.layers, "heads": self.config.heads, "version": _FORMAT_VERSION}
            parts = [fingerprint_modules(list(self.model)), json.dumps(aggregation, sort_keys=True)]
            self._fingerprint = hashlib.sha256("\x00".join(parts).encode()).hexdigest()
        return self._fingerprint

    def check_vocabulary(self, student: SentenceTransformer) -> None:
        """Refuse a student whose towers' vocabulary differs from the cross-encoder's."""
        vocabulary = self.tokenizer.get_vocab()
        routes = (QUERY_ROUTE, DOCUMENT_ROUTE) if is_asymmetric(student) else (QUERY_ROUTE,)
        for route in routes:
            tokenizer = _route_tokenizer(student, route)
            if tokenizer.get_vocab() != vocabulary:
                raise TokenizerMismatchError(
                    f"The cross-encoder's vocabulary ({len(vocabulary)} tokens) differs from the student's {route} "
                    f"tower's ({len(tokenizer.get_vocab())} tokens): its attention cannot be mapped onto the "
                    "student's tokens. Use a cross-encoder on the same vocabulary, e.g. one initialised from the "
                    "teacher's own encoder (asym_st.training.train_cross_encoder)."
                )

    def _pair_template(self) -> dict[str, list[int]]:
        """The cross-encoder's special tokens around a pair, read off a probe pair (works for [CLS] a [SEP] b [SEP]
        and <s> a </s></s> b </s> alike)."""
        probe = self.tokenizer("a", "b", return_special_tokens_mask=True, return_token_type_ids=True)
        ids, special = probe["input_ids"], probe["special_tokens_mask"]
        types = probe.get("token_type_ids") or [0] * len(ids)
        content = [i for i, flag in enumerate(special) if not flag]
        runs = np.split(np.array(content), np.flatnonzero(np.diff(content) != 1) + 1)
        if len(runs) != 2:
            raise TokenizerMismatchError("Could not find the query and passage segments of the cross-encoder's input.")
        (q_start, q_end), (p_start, p_end) = (
            (int(runs[0][0]), int(runs[0][-1]) + 1),
            (int(runs[1][0]), int(runs[1][-1]) + 1),
        )
        return {
            "prefix": ids[:q_start],
            "middle": ids[q_end:p_start],
            "suffix": ids[p_end:],
            "prefix_types": types[:q_start],
            "middle_types": types[q_end:p_start],
            "suffix_types": types[p_end:],
            "query_type": [types[q_start]],
            "passage_type": [types[p_start]],
        }

    def _inputs(self, query_ids: list[list[int]], passage_ids: list[list[int]]) -> tuple[dict[str, torch.Tensor], list]:
        t = self._template
        sequences, type_rows, spans = [], [], []
        for query, passage in zip(query_ids, passage_ids, strict=True):
            q_start = len(t["prefix"])
            p_start = q_start + len(query) + len(t["middle"])
            sequences.append(t["prefix"] + query + t["middle"] + passage + t["suffix"])
            type_rows.append(
                t["prefix_types"]
                + t["query_type"] * len(query)
                + t["middle_types"]
                + t["passage_type"] * len(passage)
                + t["suffix_types"]
            )
            spans.append((q_start, len(query), p_start, len(passage)))
        width = max(len(s) for s in sequences)
        limit = getattr(self.hf_model.config, "max_position_embeddings", None)
        if limit is not None and width > limit:
            raise ValueError(f"A pair has {width} tokens; the cross-encoder takes at most {limit}.")
        pad = self.tokenizer.pad_token_id or 0
        input_ids = torch.full((len(sequences), width), pad, dtype=torch.long)
        token_types = torch.zeros((len(sequences), width), dtype=torch.long)
        attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
        for row, (sequence, types) in enumerate(zip(sequences, type_rows, strict=True)):
            input_ids[row, : len(sequence)] = torch.tensor(sequence)
            token_types[row, : len(types)] = torch.tensor(types)
            attention_mask[row, : len(sequence)] = 1
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if "token_type_ids" in self.tokenizer.model_input_names:
            inputs["token_type_ids"] = token_types
        return inputs, spans

    @contextmanager
    def _eager_attention(self) -> Iterator[None]:
        # SDPA / flash kernels do not return attention probabilities; eager attention does (same numbers).
        model = self.hf_model
        previous = getattr(model.config, "_attn_implementation", None)
        switch = previous not in (None, "eager") and hasattr(model, "set_attn_implementation")
        training = model.training
        if switch:
            model.set_attn_implementation("eager")
        model.eval()
        try:
            yield
        finally:
            if switch:
                model.set_attn_implementation(previous)
            model.train(training)

    def summarize(self, query_ids: list[list[int]], passage_ids: list[list[int]]) -> list[np.ndarray]:
        """One ``m × k`` row-normalised matrix per pair (one forward pass; see the module docstring)."""
        inputs, spans = self._inputs(query_ids, passage_ids)
        device = self.model.device
        with self._eager_attention(), torch.no_grad():
            output = self.hf_model(**{k: v.to(device) for k, v in inputs.items()}, output_attentions=True)
        attentions = output.attentions
        if not attentions:
            raise RuntimeError("The cross-encoder returned no attention maps (output_attentions=True was ignored).")
        layers = self.config.layers if self.config.layers is not None else [-1]
        try:
            chosen = torch.stack([attentions[layer] for layer in layers])  # layers × B × H × L × L
        except IndexError as error:
            raise ValueError(
                f"AttentionConfig.layers={layers}: the cross-encoder has {len(attentions)} layers."
            ) from error
        if self.config.heads is not None:
            if max(self.config.heads) >= chosen.shape[2]:
                raise ValueError(f"AttentionConfig.heads={self.config.heads}: the cross-encoder has {chosen.shape[2]}.")
            chosen = chosen[:, :, self.config.heads]
        mean = chosen.float().mean(dim=(0, 2)).cpu()  # B × L × L
        matrices = []
        for row, (q_start, m, p_start, k) in enumerate(spans):
            block = mean[row, q_start : q_start + m, p_start : p_start + k]
            matrices.append((block / block.sum(dim=1, keepdim=True).clamp_min(1e-12)).numpy())
        return matrices


# ----------------------------------------------------------------------------------------------- cache


def _key(fingerprint: str, queries: Sequence[str], passages: Sequence[str], query_ids, passage_ids) -> str:
    digest = hashlib.sha256(fingerprint.encode())
    for query, passage, q_ids, p_ids in zip(queries, passages, query_ids, passage_ids, strict=True):
        digest.update(query.encode() + b"\x00" + passage.encode() + b"\x00")
        digest.update(np.asarray(q_ids, dtype=np.int64).tobytes() + b"\x01")
        digest.update(np.asarray(p_ids, dtype=np.int64).tobytes() + b"\x02")
    digest.update(str(len(queries)).encode())
    return digest.hexdigest()[:32]


class AttentionCache:
    """A folder of attention-summary entries, one sub-folder per key (see the module docstring).

    Args:
        root: the folder (default ``$ASYM_ST_CACHE/teacher_attention`` or ``~/.cache/asym_st/teacher_attention``).
    """

    def __init__(self, root: str | os.PathLike | None = None) -> None:
        self.root = Path(root) if root is not None else default_cache_dir() / "teacher_attention"

    def entry(self, key: str) -> Path:
        return self.root / key

    def load(self, key: str, lengths: np.ndarray) -> AttentionSummaries | None:
        """The entry of ``key`` (memory-mapped), or ``None`` when missing or not matching ``lengths``."""
        folder = self.entry(key)
        try:
            meta = json.loads((folder / "meta.json").read_text())
            stored = np.load(folder / "lengths.npy", allow_pickle=False)
            matrices = np.load(folder / "attention.npy", mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError, EOFError):
            return None
        expected = (len(lengths), int(lengths[:, 0].max(initial=0)), int(lengths[:, 1].max(initial=0)))
        if meta.get("key") != key or not np.array_equal(stored, lengths) or matrices.shape != expected:
            logger.warning("Teacher attention cache entry %s does not match its pairs; rebuilding it.", key)
            return None
        return AttentionSummaries(matrices, stored[:, 0].copy(), stored[:, 1].copy())

    def build(
        self,
        key: str,
        summarizer: CrossEncoderAttention,
        query_ids: list[list[int]],
        passage_ids: list[list[int]],
    ) -> AttentionSummaries:
        """Compute every pair's matrix batch by batch into a memory-mapped file; publish the entry atomically."""
        lengths = np.array([[len(q), len(p)] for q, p in zip(query_ids, passage_ids, strict=True)], dtype=np.int64)
        shape = (len(lengths), int(lengths[:, 0].max(initial=0)), int(lengths[:, 1].max(initial=0)))
        config = summarizer.config
        with atomic_directory(self.entry(key), overwrite=True) as tmp:  # replaces a stale entry in one rename
            matrices = np.lib.format.open_memmap(tmp / "attention.npy", mode="w+", dtype=np.float16, shape=shape)
            progress = tqdm(total=len(lengths), desc="teacher attention", disable=not config.show_progress_bar)
            for start in range(0, len(lengths), config.batch_size):
                stop = min(start + config.batch_size, len(lengths))
                for row, matrix in enumerate(summarizer.summarize(query_ids[start:stop], passage_ids[start:stop])):
                    matrices[start + row, : matrix.shape[0], : matrix.shape[1]] = matrix
                progress.update(stop - start)
            progress.close()
            matrices.flush()
            del matrices
            np.save(tmp / "lengths.npy", lengths)
            meta = {"key": key, "num_pairs": len(lengths), "shape": list(shape), "config": asdict(config)}
            meta["cross_encoder_fingerprint"] = summarizer.fingerprint()
            atomic_write_json(tmp / "meta.json", meta)
        loaded = self.load(key, lengths)
        if loaded is None:
            raise RuntimeError(f"Teacher attention cache entry {self.entry(key)} could not be read back.")
        return loaded


def pair_attention(
    summarizer: CrossEncoderAttention,
    student: SentenceTransformer,
    queries: Sequence[str],
    passages: Sequence[str],
    passage_max_length: int | None = None,
    cache: AttentionCache | None = None,
) -> AttentionSummaries:
    """The teacher's attention summary of every ``(queries[r], passages[r])`` pair, aligned to ``student``'s tokens.

    Queries are tokenized by the student's query tower (its own length), passages by its document tower truncated to
    ``passage_max_length`` (the training length). Cached under ``cache`` (default: the shared cache folder); a hit
    reads the memory-mapped entry, a miss runs the cross-encoder once over the pairs.
    """
    if len(queries) != len(passages):
        raise ValueError(f"{len(queries)} queries but {len(passages)} passages: one of each per pair.")
    if not queries:
        raise ValueError("No pairs to summarise.")
    summarizer.check_vocabulary(student)
    query_route = QUERY_ROUTE
    document_route = DOCUMENT_ROUTE if is_asymmetric(student) else QUERY_ROUTE
    query_ids = content_token_ids(student, queries, query_route)
    passage_ids = content_token_ids(student, passages, document_route, max_length=passage_max_length)
    cache = cache or AttentionCache()
    key = _key(summarizer.fingerprint(), queries, passages, query_ids, passage_ids)
    lengths = np.array([[len(q), len(p)] for q, p in zip(query_ids, passage_ids, strict=True)], dtype=np.int64)
    cached = cache.load(key, lengths)
    if cached is not None:
        logger.info("Teacher attention: cache hit for %d pairs (%s).", len(lengths), key)
        return cached
    logger.info("Teacher attention: computing %d pairs with the cross-encoder (%s).", len(lengths), key)
    return cache.build(key, summarizer, query_ids, passage_ids)
