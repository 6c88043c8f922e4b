"""Publish an asymmetric model, and optionally each tower alone, to the Hugging Face Hub with generated cards.

What is pushed (``PushConfig.towers``):

* ``"asymmetric"``: the model folder as saved (the Router with both towers) to ``repo_id``;
* ``"query"``: the query tower as a standalone sentence-transformers model, to ``repo_id + "-query"``: what an app
  that only encodes queries downloads;
* ``"document"``: the document tower (the teacher, unchanged) to ``repo_id + "-document"``. Off by default: it is
  the teacher, which usually is on the Hub already (every card links it as ``base_model``).

Every repo gets its card (:mod:`asym_st.hub.card`), cross-linked with the others pushed together, and a copy of
``eval/`` so that each card's scores point to result files in its own repo.

**Why a failed push leaves the repo as it was.** Each repo is updated through huggingface_hub's commit API, in two
phases. First the files are uploaded: ``preupload`` asks the Hub which files are LFS, and LFS objects are sent to
content-addressed storage (keyed by their sha256), where they are invisible: no branch, tree or download refers to
them. Then a single ``POST /commit`` lists every file of the new version (regular files inline, LFS files by
sha256); the Hub checks that every referenced LFS object was uploaded and moves the branch to the new commit, or
rejects the whole commit. So an error during the upload phase (a 5xx on an LFS upload, a dropped connection)
never reaches the commit, and a rejected commit changes nothing: readers see the old commit or the new one, never a
mix. The commit also names its parent (``parent_commit``): if someone else pushed to the branch since this push
read the card it merges user edits from, the Hub refuses the commit instead of overwriting their change.
Atomicity holds per repo: when several repos are pushed, one may be updated and the next fail; running the same
push again completes it (unchanged files are skipped, uploaded LFS objects are not sent twice).

**Retries.** huggingface_hub already retries the preupload, LFS batch and LFS upload requests on transient HTTP
errors (429, 5xx, timeouts); the commit request itself it does not retry, because a commit whose response was lost
may have landed. :func:`push_model` retries a whole attempt (fresh operations, fresh parent commit) on transient
errors: a retried attempt whose previous commit did land finds no changed file and commits nothing. With
``create_pr`` an attempt that failed at the commit request is not retried, since it could open a second PR.

**Tokens** are taken from ``PushConfig.token``, then ``HF_TOKEN`` / the saved login (``huggingface_hub.get_token``).
They are only handed to ``HfApi``; they are never written to a card, a log line, the dry-run folder or the report,
and the push refuses to upload any text file that contains the token or anything shaped like a Hub token.

Example::

    from asym_st.hub import PushConfig, push_model

    report = push_model("minilm-qed-2l", PushConfig(repo_id="me/minilm-qed-2l", towers=("asymmetric", "query")))
    print(report.to_dict())
    push_model("minilm-qed-2l", PushConfig(repo_id="me/minilm-qed-2l", dry_run=True))  # writes the folders only
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from asym_st.hub.card import CardConfig, CardLinks, find_secrets, generated_sections, merge_cards, render_card
from asym_st.hub.facts import read_model_facts
from asym_st.utils.io import OutputExistsError, atomic_directory, atomic_write_json, atomic_write_text

__all__ = ["PushConfig", "PushReport", "RepoPush", "PushError", "MissingTokenError", "push_model", "TOWER_KINDS"]

logger = logging.getLogger(__name__)

TOWER_KINDS = ("asymmetric", "query", "document")
DRY_RUN_MARKER = "operations.json"
TRANSIENT_STATUS = (408, 429, 500, 502, 503, 504)
# Never uploaded from a model folder: its README is regenerated, hidden files and partial writes are not model.
_SKIPPED_NAMES = {"README.md", "__pycache__"}
_TEXT_SUFFIXES = (".json", ".md", ".txt", ".yaml", ".yml", ".csv", ".tsv", ".py", ".cfg", ".ini", ".jsonl")


class PushError(RuntimeError):
    """A push that did not complete; the message says which repo, what failed, and what state it is in."""


class MissingTokenError(ValueError):
    """A real push without a Hugging Face token."""


@dataclass
class PushConfig:
    """Where and how to push.

    Args:
        repo_id: the asymmetric model's repo, ``namespace/name``.
        towers: what to push, among ``"asymmetric"``, ``"query"``, ``"document"`` (default: the first two).
        query_repo: the query tower's repo (default ``repo_id + "-query"``).
        document_repo: the document tower's repo (default ``repo_id + "-document"``).
        private: create new repos as private (an existing repo keeps its visibility).
        revision: the branch to push to (created from ``main`` if missing); default ``main``.
        create_pr: open a pull request against ``revision`` instead of committing to it.
        commit_message: default ``"Upload <what> with asym-st <version>"``.
        token: a Hub token; default ``HF_TOKEN`` or the saved login. Never stored or printed.
        endpoint: the Hub URL; default ``HF_ENDPOINT`` or https://huggingface.co.
        dry_run: write the folders that would be uploaded (with their cards) and list the operations; no network
            write, no token needed.
        output_dir: the dry-run folder (default ``MODEL_DIR.hub-dry-run``), one sub-folder per repo.
        max_retries: attempts after a transient error (429, 5xx, timeouts, dropped connections).
        retry_wait: seconds before the first retry, doubled each time.
        license / language / tags: card overrides (default: the teacher's license and language).
    """

    repo_id: str
    towers: tuple[str, ...] = ("asymmetric", "query")
    query_repo: str | None = None
    document_repo: str | None = None
    private: bool = False
    revision: str | None = None
    create_pr: bool = False
    commit_message: str | None = None
    token: str | None = field(default=None, repr=False)
    endpoint: str | None = None
    dry_run: bool = False
    output_dir: str | None = None
    max_retries: int = 3
    retry_wait: float = 2.0
    license: str | None = None
    language: str | list[str] | None = None
    tags: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.towers = tuple(dict.fromkeys(self.towers))
        unknown = [t for t in self.towers if t not in TOWER_KINDS]
        if unknown or not self.towers:
            raise ValueError(f"towers={list(self.towers)}: choose one or more of {', '.join(TOWER_KINDS)}.")
        for repo in (self.repo_id, *(r for r in (self.query_repo, self.document_repo) if r)):
            _check_repo_id(repo)
        for kind in self.towers:
            _check_repo_id(self.repo_for(kind))
        if self.max_retries < 0:
            raise ValueError(f"max_retries={self.max_retries} must be >= 0.")

    def repo_for(self, kind: str) -> str:
        if kind == "query":
            return self.query_repo or f"{self.repo_id}-query"
        if kind == "document":
            return self.document_repo or f"{self.repo_id}-document"
        return self.repo_id


@dataclass
class RepoPush:
    """What happened (or, in a dry run, would happen) to one repo."""

    kind: str
    repo_id: str
    operations: list[dict[str, Any]]
    card_merged_from: str
    folder: str | None = None
    url: str | None = None
    commit_url: str | None = None
    commit_oid: str | None = None
    pr_url: str | None = None
    attempts: int = 0


@dataclass
class PushReport:
    dry_run: bool
    repos: list[RepoPush]
    output_dir: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "output_dir": self.output_dir,
            "repos": [repo.__dict__ for repo in self.repos],
        }


# --------------------------------------------------------------------------------------------------- checks


def _check_repo_id(repo_id: str) -> None:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if not isinstance(repo_id, str) or repo_id.count("/") != 1:
        raise ValueError(f"Invalid repo id {repo_id!r}: expected 'namespace/name' (e.g. 'my-org/minilm-qed-2l').")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise ValueError(f"Invalid repo id {repo_id!r}: {error}") from error


def _resolve_token(config: PushConfig) -> str:
    from huggingface_hub import get_token

    token = config.token or get_token()
    if not token:
        raise MissingTokenError(
            "No Hugging Face token: set HF_TOKEN, run `hf auth login`, or pass a token; "
            "use --dry-run to see what would be pushed without one."
        )
    return token


def _check_online() -> None:
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        raise PushError("HF_HUB_OFFLINE is set, so the Hub cannot be reached: unset it to push, or use a dry run.")


# --------------------------------------------------------------------------------------------------- staging


def _link_or_copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)  # same filesystem: no copy of the weights
    except OSError:
        shutil.copy2(source, target)


def _model_files(folder: Path) -> list[Path]:
    files = []
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if any(
            part.startswith(".") or part in ("__pycache__",) or part.endswith(".partial") for part in relative.parts
        ):
            continue
        if (
            path.is_file()
            and relative.as_posix() not in _SKIPPED_NAMES
            and not relative.parts[0].startswith("checkpoint-")
        ):
            files.append(path)
    return files


def _stage_files(model_dir: Path, kind: str, target: Path, model_cache: dict) -> None:
    """Put exactly the files of ``kind``'s repo (README excepted) into ``target``."""
    if kind == "asymmetric":
        for path in _model_files(model_dir):
            _link_or_copy(path, target / path.relative_to(model_dir))
        return
    from asym_st.modeling import load_asymmetric_model, save_tower

    if "model" not in model_cache:
        model_cache["model"] = load_asymmetric_model(model_dir, device="cpu")
    tower_dir = target.parent / f".{target.name}.tower"
    save_tower(model_cache["model"], kind, tower_dir, overwrite=True)
    for path in _model_files(tower_dir):
        _link_or_copy(path, target / path.relative_to(tower_dir))
    shutil.rmtree(tower_dir, ignore_errors=True)
    extras = [p for p in _model_files(model_dir) if p.relative_to(model_dir).parts[0] == "eval"]
    if kind == "query" and (model_dir / "training_config.json").is_file():
        extras.append(model_dir / "training_config.json")
    for path in extras:  # each card's scores point to result files in its own repo
        _link_or_copy(path, target / path.relative_to(model_dir))


def _operations(folder: Path) -> list[dict[str, Any]]:
    return [
        {"operation": "add", "path_in_repo": p.relative_to(folder).as_posix(), "size": p.stat().st_size}
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    ]


def _check_no_secrets(folder: Path, token: str | None) -> None:
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.suffix in _TEXT_SUFFIXES and path.stat().st_size < 20_000_000:
            leaked = find_secrets(path.read_text(encoding="utf-8", errors="ignore"), [token] if token else None)
            if leaked:
                raise PushError(
                    f"Refusing to upload {path.relative_to(folder)}: it contains what looks like a Hugging Face "
                    "token. Remove it from the model folder first."
                )


# --------------------------------------------------------------------------------------------------- remote


def _is_transient(error: BaseException) -> bool:
    from huggingface_hub.errors import HfHubHTTPError
    from huggingface_hub.utils import httpx

    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, httpx.TransportError):
            return True
        if isinstance(error, HfHubHTTPError) and error.response is not None:
            return error.response.status_code in TRANSIENT_STATUS
        error = error.__cause__ or error.__context__
    return False


