"""Model cards for asymmetric models and their towers, rendered from the Jinja templates in ``model_cards/``.

A card is made of facts only: the model folder (:mod:`asym_st.hub.facts`), the evaluation results stored under
``MODEL_DIR/eval/`` (:func:`asym_st.evaluation.results.load_results`), ``training_config.json``, and the teacher's
own card when it is on disk. A number without a measurement behind it is left out and the section says
"not evaluated" / "not measured"; :func:`validate_card` refuses placeholders and anything that looks like a token.

Rendering goes through huggingface_hub (``ModelCardData`` for the YAML header, including the ``model-index`` built
from ``EvalResult`` objects, and ``ModelCard.from_template``), so the metadata follows Hub conventions.

Generated parts of the body sit between ``<!-- asym-st:begin NAME -->`` and ``<!-- asym-st:end NAME -->``.
:func:`merge_cards` replaces exactly those sections in an existing card and keeps everything a user wrote outside
them, and the metadata keys the user added, so re-rendering or re-pushing refreshes the scores without losing
edits.

Example::

    from asym_st.hub import CardConfig, render_card, write_card

    card = render_card("minilm-qed-2l", CardConfig(repo_id="me/minilm-qed-2l"))
    print(card.data.to_dict()["model-index"])
    write_card("minilm-qed-2l")  # MODEL_DIR/README.md, merged with the user's edits if it has asym-st sections
"""

from __future__ import annotations

import math
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData
from huggingface_hub.repocard import metadata_load
from huggingface_hub.repocard_data import eval_results_to_model_index, model_index_to_eval_results

from asym_st.hub.citations import SENTENCE_TRANSFORMERS_BIBTEX, method_citation, normalise_method
from asym_st.hub.facts import ModelFacts, TowerFacts, read_model_facts
from asym_st.utils.io import atomic_write_text

__all__ = [
    "CARD_KINDS",
    "CardConfig",
    "CardLinks",
    "CardValidationError",
    "render_card",
    "merge_cards",
    "validate_card",
    "write_card",
    "generated_sections",
    "find_placeholders",
    "find_secrets",
    "templates_dir",
]

CARD_KINDS = ("asymmetric", "query", "document")
TEMPLATE_FILES = {"asymmetric": "asymmetric_model.md", "query": "query_tower.md", "document": "document_tower.md"}
SECTION_RE = re.compile(r"<!-- asym-st:begin ([\w-]+) -->\n?(.*?)<!-- asym-st:end \1 -->\n?", re.DOTALL)
# Metadata keys asym-st owns: always replaced on refresh. Others (license, language, datasets, user keys) are kept
# as the user left them; tags are merged.
OWNED_METADATA = ("library_name", "pipeline_tag", "base_model", "model-index")
METRICS = (("ndcg_at_10", "nDCG@10"), ("recall_at_100", "Recall@100"), ("mrr_at_10", "MRR@10"), ("map", "MAP"))
# Operational settings that say nothing about how the model was trained; left out of the hyper-parameter table.
_OPERATIONAL_KEYS = {
    "output_dir", "checkpoint_dir", "overwrite_output_dir", "resume_from_checkpoint", "cache_dir", "report_to",
    "logging_steps", "save_steps", "save_total_limit", "eval_steps", "teacher_batch_size", "measure_latency",
    "latency_queries", "dev_dataset", "dev_max_queries", "dev_max_documents", "eval_datasets", "train_queries",
    "teacher", "teacher_revision",
}  # fmt: skip
_SECRET_KEY_RE = re.compile(r"token|secret|password|passwd|api[_-]?key|credential", re.IGNORECASE)
_TOKEN_RE = re.compile(r"\bhf_[A-Za-z0-9]{20,}\b")
_PLACEHOLDER_RES = (
    re.compile(r"\[More Information Needed\]"),
    re.compile(r"\b(?:TODO|TBD|FIXME|XXX)\b"),
    re.compile(r"(?<![\w/])N/A(?![\w/])"),
    re.compile(r"\b(?:nan|NaN|inf)\b"),
    re.compile(r"\{\{|\}\}|\{%|%\}"),
    re.compile(r"^\|.*\bNone\b.*\|$", re.MULTILINE),
)


