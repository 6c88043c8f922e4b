"""Pairwise teacher scores for (query, passage) pairs, cached on disk in atomic shards (an interrupted run resumes).

Three kinds of teacher (all :class:`PairScorer`):

- :class:`CrossEncoderScorer`: a sentence-transformers ``CrossEncoder``, scored as **raw logits** (identity
  activation, not the model's default sigmoid), because Margin-MSE distils score *differences* and a sigmoid
  squashes exactly the margins that matter.
- :class:`BiEncoderScorer`: a sentence-transformers bi-encoder (query and document routes); the texts are
  encoded once through the shared :class:`~asym_st.data.cache.EmbeddingCache` and scored with the model's own
  similarity function.
- :class:`ScoreFileScorer`: precomputed scores in the formats of the public MS MARCO hard-negative releases:
  ``qid<TAB>pid<TAB>score`` lines (``.tsv``), JSON lines ``{"qid": .., "pid": .., "score": ..}`` (``.jsonl``) or
  a dict of dicts ``{qid: {pid: score}}`` (``.json``), each optionally gzipped. **Pickle files are refused**
  (``.pkl``, ``.pickle``, or any file starting with a pickle header): loading a pickle can execute arbitrary
  code, and a score file is data. Convert such a release once, in a trusted environment, e.g.
  ``json.dump(pickle.load(gzip.open(f)), gzip.open("scores.json.gz", "wt"))``. A pair whose ids are not in the
  file is an error naming those ids.

:func:`score_pairs` scores a list of (query id, passage id) pairs in shards of ``shard_size`` pairs. Each shard
is written atomically to ``<cache>/teacher_scores/<key>/shard-NNNNNN.npy`` as soon as it is done, so a run killed
half-way resumes from the last finished shard; when all are done they are joined into ``scores.npy``. The key
hashes the scorer's fingerprint (weights and settings) and the exact pairs, texts included.
:func:`add_teacher_scores` scores a mined candidate dataset (:mod:`asym_st.data.mining`).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import logging
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from datasets import Dataset, Value
from datasets import Sequence as SequenceFeature
from sentence_transformers import CrossEncoder, SentenceTransformer
from tqdm.auto import tqdm

from asym_st.data.beir import default_cache_dir
from asym_st.data.cache import EmbeddingCache
from asym_st.modeling.fingerprint import fingerprint_modules
from asym_st.utils.io import atomic_write_bytes, atomic_write_json

__all__ = [
    "BiEncoderScorer",
    "CrossEncoderScorer",
    "PairScorer",
    "ScoreCache",
    "ScoreFileError",
    "ScoreFileScorer",
    "ScoringConfig",
    "add_teacher_scores",
    "load_score_file",
    "score_pairs",
]

logger = logging.getLogger(__name__)

_PICKLE_SUFFIXES = (".pkl", ".pickle", ".pkl.gz", ".pickle.gz")
_QUERY_KEYS = ("qid", "query_id", "query-id")
_PASSAGE_KEYS = ("pid", "passage_id", "doc_id", "corpus_id", "corpus-id", "docid")
_SHOWN = 10  # ids named in an error message


class ScoreFileError(ValueError):
    """A score file that cannot be used: wrong format, pickle, malformed line, or missing pairs."""


@runtime_checkable
class PairScorer(Protocol):
    """Scores (query, passage) pairs. ``fingerprint()`` keys the cache (``None``: nothing to cache)."""

    def fingerprint(self) -> str | None: ...

    def score(
        self,
        query_ids: Sequence[str],
        passage_ids: Sequence[str],
        queries: Mapping[str, str] | None,
        corpus: Mapping[str, str] | None,
    ) -> np.ndarray: ...


# ----------------------------------------------------------------------------------------------- scorers


class CrossEncoderScorer:
    """A ``CrossEncoder`` teacher, scored as raw logits.

    Args:
        model: a loaded ``CrossEncoder`` or its name / path.
        batch_size: pairs per forward pass.
    """

    def __init__(self, model: CrossEncoder | str, batch_size: int = 32) -> None:
        self.model = model if isinstance(model, CrossEncoder) else CrossEncoder(model)
        if getattr(self.model, "num_labels", 1) != 1:
            raise ValueError(
                f"The cross-encoder has {self.model.num_labels} outputs; a pairwise teacher needs one relevance logit."
            )
        self.batch_size = batch_size
        self._fingerprint: str | None = None

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            modules = list(self.model) if isinstance(self.model, torch.nn.Sequential) else [self.model]
            self._fingerprint = _digest("cross-encoder", "identity", fingerprint_modules(modules))
        return self._fingerprint

    def score(self, query_ids, passage_ids, queries, corpus) -> np.ndarray:
        pairs = [(queries[q], corpus[p]) for q, p in zip(query_ids, passage_ids, strict=True)]
        logits = self.model.predict(
            pairs,
            batch_size=self.batch_size,
            activation_fn=torch.nn.Identity(),  # raw logits: margins must not be squashed by a sigmoid
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(logits, dtype=np.float32).reshape(-1)


class BiEncoderScorer:
    """A sentence-transformers bi-encoder teacher: ``similarity(encode_query(q), encode_document(p))``.

    All distinct queries and passages are encoded once (in :meth:`prepare`, through the shared
    :class:`EmbeddingCache`), so shards only look embeddings up.

    Args:
        model: the bi-encoder (symmetric, or asymmetric with ``query`` / ``document`` routes).
        batch_size: encoding batch size.
        cache: the embedding cache (default: the shared folder).
    """

    def __init__(self, model: SentenceTransformer, batch_size: int = 32, cache: EmbeddingCache | None = None):
        self.model = model
        self.batch_size = batch_size
        self.cache = cache or EmbeddingCache()
        self._query_rows: dict[str, int] = {}
        self._passage_rows: dict[str, int] = {}
        self._query_embeddings = self._passage_embeddings = None

    def fingerprint(self) -> str:
        return _digest(
            "bi-encoder",
            str(self.model.similarity_fn_name),
            EmbeddingCache.tower_fingerprint(self.model, "query"),
            EmbeddingCache.tower_fingerprint(self.model, "document"),
        )

    def prepare(self, query_ids, passage_ids, queries, corpus, show_progress_bar: bool = True) -> None:
        query_order, passage_order = _encoding_order(query_ids, queries), _encoding_order(passage_ids, corpus)
        self._query_rows = {q: i for i, q in enumerate(query_order)}
        self._passage_rows = {p: i for i, p in enumerate(passage_order)}
        encode = dict(batch_size=self.batch_size, show_progress_bar=show_progress_bar)
        self._query_embeddings = self.cache.encode(
            self.model, [queries[q] for q in query_order], route="query", description="teacher: queries", **encode
        )
        self._passage_embeddings = self.cache.encode(
            self.model, [corpus[p] for p in passage_order], route="document", description="teacher: passages", **encode
        )

    def score(self, query_ids, passage_ids, queries, corpus) -> np.ndarray:
        if any(q not in self._query_rows for q in query_ids) or any(p not in self._passage_rows for p in passage_ids):
            self.prepare(query_ids, passage_ids, queries, corpus, show_progress_bar=False)
        q = torch.from_numpy(np.asarray(self._query_embeddings[[self._query_rows[i] for i in query_ids]]))
        p = torch.from_numpy(np.asarray(self._passage_embeddings[[self._passage_rows[i] for i in passage_ids]]))
        return self.model.similarity_pairwise(q, p).cpu().numpy().astype(np.float32).reshape(-1)


def _encoding_order(needed_ids, texts: Mapping[str, str]) -> list[str]:
    """The ids to encode: all of ``texts`` in their own order when most are needed, so that the embeddings are
    the same cache entry as mining's and evaluation's (the cache is keyed by the text list); else only those."""
    needed = set(needed_ids)
    if len(needed) * 2 >= len(texts) and needed <= texts.keys():
        return list(texts)
    return sorted(needed)


class ScoreFileScorer:
    """Scores read from a precomputed file (see the module docstring for the formats; pickle is refused).

    Args:
        path: the score file.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.scores = load_score_file(self.path)

    def fingerprint(self) -> None:
        return None  # already on disk: nothing to cache

    def score(self, query_ids, passage_ids, queries=None, corpus=None) -> np.ndarray:
        out = np.empty(len(query_ids), dtype=np.float32)
        unknown_queries: dict[str, None] = {}
        unscored: dict[tuple[str, str], None] = {}
        for index, (query_id, passage_id) in enumerate(zip(query_ids, passage_ids, strict=True)):
            scored = self.scores.get(str(query_id))
            if scored is None:
                unknown_queries[query_id] = None
            elif str(passage_id) not in scored:
                unscored[(query_id, passage_id)] = None
            else:
                out[index] = scored[str(passage_id)]
        if unknown_queries or unscored:
            raise ScoreFileError(_missing_message(self.path, list(unknown_queries), list(unscored), corpus))
        return out