def _request_url(error: BaseException) -> str:
    for owner in (getattr(error, "response", None), error):
        try:  # httpx raises RuntimeError when a response or error has no request attached
            request = owner.request if owner is not None else None
        except (AttributeError, RuntimeError):
            request = None
        if request is not None:
            return str(request.url)
    return ""


def _failed_at_commit(error: BaseException) -> bool:
    """True when the failing request was the commit itself (it may have landed without us seeing the answer)."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if "/commit/" in _request_url(error):
            return True
        error = error.__cause__ or error.__context__
    return False


def _repo_state(error: BaseException) -> str:
    """What a failed attempt left on the Hub, from where it failed."""
    if not _failed_at_commit(error):
        return "Nothing was committed: the repo keeps its previous version (uploaded LFS objects stay invisible)."
    if getattr(error, "response", None) is not None or getattr(error.__cause__, "response", None) is not None:
        return "The Hub rejected the commit: the repo keeps its previous version."
    return (
        "The commit request got no answer: the repo holds either its previous version or the complete new one, "
        "never a mix."
    )


def _remote_card(api, repo_id: str, revision: str) -> tuple[str | None, str | None]:
    """The repo's head commit and README text at ``revision`` (``None`` where the repo/branch/README is absent)."""
    from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    try:
        head = api.repo_info(repo_id, revision=revision).sha
    except (RepositoryNotFoundError, RevisionNotFoundError):
        return None, None
    with tempfile.TemporaryDirectory(prefix="asym-st-card-") as cache:
        try:
            path = api.hf_hub_download(repo_id, "README.md", revision=head, cache_dir=cache)
        except EntryNotFoundError:
            return head, None
        return head, Path(path).read_text(encoding="utf-8")