class CardValidationError(ValueError):
    """A card that must not be published: invalid metadata, placeholders, or a secret in it."""


@dataclass
class CardLinks:
    """Hub ids of the repos published together, for cross-links and result URLs (``None``: not published)."""

    asymmetric: str | None = None
    query: str | None = None
    document: str | None = None
    revision: str = "main"
    endpoint: str = "https://huggingface.co"

    def repo_url(self, repo_id: str) -> str:
        return f"{self.endpoint.rstrip('/')}/{repo_id}"

    def file_url(self, repo_id: str, path: str) -> str:
        return f"{self.repo_url(repo_id)}/blob/{self.revision}/{path}"

    def for_kind(self, kind: str) -> str | None:
        return getattr(self, kind)


@dataclass
class CardConfig:
    """What card to render.

    Args:
        kind: ``"asymmetric"`` (the Router model), ``"query"`` or ``"document"`` (a tower pushed on its own).
        links: the repos published together; the card's own repo is ``links.<kind>``.
        license: overrides the license inherited from the teacher's card.
        language: overrides the language inherited from the teacher's card.
        tags: extra tags.
        model_name: the name in the title and the ``model-index``; default: the repo name or the folder name.
    """

    kind: str = "asymmetric"
    links: CardLinks = field(default_factory=CardLinks)
    license: str | None = None
    language: str | list[str] | None = None
    tags: list[str] = field(default_factory=list)
    model_name: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in CARD_KINDS:
            raise ValueError(f"CardConfig.kind={self.kind!r}; choose one of {', '.join(CARD_KINDS)}.")

    @property
    def repo_id(self) -> str | None:
        return self.links.for_kind(self.kind)


# --------------------------------------------------------------------------------------------------- helpers


def templates_dir() -> Path:
    """The folder with the card templates: ``$ASYM_ST_MODEL_CARDS``, ``model_cards/`` of the source tree (editable
    installs), or ``<prefix>/share/asym-st/model_cards`` (wheel installs, see ``pyproject.toml``)."""
    candidates = [Path(p) for p in [os.environ.get("ASYM_ST_MODEL_CARDS")] if p] or [
        Path(__file__).resolve().parents[2] / "model_cards",
        Path(sys.prefix) / "share" / "asym-st" / "model_cards",
    ]
    for folder in candidates:
        if (folder / TEMPLATE_FILES["asymmetric"]).is_file():
            return folder
    raise FileNotFoundError(
        f"Model card templates not found in {', '.join(map(str, candidates))}; set ASYM_ST_MODEL_CARDS to the "
        "model_cards/ folder."
    )


def is_hub_id(name: str | None) -> bool:
    """True for ``org/name`` strings that are not a local path (what ``base_model`` may hold)."""
    if not name or os.path.exists(name) or name.startswith(("/", ".", "~")):
        return False
    return re.fullmatch(r"[\w.-]+/[\w.-]+", name) is not None and ".." not in name


def display_name(value: str | None) -> str | None:
    """A Hub id as is; a local path reduced to its last part (cards must not leak a machine's folders)."""
    if value is None:
        return None
    if is_hub_id(value) or not any(sep in value for sep in ("/", "\\")):
        return value
    path = PurePath(value.rstrip("/\\"))
    # A file keeps its folder ("fiqa/queries.jsonl" says more than "queries.jsonl"); a folder keeps its own name.
    return f"{path.parent.name}/{path.name}" if path.suffix and path.parent.name else path.name


def display_source(source: str | None) -> str:
    if not source:
        return "unknown source"
    if source.startswith("mteb:"):
        return f"mteb task {source[len('mteb:') :]}"
    if is_hub_id(source):
        return f"Hub dataset {source}"
    name = display_name(source) or source
    return f"BEIR {'zip' if name.endswith('.zip') else 'folder'} `{name}`"