def _missing_message(path: Path, unknown_queries: list, unscored: list, corpus) -> str:
    parts = [f"{path}: no score for some of the requested pairs."]
    if unknown_queries:
        parts.append(f"{len(unknown_queries)} query id(s) are not in the file: {unknown_queries[:_SHOWN]}.")
    if unscored:
        shown = [f"{q}/{p}" for q, p in unscored[:_SHOWN]]
        parts.append(f"{len(unscored)} (query id/passage id) pair(s) are not scored: {shown}.")
        if corpus is not None:
            foreign = [p for _, p in unscored if p not in corpus]
            if foreign:
                parts.append(f"Passage id(s) not in the corpus either: {foreign[:_SHOWN]}.")
    parts.append("Do the file's ids match this collection's ids?")
    return " ".join(parts)


# ----------------------------------------------------------------------------------------------- score files


def load_score_file(path: str | os.PathLike) -> dict[str, dict[str, float]]:
    """Read a score file into ``{query_id: {passage_id: score}}`` (ids as strings)."""
    path = Path(path)
    name = path.name.lower()
    if name.endswith(_PICKLE_SUFFIXES):
        raise ScoreFileError(_pickle_refusal(path))
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such score file.")
    raw = path.read_bytes()
    if name.endswith(".gz"):
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as error:
            raise ScoreFileError(f"{path}: not a valid gzip file ({error}).") from error
        name = name[:-3]
    if raw[:1] == b"\x80":  # every pickle protocol >= 2 starts with PROTO (0x80)
        raise ScoreFileError(_pickle_refusal(path))
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ScoreFileError(f"{path}: not UTF-8 text ({error}); expected .tsv, .jsonl or .json scores.") from error
    if name.endswith((".tsv", ".txt", ".tsv.txt")):
        scores = _read_tsv(path, text)
    elif name.endswith(".jsonl"):
        scores = _read_jsonl(path, text)
    elif name.endswith(".json"):
        scores = _read_json(path, text)
    else:
        raise ScoreFileError(
            f"{path}: unknown score file type; use .tsv (qid<TAB>pid<TAB>score), .jsonl or .json (dict of dicts), "
            "optionally .gz."
        )
    if not scores:
        raise ScoreFileError(f"{path}: holds no scores.")
    return scores