def _describe(error: BaseException) -> str:
    from huggingface_hub.errors import HfHubHTTPError

    status = getattr(getattr(error, "response", None), "status_code", None)
    hint = {
        401: "the Hub rejected the token (check HF_TOKEN or `hf auth login`)",
        403: "the token may not write to this namespace",
        412: "someone pushed to this branch meanwhile; run the push again to merge their card edits",
    }.get(status)
    text = str(error).splitlines()[0] if str(error) else type(error).__name__
    if isinstance(error, HfHubHTTPError) and hint:
        return f"{text} ({hint})"
    cause = error.__cause__
    if cause is not None and cause is not error:
        return f"{text}: {_describe(cause)}"
    return text


# --------------------------------------------------------------------------------------------------- push


def _card_for(model_dir: Path, kind: str, config: PushConfig, links: CardLinks, existing: str | None) -> str:
    card_config = CardConfig(kind=kind, links=links, license=config.license, language=config.language, tags=config.tags)
    card = render_card(model_dir, card_config)
    return str(merge_cards(existing, card))


def _local_card(model_dir: Path, kind: str) -> str | None:
    """The model folder's own README, if the user refreshed and edited it (asymmetric card only)."""
    path = model_dir / "README.md"
    if kind != "asymmetric" or not path.is_file():
        return None
    text = path.read_text(encoding="utf-8")
    return text if generated_sections(text) else None  # sentence-transformers' default card is simply replaced