def _points(value: Any) -> str | None:
    """A metric fraction as points with two decimals (64.51), or ``None`` when there is no number."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        return None
    return f"{value * 100:.2f}"


def _number(value: Any, digits: int = 3) -> str | None:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return f"{value:,}".replace(",", "\u202f") if abs(value) >= 10_000 else str(value)
    if isinstance(value, float):
        return f"{value:.{digits}g}" if math.isfinite(value) else None
    return None


def _table(headers: list[str], rows: list[list[str]], align: list[str] | None = None) -> str:
    align = align or ["---"] * len(headers)
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _millions(parameters: int) -> str:
    return f"{parameters / 1e6:.1f}M"


def _teacher_metadata(teacher: str | None, revision: str | None) -> dict:
    """``license`` / ``language`` from the teacher's README when it is on disk (a folder or the Hub cache)."""
    if not teacher:
        return {}
    path: str | None = None
    if os.path.isdir(teacher):
        candidate = os.path.join(teacher, "README.md")
        path = candidate if os.path.isfile(candidate) else None
    elif is_hub_id(teacher):
        from huggingface_hub import try_to_load_from_cache

        for rev in (revision, None):  # the exact revision first, then whatever is cached
            found = try_to_load_from_cache(teacher, "README.md", revision=rev)
            if isinstance(found, str):
                path = found
                break
    if path is None:
        return {}
    try:
        metadata = metadata_load(path) or {}
    except Exception:  # a teacher card we cannot parse simply contributes nothing
        return {}
    return {k: metadata[k] for k in ("license", "language") if metadata.get(k)}


# --------------------------------------------------------------------------------------------------- sections


def _tower_row(label: str, tower: TowerFacts, layers: str) -> list[str]:
    return [
        label,
        tower.architecture or "transformer",
        layers,
        _millions(tower.parameters),
        str(tower.embedding_dimension) if tower.embedding_dimension else "see config",
        " → ".join(tower.module_types),
    ]


def _architecture_table(facts: ModelFacts, kind: str) -> str:
    record = facts.record
    if record.query_layers is not None and record.teacher_num_layers:
        query_layers = f"{facts.query.num_layers} (teacher layers {', '.join(map(str, record.query_layers))} of {record.teacher_num_layers})"
    elif record.query_encoder:
        query_layers = f"{facts.query.num_layers} ({display_name(record.query_encoder)})"
    else:
        query_layers = str(facts.query.num_layers)
    rows = []
    if kind in ("asymmetric", "query"):
        rows.append(_tower_row("query tower", facts.query, query_layers))
    if kind in ("asymmetric", "document"):
        rows.append(_tower_row("document tower (teacher)", facts.document, str(facts.document.num_layers)))
    return _table(["tower", "backbone", "layers", "parameters", "embedding dim", "modules"], rows)


def _retrieval_rows(results: list[dict]) -> tuple[str | None, list[dict]]:
    rows, usable = [], []
    for result in results:
        metrics = result.get("metrics") or {}
        cells = [_points(metrics.get(key)) for key, _ in METRICS]
        if cells[0] is None and cells[1] is None:
            continue  # nothing measured that a card reports
        usable.append(result)
        rows.append(
            [
                str(result.get("dataset")),
                str(result.get("split")),
                *[cell or "not measured" for cell in cells],
                str(result.get("num_queries", "?")),
                str(result.get("num_documents", "?")),
                f"{result.get('evaluator', 'asym-st')}, {display_source(result.get('source'))}",
            ]
        )
    if not rows:
        return None, []
    headers = ["dataset", "split", *[name for _, name in METRICS], "queries", "documents", "evaluated with"]
    align = ["---", "---", *["---:"] * len(METRICS), "---:", "---:", "---"]
    return _table(headers, rows, align), usable