def _pickle_refusal(path: Path) -> str:
    return (
        f"{path}: pickle files are refused: unpickling can execute arbitrary code, and a score file is data. "
        "Convert it once, in a trusted environment, to .json.gz (a dict of dicts {qid: {pid: score}}), "
        ".jsonl or .tsv."
    )


def _put(scores: dict, query_id, passage_id, value, where: str) -> None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ScoreFileError(f"{where}: score {value!r} is not a number.") from None
    if not np.isfinite(number):
        raise ScoreFileError(f"{where}: score {value!r} is not finite.")
    scored = scores.setdefault(str(query_id), {})
    previous = scored.get(str(passage_id))
    if previous is not None and previous != number:
        raise ScoreFileError(f"{where}: pair {query_id}/{passage_id} is scored twice ({previous} and {number}).")
    scored[str(passage_id)] = number


def _read_tsv(path: Path, text: str) -> dict:
    scores: dict = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.rstrip("\r").split("\t")
        if len(fields) != 3:
            raise ScoreFileError(
                f"{path}:{number}: expected 3 tab-separated fields (qid, pid, score), got {len(fields)}."
            )
        if number == 1 and fields[0].strip().lower() in _QUERY_KEYS:
            continue  # header line
        _put(scores, fields[0].strip(), fields[1].strip(), fields[2].strip(), f"{path}:{number}")
    return scores