def _commit(
    api, model_dir: Path, kind: str, repo_id: str, folder: Path, config: PushConfig, links: CardLinks, token: str
) -> RepoPush:
    from huggingface_hub import CommitOperationAdd

    revision = config.revision or "main"
    version = _asym_st_version()
    message = (
        config.commit_message
        or f"Upload {'asymmetric model' if kind == 'asymmetric' else kind + ' tower'} with asym-st {version}"
    )
    push = RepoPush(kind=kind, repo_id=repo_id, operations=[], card_merged_from="")
    wait = config.retry_wait
    while True:
        push.attempts += 1
        phase = "reading the current card"
        try:
            head, remote = _remote_card(api, repo_id, revision)
            existing = remote if remote is not None else _local_card(model_dir, kind)
            push.card_merged_from = (
                f"README.md of {repo_id}@{head[:12]}" if remote else ("MODEL_DIR/README.md" if existing else "new card")
            )
            atomic_write_text(folder / "README.md", _card_for(model_dir, kind, config, links, existing))
            _check_no_secrets(folder, token)
            push.operations = _operations(folder)
            operations = [
                CommitOperationAdd(path_in_repo=op["path_in_repo"], path_or_fileobj=str(folder / op["path_in_repo"]))
                for op in push.operations
            ]
            phase = "uploading and committing"
            info = api.create_commit(
                repo_id,
                operations,
                commit_message=message,
                commit_description="Files and card generated by asym-st from the model folder and its stored results.",
                revision=revision,
                create_pr=config.create_pr,
                parent_commit=head if not config.create_pr else None,
            )
        except PushError:
            raise
        except Exception as error:
            retry = _is_transient(error) and push.attempts <= config.max_retries
            if retry and config.create_pr and _failed_at_commit(error):
                retry = False  # the PR may exist already; a second attempt could open another one
            if not retry:
                raise PushError(
                    f"Pushing the {kind} model to {repo_id} failed while {phase} after {push.attempts} attempt(s): "
                    f"{_describe(error)}. {_repo_state(error)} Run the same push again to retry; unchanged files "
                    "and LFS objects already uploaded are not sent twice."
                ) from error
            logger.warning("Transient error pushing to %s (%s); retrying in %.0f s.", repo_id, _describe(error), wait)
            time.sleep(wait)
            wait *= 2
            continue
        push.commit_url, push.commit_oid, push.pr_url = info.commit_url, info.oid, info.pr_url
        return push


def _asym_st_version() -> str:
    from asym_st import __version__

    return __version__


def _with_retries(action, what: str, config: PushConfig):
    wait = config.retry_wait
    for attempt in range(config.max_retries + 1):
        try:
            return action()
        except Exception as error:
            if not _is_transient(error) or attempt == config.max_retries:
                raise PushError(f"{what} failed: {_describe(error)}") from error
            logger.warning("Transient error (%s) during %s; retrying in %.0f s.", _describe(error), what, wait)
            time.sleep(wait)
            wait *= 2