def _retention_table(retention: dict | None) -> str | None:
    rows = []
    for row in (retention or {}).get("rows", []):
        teacher, student = row.get("teacher") or {}, row.get("student") or {}
        t_ndcg, s_ndcg = _points(teacher.get("ndcg_at_10")), _points(student.get("ndcg_at_10"))
        if t_ndcg is None or s_ndcg is None:
            continue
        ratio = row.get("retention_ndcg_at_10")
        p_value = row.get("p_value")
        rows.append(
            [
                str(row.get("dataset")),
                str(row.get("split")),
                str(row.get("num_queries", "?")),
                t_ndcg,
                s_ndcg,
                f"{ratio * 100:.1f}%"
                if isinstance(ratio, (int, float)) and math.isfinite(ratio)
                else "undefined (teacher scores 0)",
                _points(teacher.get("recall_at_100")) or "not measured",
                _points(student.get("recall_at_100")) or "not measured",
                f"{p_value:.3g} ({row.get('test', 'paired test')})"
                if isinstance(p_value, (int, float))
                else "not tested",
            ]
        )
    if not rows:
        return None
    headers = ["dataset", "split", "queries", "teacher nDCG@10", "this model nDCG@10", "retention", "teacher Recall@100", "this model Recall@100", "p-value"]  # fmt: skip
    return _table(headers, rows, ["---", "---", "---:", "---:", "---:", "---:", "---:", "---:", "---:"])


def _hardware_text(hardware: dict) -> str:
    parts = [f"{key} {value}" for key, value in hardware.items() if value not in (None, "")]
    return ", ".join(parts) if parts else "hardware not recorded"


def _latency_section(latency: dict | None) -> tuple[str | None, list[str], dict]:
    rows, hardware = [], []
    for result in (latency or {}).get("results", []):
        p50 = _number(result.get("p50_ms"))
        if p50 is None:
            continue
        name = str(result.get("model", "?"))
        rows.append(
            [
                display_name(name) or name,
                str(result.get("route", "?")),
                str(result.get("batch_size", "?")),
                p50,
                _number(result.get("p95_ms")) or "not measured",
                _number(result.get("per_query_p50_ms")) or "not measured",
                _number(result.get("queries_per_second")) or "not measured",
            ]
        )
        text = _hardware_text(result.get("hardware") or {})
        if text not in hardware:
            hardware.append(text)
    if not rows:
        return None, [], {}
    speedup = {str(k): v for k, v in ((latency or {}).get("speedup") or {}).items() if isinstance(v, (int, float))}
    headers = ["model", "route", "batch size", "p50 ms / batch", "p95 ms / batch", "p50 ms / query", "queries / s"]
    table = _table(headers, rows, ["---", "---", "---:", "---:", "---:", "---:", "---:"])
    return table, hardware, speedup


def _tradeoff_table(tradeoff: dict | None) -> str | None:
    rows = [row for row in (tradeoff or {}).get("rows", []) if isinstance(row, dict)]
    if not rows:
        return None
    keys: list[str] = []
    for row in rows:
        keys += [k for k, v in row.items() if k not in keys and not isinstance(v, (dict, list))]
    body = [
        [_number(row.get(k)) or (str(row[k]) if row.get(k) is not None else "not measured") for k in keys]
        for row in rows
    ]
    return _table(keys, body)


def _clean_value(value: Any) -> str | None:
    """A config value fit for a card: numbers and short strings; paths shortened; secrets dropped."""
    if isinstance(value, (bool, int, float)):
        return _number(value)
    if isinstance(value, str):
        if _TOKEN_RE.search(value):
            return None
        return display_name(value)
    if isinstance(value, list) and all(isinstance(v, (int, float, str)) for v in value):
        cleaned = [_clean_value(v) for v in value]
        return ", ".join(c for c in cleaned if c is not None) or None
    return None