def _pick(record: dict, keys: tuple[str, ...], where: str, what: str):
    for key in keys:
        if key in record:
            return record[key]
    raise ScoreFileError(f"{where}: no {what} field (one of {list(keys)}).")


def _read_jsonl(path: Path, text: str) -> dict:
    scores: dict = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ScoreFileError(f"{where}: invalid JSON ({error.msg}).") from None
        if not isinstance(record, dict):
            raise ScoreFileError(f"{where}: expected a JSON object per line.")
        query_id = _pick(record, _QUERY_KEYS, where, "query id")
        passage_id = _pick(record, _PASSAGE_KEYS, where, "passage id")
        _put(scores, query_id, passage_id, _pick(record, ("score",), where, "score"), where)
    return scores


def _read_json(path: Path, text: str) -> dict:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise ScoreFileError(f"{path}: invalid JSON at line {error.lineno} ({error.msg}).") from None
    if not isinstance(data, dict):
        raise ScoreFileError(f"{path}: expected a JSON object {{qid: {{pid: score}}}}, got {type(data).__name__}.")
    scores: dict = {}
    for query_id, scored in data.items():
        if not isinstance(scored, dict):
            raise ScoreFileError(
                f"{path}: query {query_id!r} maps to {type(scored).__name__}, expected {{pid: score}}."
            )
        for passage_id, value in scored.items():
            _put(scores, query_id, passage_id, value, f"{path}: query {query_id!r}, passage {passage_id!r}")
    return scores


# ----------------------------------------------------------------------------------------------- cache


def _digest(*parts: str) -> str:
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


def _pairs_hash(query_ids, passage_ids, queries, corpus) -> str:
    digest = hashlib.sha256()
    for query_id, passage_id in zip(query_ids, passage_ids, strict=True):
        digest.update(f"{query_id}\x00{passage_id}\x00".encode())
        if queries is not None:
            digest.update(queries[query_id].encode() + b"\x00")
        if corpus is not None:
            digest.update(corpus[passage_id].encode() + b"\x00")
    digest.update(str(len(query_ids)).encode())
    return digest.hexdigest()