def _dry_run_output(model_dir: Path, config: PushConfig) -> Path:
    out = Path(config.output_dir) if config.output_dir else model_dir.with_name(model_dir.name + ".hub-dry-run")
    if out.resolve() == model_dir.resolve() or model_dir.resolve() in out.resolve().parents:
        raise ValueError(f"The dry-run folder {out} must be outside the model folder {model_dir}.")
    if out.is_dir() and any(out.iterdir()) and not (out / DRY_RUN_MARKER).is_file():
        raise OutputExistsError(f"{out} exists and is not a previous dry run; choose another --output folder.")
    return out


def push_model(model_dir: str | os.PathLike, config: PushConfig) -> PushReport:
    """Push ``model_dir`` (and the chosen towers) to the Hub, or write what would be pushed (``config.dry_run``).

    Raises:
        ValueError: invalid repo id or towers; :class:`MissingTokenError` without a token for a real push.
        NotAnAsymmetricModelError / FileNotFoundError: ``model_dir`` is not an asymmetric model folder.
        PushError: the Hub refused or failed; the message names the repo and says that it was left unchanged.
    """
    model_dir = Path(model_dir)
    read_model_facts(model_dir)  # fail early, with a clear message, on a folder that is not an asymmetric model
    token = None
    if not config.dry_run:
        token = _resolve_token(config)
        _check_online()
    from huggingface_hub import HfApi

    api = HfApi(endpoint=config.endpoint, token=token, library_name="asym-st", library_version=_asym_st_version())
    links = CardLinks(
        **{kind: config.repo_for(kind) for kind in config.towers},
        revision=config.revision or "main",
        endpoint=api.endpoint,
    )
    model_cache: dict = {}
    if config.dry_run:
        return _dry_run(model_dir, config, api, links, model_cache)

    pushes = []
    with tempfile.TemporaryDirectory(prefix="asym-st-push-") as staging:
        # Towers first, the asymmetric model (the main artefact, whose card links the towers) last.
        for kind in sorted(config.towers, key=lambda k: k == "asymmetric"):
            repo_id = config.repo_for(kind)
            folder = Path(staging) / kind
            _stage_files(model_dir, kind, folder, model_cache)
            url = _with_retries(
                lambda repo_id=repo_id: api.create_repo(repo_id, private=config.private, exist_ok=True),
                f"creating or finding {repo_id}",
                config,
            )
            if config.revision and config.revision != "main":
                _with_retries(
                    lambda repo_id=repo_id: api.create_branch(repo_id, branch=config.revision, exist_ok=True),
                    f"creating branch {config.revision} of {repo_id}",
                    config,
                )
            push = _commit(api, model_dir, kind, repo_id, folder, config, links, token)
            push.url = str(url)
            pushes.append(push)
            logger.info("Pushed %s to %s (%s).", kind, repo_id, push.pr_url or push.commit_url)
    return PushReport(dry_run=False, repos=pushes)


def _dry_run(model_dir: Path, config: PushConfig, api, links: CardLinks, model_cache: dict) -> PushReport:
    from huggingface_hub import constants

    out = _dry_run_output(model_dir, config)
    pushes = []
    with atomic_directory(out, overwrite=True) as tmp:
        for kind in sorted(config.towers, key=lambda k: k == "asymmetric"):
            repo_id = config.repo_for(kind)
            folder = tmp / kind
            _stage_files(model_dir, kind, folder, model_cache)
            remote, source = None, "new card (remote not consulted: offline)"
            if not constants.HF_HUB_OFFLINE:
                try:  # the real push merges the repo's README, so the preview does too when it can read it
                    head, remote = _remote_card(api, repo_id, config.revision or "main")
                    source = f"README.md of {repo_id}@{head[:12]}" if remote else "new card"
                except Exception as error:
                    source = f"new card (remote not consulted: {type(error).__name__})"
            existing = remote if remote is not None else _local_card(model_dir, kind)
            if remote is None and existing is not None:
                source = "MODEL_DIR/README.md"
            atomic_write_text(folder / "README.md", _card_for(model_dir, kind, config, links, existing))
            _check_no_secrets(folder, None)
            push = RepoPush(
                kind=kind,
                repo_id=repo_id,
                folder=str(out / kind),
                operations=_operations(folder),
                card_merged_from=source,
            )
            pushes.append(push)
        report = PushReport(dry_run=True, repos=pushes, output_dir=str(out))
        atomic_write_json(tmp / DRY_RUN_MARKER, report.to_dict())
    return report