def _training_section(training: dict | None) -> dict:
    if not training:
        return {}
    config = training.get("config") if isinstance(training.get("config"), dict) else {}
    hyper = []
    for key, value in config.items():
        if key in _OPERATIONAL_KEYS or _SECRET_KEY_RE.search(key) or value is None:
            continue
        cleaned = _clean_value(value)
        if cleaned is not None and cleaned != "":
            hyper.append([f"`{key}`", cleaned])
    data_lines = []
    sources = [display_name(s) for s in config.get("train_queries") or [] if isinstance(s, str)]
    if sources:
        data_lines.append(f"- query sources: {', '.join(f'`{s}`' for s in sources)}")
    queries = training.get("training_queries")
    if isinstance(queries, dict) and isinstance(queries.get("count"), int):
        data_lines.append(f"- training queries after filtering and de-duplication: {queries['count']}")
    if config.get("exclude_eval_queries") is True:
        data_lines.append("- queries of the evaluation sets were excluded from training")
    datasets = [d for d in training.get("datasets") or [] if isinstance(d, str)]
    if datasets:
        data_lines.append(f"- datasets: {', '.join(f'`{d}`' for d in datasets)}")
    facts = []
    if isinstance(training.get("train_seconds"), (int, float)):
        facts.append(f"training time: {training['train_seconds']:.0f} s")
    for key, label in (("first_logged_loss", "first logged loss"), ("last_logged_loss", "last logged loss")):
        if isinstance(training.get(key), (int, float)):
            facts.append(f"{label}: {training[key]:.4g}")
    return {
        "hyperparameters_table": _table(["hyper-parameter", "value"], hyper) if hyper else None,
        "training_data": "\n".join(data_lines) or None,
        "training_facts": "; ".join(facts) or None,
        "training_datasets": [d for d in datasets if is_hub_id(d)],
        "training_citation": training.get("citation") if isinstance(training.get("citation"), str) else None,
    }


# --------------------------------------------------------------------------------------------------- metadata


def _eval_results(results: list[dict], source_name, source_url, key: str = "metrics") -> list[EvalResult]:
    """``EvalResult`` objects (nDCG@10 and Recall@100, in points) for the ``model-index``; absent metrics are skipped."""
    evals = []
    for result in results:
        metrics = result.get(key) or {}
        dataset = str(result.get("dataset"))
        counts = [
            f"{result[n]} {label}"
            for n, label in (("num_queries", "queries"), ("num_documents", "documents"))
            if isinstance(result.get(n), int)
        ]
        for metric, metric_name in METRICS[:2]:
            value = _points(metrics.get(metric))
            if value is None:
                continue
            evals.append(
                EvalResult(
                    task_type="text-retrieval",
                    task_name="Retrieval",
                    dataset_type=dataset,
                    dataset_name=f"{dataset} ({', '.join(counts)})" if counts else dataset,
                    dataset_split=str(result.get("split")),
                    metric_type=metric,
                    metric_name=metric_name,
                    metric_value=float(value),
                    source_name=source_name(result),
                    source_url=source_url(result),
                )
            )
    return evals


def _result_stem(dataset: str, split: str) -> str:
    from asym_st.evaluation.results import result_file_stem

    return result_file_stem(dataset, split)


def _card_data(facts: ModelFacts, results: dict, config: CardConfig, model_name: str, training: dict) -> ModelCardData:
    record = facts.record
    inherited = _teacher_metadata(record.teacher, record.teacher_revision)
    method = normalise_method(record.method or (results.get("training_config") or {}).get("method"))
    tags = ["sentence-transformers", "sentence-similarity", "feature-extraction", "dense-retrieval", "asymmetric-retrieval", "asym-st"]  # fmt: skip
    tags += {"query": ["query-tower"], "document": ["document-tower"], "asymmetric": ["router"]}[config.kind]
    if method:
        tags += [re.sub(r"[^a-z0-9-]+", "-", method.lower()), "distillation"]
    tags += config.tags
    repo_id = config.repo_id

    def url_for(path: str) -> str:
        return config.links.file_url(repo_id, path) if repo_id else path

    evals: list[EvalResult] = []
    if config.kind == "asymmetric":
        evals = _eval_results(
            _retrieval_rows(results.get("retrieval") or [])[1],
            lambda r: f"{r.get('evaluator', 'asym-st')} evaluation on {display_source(r.get('source'))}",
            lambda r: url_for(f"eval/retrieval/{_result_stem(str(r.get('dataset')), str(r.get('split')))}.json"),
        )
    elif config.kind == "document":  # the teacher's own scores, measured next to the student's
        evals = _eval_results(
            (results.get("retention") or {}).get("rows", []),
            lambda r: "asym-st retention report (teacher side)",
            lambda r: url_for("eval/retention.json"),
            key="teacher",
        )
    return ModelCardData(
        library_name="sentence-transformers",
        pipeline_tag="sentence-similarity",
        tags=tags,
        base_model=record.teacher if is_hub_id(record.teacher) else None,
        license=config.license or inherited.get("license"),
        language=config.language or inherited.get("language"),
        datasets=training.get("training_datasets") or None,
        model_name=model_name if evals else None,
        eval_results=evals or None,
    )