class ScoreCache:
    """A folder of teacher-score entries, one sub-folder per (scorer, pairs) key.

    Args:
        root: the folder (default ``$ASYM_ST_CACHE/teacher_scores`` or ``~/.cache/asym_st/teacher_scores``).
    """

    def __init__(self, root: str | os.PathLike | None = None) -> None:
        self.root = Path(root) if root is not None else default_cache_dir() / "teacher_scores"

    def entry(self, key: str) -> Path:
        return self.root / key

    @staticmethod
    def _read_npy(path: Path, length: int) -> np.ndarray | None:
        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError):
            return None
        return array if array.shape == (length,) and array.dtype == np.float32 else None

    @staticmethod
    def _write_npy(path: Path, array: np.ndarray) -> None:
        buffer = io.BytesIO()
        np.save(buffer, np.ascontiguousarray(array, dtype=np.float32))
        atomic_write_bytes(path, buffer.getvalue())

    def load(self, key: str, length: int) -> np.ndarray | None:
        """The finished scores of ``key``, or ``None``."""
        path = self.entry(key) / "scores.npy"
        return self._read_npy(path, length) if path.is_file() else None

    def load_shard(self, key: str, index: int, length: int) -> np.ndarray | None:
        path = self.entry(key) / f"shard-{index:06d}.npy"
        return self._read_npy(path, length) if path.is_file() else None

    def save_shard(self, key: str, index: int, scores: np.ndarray) -> None:
        self._write_npy(self.entry(key) / f"shard-{index:06d}.npy", scores)

    def finish(self, key: str, scores: np.ndarray, meta: dict) -> None:
        """Write ``scores.npy`` (then ``meta.json``) and remove the shards."""
        folder = self.entry(key)
        self._write_npy(folder / "scores.npy", scores)
        atomic_write_json(folder / "meta.json", meta)
        for shard in folder.glob("shard-*.npy"):
            shard.unlink(missing_ok=True)

    def clear(self, key: str) -> None:
        shutil.rmtree(self.entry(key), ignore_errors=True)


@dataclass
class ScoringConfig:
    """How to run a scorer.

    Args:
        shard_size: pairs per cached shard (the unit of resumption).
        show_progress_bar: a progress bar over pairs.
    """

    shard_size: int = 4096
    show_progress_bar: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.shard_size, int) or self.shard_size < 1:
            raise ValueError(f"ScoringConfig.shard_size must be a positive integer, got {self.shard_size!r}.")


def score_pairs(
    scorer: PairScorer,
    query_ids: Sequence[str],
    passage_ids: Sequence[str],
    queries: Mapping[str, str] | None = None,
    corpus: Mapping[str, str] | None = None,
    cache: ScoreCache | None = None,
    config: ScoringConfig | None = None,
) -> np.ndarray:
    """Teacher scores of ``(query_ids[i], passage_ids[i])`` for every ``i``, as a float32 array.

    Args:
        scorer: the teacher.
        query_ids / passage_ids: the pairs, as two parallel id lists.
        queries / corpus: id → text (needed by model scorers; unused by a score file).
        cache: where shards and results go (default: the shared cache folder). Scorers without a fingerprint
            (score files) are not cached.
        config: shard size, progress bar.
    """
    config = config or ScoringConfig()
    query_ids, passage_ids = list(query_ids), list(passage_ids)
    if len(query_ids) != len(passage_ids):
        raise ValueError(f"{len(query_ids)} query ids but {len(passage_ids)} passage ids: one of each per pair.")
    if not query_ids:
        return np.zeros(0, dtype=np.float32)
    fingerprint = scorer.fingerprint()
    if fingerprint is not None:
        _check_texts(query_ids, passage_ids, queries, corpus)
    if fingerprint is None:
        return np.asarray(scorer.score(query_ids, passage_ids, queries, corpus), dtype=np.float32)
    cache = cache or ScoreCache()
    key = _digest(fingerprint, _pairs_hash(query_ids, passage_ids, queries, corpus))[:32]
    total = len(query_ids)
    finished = cache.load(key, total)
    if finished is not None:
        logger.info("Teacher scores: cache hit for %d pairs (%s).", total, key)
        return finished
    starts = range(0, total, config.shard_size)
    shards = [cache.load_shard(key, i, min(config.shard_size, total - start)) for i, start in enumerate(starts)]
    done = sum(len(shard) for shard in shards if shard is not None)
    if done:
        logger.info("Teacher scores: resuming, %d of %d pairs already scored.", done, total)
    todo = [i for i, shard in enumerate(shards) if shard is None]
    if todo and hasattr(scorer, "prepare"):
        needed = [j for i in todo for j in range(starts[i], min(starts[i] + config.shard_size, total))]
        scorer.prepare(
            [query_ids[j] for j in needed], [passage_ids[j] for j in needed], queries, corpus, config.show_progress_bar
        )
    progress = tqdm(total=total, initial=done, desc="teacher scores", unit="pair", disable=not config.show_progress_bar)
    for i in todo:
        start, stop = starts[i], min(starts[i] + config.shard_size, total)
        scores = np.asarray(scorer.score(query_ids[start:stop], passage_ids[start:stop], queries, corpus), np.float32)
        if scores.shape != (stop - start,):
            raise ValueError(f"The scorer returned {scores.shape} scores for {stop - start} pairs.")
        cache.save_shard(key, i, scores)
        shards[i] = scores
        progress.update(stop - start)
    progress.close()
    result = np.concatenate(shards).astype(np.float32)
    cache.finish(key, result, {"num_pairs": total, "scorer_fingerprint": fingerprint, "shard_size": config.shard_size})
    return result


