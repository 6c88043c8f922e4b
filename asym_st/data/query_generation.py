"""Query generation: synthetic queries from passages, to cover regions where real training queries are sparse.

All generators share one small interface, :class:`QueryGenerator`: ``generate(passages) -> QuerySet``. The
generated queries are unlabelled; the teacher embeds them, which is all that embedding alignment needs.

* :class:`SpanQueryGenerator` is model-free: it samples sentences or word spans from each passage (its first
  sentence is usually the title). It needs no weights, so it works offline, and it is the fallback when a
  dataset has too few real queries.
* :class:`Seq2SeqQueryGenerator` is doc2query-style (Nogueira et al., 2019): a sequence-to-sequence model loaded
  through ``transformers`` by Hub id (e.g. ``doc2query/msmarco-t5-base-v1``) samples ``k`` queries per passage,
  in batches, with a progress bar, cached on disk so that no passage is generated for twice.

Both drop empty and duplicate queries and count them in the returned :class:`QuerySet`'s report.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from tqdm.auto import tqdm

from asym_st.data.beir import default_cache_dir
from asym_st.data.queries import QuerySet, clean_queries
from asym_st.utils.io import atomic_write_json

__all__ = ["QueryGenerator", "SpanQueryGenerator", "Seq2SeqQueryGenerator"]

logger = logging.getLogger(__name__)

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


@runtime_checkable
class QueryGenerator(Protocol):
    """Anything that turns passages (id → text) into queries."""

    def generate(self, passages: Mapping[str, str]) -> QuerySet: ...


@dataclass
class SpanQueryGenerator:
    """Model-free pseudo-queries: sentences or word spans sampled from each passage.

    Args:
        queries_per_passage: how many pseudo-queries to draw per passage.
        min_words: spans shorter than this are skipped (too little to embed meaningfully).
        max_words: longer sentences are cut to a random window of this many words (queries are short).
        seed: the sampling seed (the same passages and seed give the same queries).

    Example::

        from asym_st.data import load_beir
        from asym_st.data.query_generation import SpanQueryGenerator
        corpus = load_beir("../shared/data/beir/scifact").corpus
        pseudo = SpanQueryGenerator(queries_per_passage=2).generate(corpus)
        print(pseudo.report())
    """

    queries_per_passage: int = 1
    min_words: int = 4
    max_words: int = 16
    seed: int = 0

    def __post_init__(self) -> None:
        if self.queries_per_passage < 1:
            raise ValueError("queries_per_passage must be at least 1.")
        if not 1 <= self.min_words <= self.max_words:
            raise ValueError(f"Need 1 <= min_words <= max_words; got {self.min_words} and {self.max_words}.")

    def _spans(self, text: str, rng: random.Random) -> list[str]:
        sentences = [s.split() for s in _SENTENCE_END.split(text) if len(s.split()) >= self.min_words]
        spans = []
        for words in sentences:
            if len(words) > self.max_words:
                start = rng.randrange(len(words) - self.max_words + 1)
                words = words[start : start + self.max_words]
            spans.append(" ".join(words))
        return spans

    def generate(self, passages: Mapping[str, str], show_progress_bar: bool = True) -> QuerySet:
        rng = random.Random(self.seed)
        ids, texts = [], []
        for passage_id, text in tqdm(passages.items(), desc="pseudo-queries", disable=not show_progress_bar):
            spans = self._spans(text or "", rng)
            if not spans:
                continue
            # The first sentence (usually the title) first, then random others.
            chosen = spans[:1] + rng.sample(spans[1:], min(len(spans) - 1, self.queries_per_passage - 1))
            for index, span in enumerate(chosen[: self.queries_per_passage]):
                ids.append(f"{passage_id}#pseudo{index}")
                texts.append(span)
        queries = clean_queries(ids, texts, source=f"SpanQueryGenerator({len(passages)} passages)")
        queries.notes.append(f"{len(passages) - len({i.split('#')[0] for i in queries.ids})} passages gave no query")
        return queries


def _text_key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


@dataclass
class Seq2SeqQueryGenerator:
    """doc2query-style queries: a sequence-to-sequence model samples ``queries_per_passage`` queries per passage.

    The model and tokenizer are loaded through ``transformers`` (``AutoModelForSeq2SeqLM``) by Hub id or local
    path, on first use. Passages are generated for in batches with a progress bar; the results are cached on disk
    per passage text, under a key of the model's weights and the generation settings, and written every
    ``cache_every`` batches (atomically), so a second run, or one that was interrupted, only generates for what
    is missing. Empty and duplicate queries are dropped and counted (:meth:`QuerySet.report`).

    Sampling is seeded per batch from ``seed`` and the batch's passages (the global random state is left alone),
    so the same passages in the same batches give the same queries.

    Args:
        model_name_or_path: a Hub id (e.g. ``doc2query/msmarco-t5-base-v1``, ``BeIR/query-gen-msmarco-t5-base-v1``)
            or a local folder.
        queries_per_passage: ``k``, queries sampled per passage (``num_return_sequences``).
        batch_size: passages per ``generate`` call.
        max_passage_length: passage tokens kept (longer passages are truncated).
        max_query_length: at most this many new tokens per query.
        top_k: top-k sampling (doc2query-T5 used 10); ``0`` turns it off.
        top_p: nucleus sampling threshold (1.0 = off).
        temperature: sampling temperature.
        prefix: text put before each passage, for models trained with one (e.g. ``"generate query: "``).
        revision: the model's Hub revision.
        device: ``"cuda"``, ``"cpu"``, ...; default: CUDA when available.
        seed: the sampling seed.
        cache_dir: where generated queries are cached (default ``~/.cache/asym_st/generated_queries``, see
            :func:`~asym_st.data.beir.default_cache_dir`).
        use_cache: read and write the cache.
        cache_every: batches between two cache writes (what an interrupted run keeps).

    Example::

        from asym_st.data import load_beir
        from asym_st.data.query_generation import Seq2SeqQueryGenerator

        corpus = load_beir("../shared/data/beir/scifact").corpus
        generator = Seq2SeqQueryGenerator("doc2query/msmarco-t5-base-v1", queries_per_passage=3)
        queries = generator.generate(corpus)
        print(queries.report())  # "... queries from ..., 12 empty dropped, 87 duplicates dropped, ..."
    """

    model_name_or_path: str
    queries_per_passage: int = 3
    batch_size: int = 16
    max_passage_length: int = 384
    max_query_length: int = 64
    top_k: int = 10
    top_p: float = 0.95
    temperature: float = 1.0
    prefix: str = ""
    revision: str | None = None
    device: str | None = None
    seed: int = 0
    cache_dir: str | None = None
    use_cache: bool = True
    cache_every: int = 16
    _loaded: tuple[Any, Any] | None = field(default=None, init=False, repr=False, compare=False)
    _fingerprint: str | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("queries_per_passage", "batch_size", "max_passage_length", "max_query_length", "cache_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"Seq2SeqQueryGenerator.{name} must be at least 1, got {getattr(self, name)}.")
        if self.top_k < 0 or not 0 < self.top_p <= 1 or self.temperature <= 0:
            raise ValueError(
                f"Sampling needs top_k >= 0, 0 < top_p <= 1 and temperature > 0; got top_k={self.top_k}, "
                f"top_p={self.top_p}, temperature={self.temperature}."
            )

    # ------------------------------------------------------------------------------------------- model

    def settings(self) -> dict[str, Any]:
        """The constructor arguments (not ``dataclasses.asdict``: that would deep-copy the loaded model)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.init}

    def load(self) -> tuple[Any, Any]:
        """``(tokenizer, model)``, loaded once."""
        if self._loaded is None:
            import torch
            from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

            try:
                # trust_remote_code=False, not transformers' None (which asks on stdin): a generator that needs
                # custom code is refused, never run.
                tokenizer = AutoTokenizer.from_pretrained(
                    self.model_name_or_path, revision=self.revision, trust_remote_code=False
                )
                model = AutoModelForSeq2SeqLM.from_pretrained(
                    self.model_name_or_path, revision=self.revision, trust_remote_code=False
                )
            except (OSError, ValueError) as error:
                raise ValueError(
                    f"Could not load a sequence-to-sequence query generator from {self.model_name_or_path!r} "
                    f"(a doc2query-style T5/BART Hub id or folder): {error}"
                ) from error
            device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
            self._loaded = (tokenizer, model.to(device).eval())
        return self._loaded

    def fingerprint(self) -> str:
        """The cache key: the model's weights and every setting that changes what is generated."""
        if self._fingerprint is None:
            from asym_st.modeling.fingerprint import fingerprint_tensor_dict

            _, model = self.load()
            settings = self.settings()
            for name in ("batch_size", "device", "cache_dir", "use_cache", "cache_every", "revision"):
                settings.pop(name)  # how and where it runs, not what it generates (the weights cover revision)
            settings["weights"] = fingerprint_tensor_dict(model.state_dict())
            self._fingerprint = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:24]
        return self._fingerprint

    def _sample(self, texts: Sequence[str], seed: int) -> list[list[str]]:
        """``queries_per_passage`` sampled queries for each text (raw: may hold empty strings and duplicates)."""
        import torch

        tokenizer, model = self.load()
        inputs = tokenizer(
            [self.prefix + text for text in texts],
            truncation=True,
            max_length=self.max_passage_length,
            padding=True,
            return_tensors="pt",
        ).to(model.device)
        devices = [model.device] if model.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), torch.inference_mode():
            torch.manual_seed(seed)
            output = model.generate(
                **inputs,
                do_sample=True,
                top_k=self.top_k,  # 0 turns top-k filtering off (None would mean the model's default)
                top_p=self.top_p,
                temperature=self.temperature,
                max_new_tokens=self.max_query_length,
                num_return_sequences=self.queries_per_passage,
            )
        decoded = tokenizer.batch_decode(output, skip_special_tokens=True)
        k = self.queries_per_passage
        return [decoded[i * k : (i + 1) * k] for i in range(len(texts))]

    # ------------------------------------------------------------------------------------------- cache

    def cache_folder(self) -> Path:
        root = Path(self.cache_dir) if self.cache_dir else default_cache_dir() / "generated_queries"
        return root / self.fingerprint()

    def _read_cache(self, folder: Path) -> dict[str, list[str]]:
        cached: dict[str, list[str]] = {}
        for path in sorted(folder.glob("chunk-*.json")):
            try:
                cached.update(json.loads(path.read_text(encoding="utf-8"))["passages"])
            except (OSError, ValueError, KeyError, TypeError) as error:
                logger.warning("Ignoring unreadable query-generation cache file %s (%s); regenerating.", path, error)
        return cached

    def _write_cache(self, folder: Path, generated: dict[str, list[str]]) -> None:
        if not generated:
            return
        name = hashlib.sha256("".join(sorted(generated)).encode()).hexdigest()[:16]
        if not (folder / "settings.json").exists():
            atomic_write_json(folder / "settings.json", self.settings())
        atomic_write_json(folder / f"chunk-{name}.json", {"passages": generated})

    # ------------------------------------------------------------------------------------------- generate

    def generate(self, passages: Mapping[str, str], show_progress_bar: bool = True) -> QuerySet:
        """Queries for every passage (id → text); ids are ``<passage id>#gen<j>``."""
        keys = {passage_id: _text_key(text) for passage_id, text in passages.items() if (text or "").strip()}
        folder = self.cache_folder() if self.use_cache else None
        results = self._read_cache(folder) if folder is not None and folder.is_dir() else {}
        from_cache = sum(key in results for key in set(keys.values()))
        texts_by_key = {key: passages[passage_id] for passage_id, key in keys.items() if key not in results}
        todo = list(texts_by_key)
        pending: dict[str, list[str]] = {}
        progress = tqdm(total=len(todo), desc="generating queries", unit="passage", disable=not show_progress_bar)
        for batch_number, start in enumerate(range(0, len(todo), self.batch_size), start=1):
            batch = todo[start : start + self.batch_size]
            seed = self.seed + int(hashlib.sha256("".join(batch).encode()).hexdigest()[:8], 16)
            for key, queries in zip(batch, self._sample([texts_by_key[k] for k in batch], seed), strict=True):
                pending[key] = results[key] = list(queries)
            progress.update(len(batch))
            if folder is not None and batch_number % self.cache_every == 0:
                self._write_cache(folder, pending)
                pending = {}
        progress.close()
        if folder is not None:
            self._write_cache(folder, pending)
        return self._collect(passages, keys, results, from_cache, len(todo))

    def _collect(
        self,
        passages: Mapping[str, str],
        keys: Mapping[str, str],
        results: Mapping[str, list[str]],
        from_cache: int,
        generated: int,
    ) -> QuerySet:
        ids, texts = [], []
        for passage_id in passages:
            for index, query in enumerate(results.get(keys.get(passage_id, ""), [])):
                ids.append(f"{passage_id}#gen{index}")
                texts.append(query)
        queries = clean_queries(ids, texts, source=f"{self.model_name_or_path} ({len(passages)} passages)")
        with_query = len({query_id.rsplit("#gen", 1)[0] for query_id in queries.ids})
        queries.notes += [
            f"{generated} passages generated, {from_cache} from cache",
            f"{len(passages) - with_query} passages gave no query",
        ]
        return queries