# --------------------------------------------------------------------------------------------------- rendering


def _template_context(facts: ModelFacts, results: dict, config: CardConfig, model_name: str, training: dict) -> dict:
    record = facts.record
    links = config.links
    method = normalise_method(record.method or (results.get("training_config") or {}).get("method"))
    retrieval_table, usable = _retrieval_rows(results.get("retrieval") or [])
    latency_table, hardware, speedup = _latency_section(results.get("latency"))
    teacher = record.teacher
    citations = [SENTENCE_TRANSFORMERS_BIBTEX]
    method_bib = training.get("training_citation") or method_citation(method)
    if method_bib and config.kind != "document":  # the document tower is the untouched teacher
        citations.insert(0, method_bib)
    own_id = config.repo_id or f"path/to/{facts.name}"
    related = []
    for kind, label in (("asymmetric", "asymmetric model (query + document towers)"), ("query", "query tower alone"), ("document", "document tower alone")):  # fmt: skip
        repo = links.for_kind(kind)
        if repo and kind != config.kind:
            related.append({"label": label, "repo": repo, "url": links.repo_url(repo)})
    inherited = _teacher_metadata(record.teacher, record.teacher_revision)
    return {
        "kind": config.kind,
        "title": model_name,
        "repo_id": own_id,
        "published": config.repo_id is not None,
        "teacher": display_name(teacher) or "unknown",
        "teacher_is_hub": is_hub_id(teacher),
        "teacher_url": links.repo_url(teacher) if is_hub_id(teacher) else None,
        "teacher_revision": record.teacher_revision,
        "document_repo": links.document or (teacher if is_hub_id(teacher) else None),
        "document_repo_is_teacher": links.document is None and is_hub_id(teacher),
        "query_repo": links.query,
        "query_url": links.repo_url(links.query) if links.query else None,
        "asymmetric_repo": links.asymmetric,
        "asymmetric_url": links.repo_url(links.asymmetric) if links.asymmetric else None,
        "fingerprint": record.document_tower_fingerprint,
        "query_fingerprint": record.query_tower_fingerprint,
        "query_layers": ", ".join(map(str, record.query_layers)) if record.query_layers is not None else None,
        "teacher_num_layers": record.teacher_num_layers,
        "query_encoder": display_name(record.query_encoder),
        "query_params": _millions(facts.query.parameters),
        "document_params": _millions(facts.document.parameters),
        "query_num_layers": facts.query.num_layers,
        "document_num_layers": facts.document.num_layers,
        "embedding_dimension": facts.document.embedding_dimension,
        "similarity": facts.similarity_fn_name,
        "architecture_table": _architecture_table(facts, config.kind),
        "method": method,
        "trained": method is not None or results.get("training_config") is not None,
        "hyperparameters_table": training.get("hyperparameters_table"),
        "training_data": training.get("training_data"),
        "training_facts": training.get("training_facts"),
        "retrieval_table": retrieval_table,
        "evaluated_datasets": sorted({str(r.get("dataset")) for r in usable}),
        "retention_table": _retention_table(results.get("retention")),
        "retention_pair": {
            k: display_name(v) for k, v in (results.get("retention") or {}).items() if k in ("teacher", "student")
        },
        "latency_table": latency_table,
        "hardware": hardware,
        "speedup": speedup,
        "tradeoff_table": _tradeoff_table(results.get("tradeoff")),
        "tradeoff_plot": "eval/tradeoff.png" if results.get("tradeoff_png") else None,
        "related": related,
        "license_inherited": config.license is None and bool(inherited.get("license")),
        "citations": citations,
        "asym_st_version": record.asym_st_version,
    }