def _check_texts(query_ids, passage_ids, queries, corpus) -> None:
    if queries is None or corpus is None:
        raise ValueError("This teacher scores texts: pass queries and corpus (id → text).")
    unknown_queries = [q for q in dict.fromkeys(query_ids) if q not in queries]
    unknown_passages = [p for p in dict.fromkeys(passage_ids) if p not in corpus]
    if unknown_queries or unknown_passages:
        raise KeyError(
            f"No text for {len(unknown_queries)} query id(s) {unknown_queries[:_SHOWN]} and "
            f"{len(unknown_passages)} passage id(s) {unknown_passages[:_SHOWN]}."
        )


def add_teacher_scores(
    candidates: Dataset,
    scorer: PairScorer,
    queries: Mapping[str, str] | None = None,
    corpus: Mapping[str, str] | None = None,
    cache: ScoreCache | None = None,
    config: ScoringConfig | None = None,
) -> Dataset:
    """Score every (query, positive) and (query, candidate) pair of a mined candidate dataset.

    Adds ``positive_scores`` and ``candidate_scores`` (lists parallel to ``positive_ids`` / ``candidate_ids``).
    Texts default to the dataset's own ``query`` / ``positive_texts`` / ``candidate_texts`` columns.
    """
    if queries is None:
        queries = dict(zip(candidates["query_id"], candidates["query"], strict=True))
    if corpus is None:
        corpus = _texts_from_candidates(candidates)
    query_ids, passage_ids, lengths = [], [], []
    for row in candidates.select_columns(["query_id", "positive_ids", "candidate_ids"]):
        for column in ("positive_ids", "candidate_ids"):
            query_ids.extend([row["query_id"]] * len(row[column]))
            passage_ids.extend(row[column])
            lengths.append(len(row[column]))
    scores = score_pairs(scorer, query_ids, passage_ids, queries, corpus, cache, config)
    pieces = np.split(scores, np.cumsum(lengths)[:-1]) if lengths else []
    positive_scores = [piece.tolist() for piece in pieces[0::2]]
    candidate_scores = [piece.tolist() for piece in pieces[1::2]]
    scored = candidates
    for name, values in (("positive_scores", positive_scores), ("candidate_scores", candidate_scores)):
        if name in scored.column_names:
            scored = scored.remove_columns(name)
        scored = scored.add_column(name, values, feature=SequenceFeature(Value("float32")))
    return scored


def _texts_from_candidates(candidates: Dataset) -> dict[str, str]:
    corpus: dict[str, str] = {}
    for row in candidates.select_columns(["positive_ids", "positive_texts", "candidate_ids", "candidate_texts"]):
        for ids, texts in (
            (row["positive_ids"], row["positive_texts"]),
            (row["candidate_ids"], row["candidate_texts"]),
        ):
            if len(texts) != len(ids):
                raise ValueError(
                    "The candidate dataset was mined without texts (include_texts=False): pass corpus= explicitly."
                )
            corpus.update(zip(ids, texts, strict=True))
    return corpus