def render_card(
    model_dir: str | os.PathLike, config: CardConfig | None = None, results: dict | None = None
) -> ModelCard:
    """Render the card of ``model_dir`` (or of one of its towers) from its stored facts and results.

    Args:
        model_dir: an asymmetric model folder saved by asym-st.
        config: which card and which repos it links to; default: the asymmetric model's card, unpublished.
        results: :func:`~asym_st.evaluation.results.load_results` output; read from ``model_dir`` when omitted.

    Returns:
        A ``huggingface_hub.ModelCard`` whose metadata passed :func:`validate_card`.
    """
    config = config or CardConfig()
    facts = read_model_facts(model_dir)
    if results is None:
        from asym_st.evaluation.results import load_results

        results = load_results(model_dir)
    model_name = config.model_name or (config.repo_id.split("/")[-1] if config.repo_id else facts.name)
    training = _training_section(results.get("training_config"))
    card_data = _card_data(facts, results, config, model_name, training)
    context = _template_context(facts, results, config, model_name, training)
    template = templates_dir() / TEMPLATE_FILES[config.kind]
    card = ModelCard.from_template(card_data, template_path=str(template), **context)
    card = ModelCard(_tidy(str(card)))
    validate_card(card)
    return card


def _tidy(text: str) -> str:
    """Collapse the blank lines that Jinja blocks leave behind (three or more newlines become two)."""
    text = re.sub(r"\n{3,}", "\n\n", text)
    text = re.sub(r"\n+(<!-- asym-st:end [\w-]+ -->)", r"\n\1", text)
    return text.rstrip("\n") + "\n"


# --------------------------------------------------------------------------------------------------- merging


def generated_sections(text: str) -> dict[str, str]:
    """``{name: content}`` of the asym-st sections of a card body."""
    return {match.group(1): match.group(2) for match in SECTION_RE.finditer(text)}


def _merge_metadata(existing: dict, new: dict) -> dict:
    merged = dict(existing)
    for key in OWNED_METADATA:
        merged.pop(key, None)
        if key in new:
            merged[key] = new[key]
    for key, value in new.items():
        if key == "tags":
            merged["tags"] = list(dict.fromkeys([*(value or []), *(existing.get("tags") or [])]))
        elif key not in OWNED_METADATA and key not in existing:
            merged[key] = value
    return merged


def merge_cards(existing_text: str | None, new: ModelCard) -> ModelCard:
    """``new`` with the user's edits of ``existing_text`` kept.

    Sections between asym-st markers are replaced by their new content (a section the new card no longer has is
    dropped: it would hold stale numbers; a new section is inserted after its predecessor). Text outside the markers
    is kept verbatim, and so are metadata keys the user added or changed (``license``, ``language``, extra tags...)
    except the keys asym-st owns (``library_name``, ``pipeline_tag``, ``base_model``, ``model-index``).
    A card without any asym-st section (hand-written, or sentence-transformers' default) is replaced as a whole.
    """
    if not existing_text:
        return new
    old = ModelCard(existing_text, ignore_metadata_errors=True)
    if not generated_sections(old.text):
        return new
    new_sections = generated_sections(new.text)
    order = list(new_sections)

    def block(name: str) -> str:
        return f"<!-- asym-st:begin {name} -->\n{new_sections[name]}<!-- asym-st:end {name} -->\n"

    present = set()

    def replace(match: re.Match) -> str:
        name = match.group(1)
        if name not in new_sections:
            return ""
        present.add(name)
        out = block(name)
        # Sections new to this version follow their predecessor in the template order.
        for follower in order[order.index(name) + 1 :]:
            if follower in generated_sections(old.text):
                break
            present.add(follower)
            out += "\n" + block(follower)
        return out

    body = SECTION_RE.sub(replace, old.text)
    missing = [name for name in order if name not in present]
    if missing:  # no predecessor in the old card: they go first
        body = "".join(block(name) + "\n" for name in missing) + body
    metadata = _merge_metadata(old.data.to_dict(), new.data.to_dict())
    data = ModelCardData(**metadata)
    merged = ModelCard(f"---\n{data.to_yaml()}\n---\n{body.lstrip(chr(10))}")
    validate_card(merged)
    return merged


# --------------------------------------------------------------------------------------------------- validation


def find_placeholders(text: str) -> list[str]:
    """Placeholder-like strings (``TODO``, ``N/A``, ``nan``, unrendered Jinja...) in the generated sections."""
    found = []
    for content in generated_sections(text).values():
        for pattern in _PLACEHOLDER_RES:
            found += [match.group(0) for match in pattern.finditer(content)]
    return found


def find_secrets(text: str, known: list[str] | None = None) -> list[str]:
    """Hugging Face tokens (``hf_...``) and any of the ``known`` secret strings found in ``text``."""
    found = [match.group(0)[:6] + "…" for match in _TOKEN_RE.finditer(text)]
    found += ["<the token in use>" for secret in known or [] if secret and secret in text]
    return found


def validate_card(card: ModelCard | str, secrets: list[str] | None = None) -> None:
    """Check a card locally the way the Hub would, plus asym-st's own rules (the Hub's remote check is optional).

    * the YAML header parses into ``ModelCardData`` and its ``model-index`` survives the round trip
      ``model_index_to_eval_results`` -> ``eval_results_to_model_index`` unchanged, with numeric values;
    * ``library_name``, ``pipeline_tag``, ``tags``, ``base_model``, ``language`` have the types the Hub expects;
    * generated sections hold no placeholders and the card holds no token.

    Raises:
        CardValidationError: naming the first problem found.
    """
    text = str(card)
    try:
        parsed = ModelCard(text)  # ignore_metadata_errors=False: a bad model-index raises here
        metadata = parsed.data.to_dict()
    except Exception as error:
        raise CardValidationError(f"card metadata does not parse: {error}") from error
    if "model-index" in metadata:
        index = metadata["model-index"]
        try:
            name, results = model_index_to_eval_results(index)
            again = eval_results_to_model_index(name, results)
        except Exception as error:
            raise CardValidationError(f"model-index is not valid: {error}") from error
        if again != index:
            raise CardValidationError("model-index does not survive huggingface_hub's round trip unchanged.")
        for result in results:
            value = result.metric_value
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                raise CardValidationError(f"model-index value for {result.metric_type} is not a number: {value!r}")
    for key in ("library_name", "pipeline_tag", "license"):
        if key in metadata and not isinstance(metadata[key], str):
            raise CardValidationError(f"metadata {key!r} must be a string, got {metadata[key]!r}")
    if "tags" in metadata and not all(isinstance(t, str) and t for t in metadata["tags"]):
        raise CardValidationError(f"metadata 'tags' must be a list of strings, got {metadata['tags']!r}")
    for base in (
        [metadata["base_model"]] if isinstance(metadata.get("base_model"), str) else metadata.get("base_model") or []
    ):
        if not is_hub_id(base):
            raise CardValidationError(f"base_model {base!r} is not a Hub model id (org/name)")
    languages = metadata.get("language")
    for code in [languages] if isinstance(languages, str) else languages or []:
        if not isinstance(code, str) or not re.fullmatch(r"[a-z]{2,3}(-[A-Za-z0-9]+)?|multilingual|code", code):
            raise CardValidationError(f"language {code!r} is not an ISO 639 code")
    placeholders = find_placeholders(text)
    if placeholders:
        raise CardValidationError(f"generated sections contain placeholders: {sorted(set(placeholders))}")
    leaked = find_secrets(text, secrets)
    if leaked:
        raise CardValidationError(f"the card contains what looks like a token: {leaked}")


# --------------------------------------------------------------------------------------------------- files


def write_card(model_dir: str | os.PathLike, config: CardConfig | None = None, results: dict | None = None) -> Path:
    """Render the card and write it to ``MODEL_DIR/README.md`` atomically, keeping the user's edits.

    An existing README with asym-st sections is merged (:func:`merge_cards`); one without (sentence-transformers'
    default card) is replaced.
    """
    path = Path(model_dir) / "README.md"
    existing = path.read_text(encoding="utf-8") if path.is_file() else None
    card = merge_cards(existing, render_card(model_dir, config, results))
    return atomic_write_text(path, str(card))
