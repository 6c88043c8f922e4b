"""A local stand-in for the Hugging Face Hub, for tests: stdlib only, on 127.0.0.1 with a random port.

It implements the HTTP endpoints that the real ``huggingface_hub`` client (2.x) calls for ``create_repo``,
``create_commit`` / ``upload_folder`` and the downloads behind ``SentenceTransformer("org/name")`` and
``ModelCard.load``, so that tests run the library's own code end to end with ``HF_ENDPOINT`` pointing here:

* ``POST /api/repos/create``; ``GET /api/whoami-v2``; ``POST /api/validate-yaml``; ``GET /api/agent-harnesses``;
* ``GET /api/models/{repo}[/revision/{rev}]`` (model info: ``sha``, ``siblings``), ``GET .../tree/{rev}[/{path}]``,
  ``POST .../paths-info/{rev}``, ``GET .../refs``, ``POST .../branch/{name}``;
* uploads: ``POST .../preupload/{rev}`` (``regular`` or ``lfs`` per file, and the remote ``oid`` so unchanged files
  are skipped), the LFS batch API ``POST /{repo}.git/info/lfs/objects/batch`` (basic transfer only: Xet is never
  advertised, and the ``xet-*-token`` endpoints answer 404, so a client with ``HF_HUB_DISABLE_XET=1`` uses plain
  LFS), ``PUT`` of the LFS object, and the NDJSON ``POST .../commit/{rev}`` (``create_pr``, ``parentCommit``);
* downloads: ``HEAD``/``GET /{repo}/resolve/{rev}/{path}`` with the headers the client checks (``X-Repo-Commit``,
  ``ETag``; for LFS files a redirect with ``X-Linked-Etag`` = sha256 and ``X-Linked-Size``), and the LFS object.

Like the Hub, a commit is applied all at once under a lock: the branch moves to the new commit only after every
operation of the NDJSON payload was checked (LFS objects must have been uploaded), so a failed commit changes
nothing. LFS objects are content-addressed and unreachable until a commit references them.

Faults can be injected per endpoint (``hub.inject("lfs_upload", status=507, after=1)``) to test failure paths, and
every request is recorded in ``hub.requests``; requests to endpoints this server does not know are collected in
``hub.unhandled`` so a test notices when the client starts calling something new.

Example::

    with LocalHub() as hub:
        env = {"HF_ENDPOINT": hub.url, "HF_TOKEN": hub.token, "HF_HUB_DISABLE_XET": "1", "HF_HUB_OFFLINE": "0"}
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

__all__ = ["LocalHub", "Repo", "Commit", "StoredFile"]

# Hub-like rule for which files go through LFS (the Hub also reads .gitattributes; this covers model folders).
LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".onnx", ".h5", ".msgpack", ".npy", ".npz", ".png")
LFS_MIN_SIZE = 10 * 1024 * 1024
DEFAULT_GITATTRIBUTES = "".join(f"*{suffix} filter=lfs diff=lfs merge=lfs -text\n" for suffix in LFS_SUFFIXES)


def git_blob_id(content: bytes) -> str:
    """The git object id of a blob (what the Hub returns as a file's ``oid`` for regular files)."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


@dataclass(frozen=True)
class StoredFile:
    """A file in a commit: its bytes (regular) or a reference to an LFS object (sha256)."""

    size: int
    blob_id: str
    content: bytes | None = None
    lfs_sha256: str | None = None

    @property
    def etag(self) -> str:
        return self.lfs_sha256 or self.blob_id


@dataclass
class Commit:
    oid: str
    parent: str | None
    message: str
    files: dict[str, StoredFile]
    date: str


@dataclass
class Repo:
    repo_id: str
    private: bool
    branches: dict[str, str] = field(default_factory=dict)
    commits: dict[str, Commit] = field(default_factory=dict)
    pull_requests: list[str] = field(default_factory=list)  # refs/pr/N, N = index + 1

    def resolve(self, revision: str) -> Commit | None:
        if revision in self.branches:
            return self.commits[self.branches[revision]]
        if revision.startswith("refs/heads/") and revision[len("refs/heads/") :] in self.branches:
            return self.commits[self.branches[revision[len("refs/heads/") :]]]
        if re.fullmatch(r"[0-9a-f]{40}", revision) and revision in self.commits:
            return self.commits[revision]
        return None

    def head_files(self, revision: str = "main") -> dict[str, StoredFile]:
        commit = self.resolve(revision)
        return dict(commit.files) if commit else {}


@dataclass
class _Fault:
    status: int
    after: int
    times: int | None
    seen: int = 0
    fired: int = 0


class _HTTPError(Exception):
    def __init__(
        self, status: int, message: str, code: str | None = None, headers: dict | None = None, body: dict | None = None
    ):
        super().__init__(message)
        self.status, self.message, self.code, self.headers, self.body = status, message, code, headers or {}, body or {}


class LocalHub:
    """The server and its state. Start with ``with LocalHub() as hub`` or ``start()`` / ``stop()``.

    Args:
        token: the one valid token ("Bearer <token>"); writes without it get 401, a wrong one 401 too.
        user: the account name whoami reports (it may create repos in any namespace here).
    """

    def __init__(self, token: str = "hf_localtestTOKEN0123456789abcdef", user: str = "local-user"):
        self.token = token
        self.user = user
        self.repos: dict[str, Repo] = {}
        self.lfs_objects: dict[str, bytes] = {}
        self.requests: list[tuple[str, str, int]] = []
        self.unhandled: list[tuple[str, str]] = []
        self.validated_cards: list[str] = []
        self.before_commit = None  # a one-shot callable(repo_id) run when the next commit request arrives
        self._faults: dict[str, _Fault] = {}
        self._lock = threading.RLock()
        self._server: ThreadingHTTPServer | None = None
        self._cdn: ThreadingHTTPServer | None = None
        self._counter = 0

    # ------------------------------------------------------------------ lifecycle
    @property
    def url(self) -> str:
        assert self._server is not None, "LocalHub is not started"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def cdn_url(self) -> str:
        """A second origin serving LFS objects, like the Hub's CDN: the client does not follow redirects to another
        origin during its HEAD call (the file metadata is on the redirect itself) and drops the token there."""
        assert self._cdn is not None, "LocalHub is not started"
        host, port = self._cdn.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> LocalHub:
        handler = type("_BoundHandler", (_Handler,), {"hub": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._cdn = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        for server in (self._server, self._cdn):
            server.daemon_threads = True
            threading.Thread(target=server.serve_forever, name="local-hub", daemon=True).start()
        return self

    def stop(self) -> None:
        for server in (self._server, self._cdn):
            if server is not None:
                server.shutdown()
                server.server_close()
        self._server = self._cdn = None

    def __enter__(self) -> LocalHub:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------ faults and inspection
    def inject(self, point: str, status: int, after: int = 0, times: int | None = None) -> None:
        """Fail the calls to ``point`` after the first ``after`` ones, ``times`` times (``None``: for ever).

        Points: ``create_repo``, ``preupload``, ``lfs_batch``, ``lfs_upload``, ``commit``, ``resolve``, ``info``.
        ``status=0`` drops the connection without an answer.
        """
        with self._lock:
            self._faults[point] = _Fault(status=status, after=after, times=times)

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def _maybe_fail(self, point: str) -> None:
        with self._lock:
            fault = self._faults.get(point)
            if fault is None:
                return
            fault.seen += 1
            if fault.seen <= fault.after or (fault.times is not None and fault.fired >= fault.times):
                return
            fault.fired += 1
            status = fault.status
        raise _HTTPError(status, f"injected fault at {point}")

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        """The content of every file of ``repo_id`` at ``revision`` (LFS objects resolved)."""
        with self._lock:
            stored = self.repos[repo_id].head_files(revision)
            return {
                path: f.content if f.content is not None else self.lfs_objects[f.lfs_sha256]
                for path, f in stored.items()
            }

    def commit_files(self, repo_id: str, files: dict[str, bytes], message: str = "edit on the Hub") -> str:
        """Commit regular files to ``main`` directly, as a user editing on the website would."""
        with self._lock:
            repo = self.repos[repo_id]
            tree = repo.head_files("main")
            for path, content in files.items():
                tree[path] = StoredFile(size=len(content), blob_id=git_blob_id(content), content=content)
            commit = self._new_commit(repo, repo.branches["main"], message, tree)
            repo.branches["main"] = commit.oid
            return commit.oid

    def head(self, repo_id: str, revision: str = "main") -> str:
        with self._lock:
            return self.repos[repo_id].branches[revision]

    # ------------------------------------------------------------------ state changes (all under the lock)
    def _new_commit(self, repo: Repo, parent: str | None, message: str, files: dict[str, StoredFile]) -> Commit:
        self._counter += 1
        digest = hashlib.sha1(
            json.dumps(
                [repo.repo_id, parent, message, self._counter, sorted((p, f.blob_id) for p, f in files.items())]
            ).encode()
        ).hexdigest()
        commit = Commit(oid=digest, parent=parent, message=message, files=files, date=_now_iso())
        repo.commits[digest] = commit
        return commit

    def create_repo(self, repo_id: str, private: bool) -> Repo:
        with self._lock:
            if repo_id in self.repos:  # like the Hub, the conflict answer carries the repo's URL
                raise _HTTPError(409, "You already created this model repo", body={"url": f"{self.url}/{repo_id}"})
            repo = Repo(repo_id=repo_id, private=private)
            content = DEFAULT_GITATTRIBUTES.encode()
            attributes = StoredFile(size=len(content), blob_id=git_blob_id(content), content=content)
            commit = self._new_commit(repo, None, "initial commit", {".gitattributes": attributes})
            repo.branches["main"] = commit.oid
            self.repos[repo_id] = repo
            return repo


def _now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())


def _is_binary(sample: bytes) -> bool:
    if b"\x00" in sample:
        return True
    try:
        sample.decode("utf-8")
    except UnicodeDecodeError as error:
        return error.start < len(sample) - 4  # a multi-byte character cut at the end of the sample is not binary
    return False


class _Handler(BaseHTTPRequestHandler):
    hub: LocalHub
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
        pass

    # ------------------------------------------------------------------ plumbing
    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None, head_only: bool = False) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, str(value))
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Date", formatdate(usegmt=True))
        self.end_headers()
        if body and not head_only:
            self.wfile.write(body)
        self._status = status

    def _json(self, status: int, payload: Any, headers: dict | None = None) -> None:
        self._send(status, json.dumps(payload).encode(), {"Content-Type": "application/json", **(headers or {})})

    def _error(self, error: _HTTPError, head_only: bool = False) -> None:
        headers = {"Content-Type": "application/json", "X-Error-Message": error.message, **error.headers}
        if error.code:
            headers["X-Error-Code"] = error.code
        body = json.dumps({"error": error.message, **error.body}).encode()
        self._send(error.status, body, headers, head_only=head_only)

    def _token(self) -> str | None:
        auth = self.headers.get("Authorization") or ""
        return auth[len("Bearer ") :] if auth.startswith("Bearer ") else None

    def _require_write(self) -> None:
        token = self._token()
        if token is None:
            raise _HTTPError(401, "Authorization header is required to write")
        if token != self.hub.token:
            raise _HTTPError(401, "Invalid credentials in Authorization header")

    def _repo(self, repo_id: str, for_write: bool = False) -> Repo:
        token = self._token()
        if token is not None and token != self.hub.token:
            raise _HTTPError(401, "Invalid credentials in Authorization header")
        repo = self.hub.repos.get(repo_id)
        if repo is None or (repo.private and token is None):
            raise _HTTPError(404, f"Repository {repo_id} not found", code="RepoNotFound")
        if for_write:
            self._require_write()
        return repo

    def _commit(self, repo: Repo, revision: str) -> Commit:
        commit = repo.resolve(revision)
        if commit is None:
            raise _HTTPError(404, f"Invalid rev id: {revision}", code="RevisionNotFound")
        return commit

    def _dispatch(self, method: str) -> None:
        self._status = 0
        split = urlsplit(self.path)
        segments = [unquote(s) for s in split.path.split("/")[1:]]
        query = {k: v[-1] for k, v in parse_qs(split.query).items()}
        head_only = method == "HEAD"
        # Read the whole body first: an error answered before reading it would leave it in the keep-alive stream.
        self._body = self._read_body() if method in ("POST", "PUT") else b""
        try:
            handled = self._route(method, segments, query, split.path)
            if not handled:
                self.hub.unhandled.append((method, self.path))
                raise _HTTPError(404, f"local hub: no such endpoint {method} {split.path}")
        except _HTTPError as error:
            if error.status == 0:  # injected: drop the connection without an answer
                self.close_connection = True
                self._status = 0
            else:
                self._error(error, head_only=head_only)
        finally:
            self.hub.requests.append((method, self.path, self._status))

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    # ------------------------------------------------------------------ routing
    def _route(self, method: str, seg: list[str], query: dict, raw_path: str) -> bool:
        if seg[:1] == ["api"]:
            if method == "POST" and seg[1:] == ["repos", "create"]:
                return self._create_repo()
            if method == "GET" and seg[1:] == ["whoami-v2"]:
                return self._whoami()
            if method == "POST" and seg[1:] == ["validate-yaml"]:
                return self._validate_yaml()
            if method == "GET" and seg[1:] == ["agent-harnesses"]:  # the client's best-effort user-agent registry
                self._json(200, {"standardEnvVars": [], "harnesses": {}})
                return True
            if len(seg) >= 4 and seg[1] == "models":
                repo_id, rest = f"{seg[2]}/{seg[3]}", seg[4:]
                if method == "GET" and not rest:
                    return self._info(repo_id, "main", query)
                if method == "GET" and rest[:1] == ["revision"] and len(rest) == 2:
                    return self._info(repo_id, rest[1], query)
                if method == "GET" and rest[:1] == ["tree"] and len(rest) >= 2:
                    return self._tree(repo_id, rest[1], "/".join(rest[2:]), query)
                if method == "POST" and rest[:1] == ["paths-info"] and len(rest) == 2:
                    return self._paths_info(repo_id, rest[1])
                if method == "POST" and rest[:1] == ["preupload"] and len(rest) == 2:
                    return self._preupload(repo_id, rest[1])
                if method == "POST" and rest[:1] == ["commit"] and len(rest) == 2:
                    return self._commit_endpoint(repo_id, rest[1], query)
                if method == "POST" and rest[:1] == ["branch"] and len(rest) >= 2:
                    return self._create_branch(repo_id, "/".join(rest[1:]))
                if method == "GET" and rest == ["refs"]:
                    return self._refs(repo_id)
                if rest[:1] and rest[0].startswith("xet-"):
                    raise _HTTPError(404, "Xet is not supported by the local hub; set HF_HUB_DISABLE_XET=1")
            return False
        if seg[:1] == ["_lfs"]:
            if method == "PUT" and len(seg) == 3 and seg[1] == "upload":
                return self._lfs_put(seg[2])
            if method == "POST" and seg[1:] == ["verify"]:
                return self._lfs_verify()
            if method in ("GET", "HEAD") and len(seg) == 3 and seg[1] == "objects":
                return self._lfs_get(seg[2], head_only=method == "HEAD")
            return False
        if len(seg) >= 3 and seg[1].endswith(".git") and seg[2:] == ["info", "lfs", "objects", "batch"]:
            return method == "POST" and self._lfs_batch(f"{seg[0]}/{seg[1][: -len('.git')]}")
        if len(seg) >= 5 and seg[2] == "resolve" and method in ("GET", "HEAD"):
            # The revision is one quoted segment (refs%2Fpr%2F1); the file path may have slashes.
            raw = raw_path.split("/")
            return self._resolve(f"{seg[0]}/{seg[1]}", unquote(raw[4]), unquote("/".join(raw[5:])), method)
        return False

    # ------------------------------------------------------------------ endpoints: account and repos
    def _whoami(self) -> bool:
        self._require_write()
        self._json(200, {"type": "user", "name": self.hub.user, "orgs": [], "auth": {"type": "access_token"}})
        return True

    def _create_repo(self) -> bool:
        self._require_write()
        self.hub._maybe_fail("create_repo")
        payload = json.loads(self._body or b"{}")
        name, organization = payload.get("name"), payload.get("organization") or self.hub.user
        if payload.get("type", "model") != "model":
            raise _HTTPError(400, "the local hub only hosts model repos")
        repo_id = f"{organization}/{name}"
        private = payload.get("visibility") == "private" or bool(payload.get("private"))  # 2.x sends "visibility"
        self.hub.create_repo(repo_id, private=private)
        self._json(200, {"url": f"{self.hub.url}/{repo_id}", "name": repo_id, "id": repo_id})
        return True

    def _validate_yaml(self) -> bool:
        payload = json.loads(self._body or b"{}")
        content = payload.get("content", "")
        self.hub.validated_cards.append(content)
        # The Hub validates the card's metadata server-side; here huggingface_hub's own parser does it.
        from huggingface_hub import ModelCard

        try:
            card = ModelCard(content)
            card.data.to_dict()
        except Exception as error:  # the Hub answers 400 with a plain-text reason
            self._send(400, f"Invalid metadata in README.md: {error}".encode(), {"Content-Type": "text/plain"})
            return True
        self._json(200, {"errors": [], "warnings": []})
        return True

    def _info(self, repo_id: str, revision: str, query: dict) -> bool:
        self.hub._maybe_fail("info")
        with self.hub._lock:
            repo = self._repo(repo_id)
            commit = self._commit(repo, revision)
            siblings = [{"rfilename": path} for path in sorted(commit.files)]
            if query.get("blobs"):
                for sibling in siblings:
                    stored = commit.files[sibling["rfilename"]]
                    sibling.update(size=stored.size, blobId=stored.blob_id)
                    if stored.lfs_sha256:
                        sibling["lfs"] = {"sha256": stored.lfs_sha256, "size": stored.size, "pointerSize": 134}
            namespace = repo_id.split("/")[0]
            payload = {
                "_id": hashlib.md5(repo_id.encode()).hexdigest()[:24],
                "id": repo_id,
                "modelId": repo_id,
                "author": namespace,
                "sha": commit.oid,
                "lastModified": commit.date,
                "createdAt": repo.commits[min(repo.commits, key=lambda oid: repo.commits[oid].date)].date,
                "private": repo.private,
                "gated": False,
                "disabled": False,
                "downloads": 0,
                "likes": 0,
                "tags": [],
                "siblings": siblings,
            }
        self._json(200, payload)
        return True

    def _entry(self, path: str, stored: StoredFile) -> dict:
        entry = {"type": "file", "oid": stored.blob_id, "size": stored.size, "path": path}
        if stored.lfs_sha256:
            pointer = lfs_pointer(stored.lfs_sha256, stored.size)
            entry["lfs"] = {"oid": stored.lfs_sha256, "size": stored.size, "pointerSize": len(pointer)}
        return entry

    def _tree(self, repo_id: str, revision: str, path: str, query: dict) -> bool:
        with self.hub._lock:
            commit = self._commit(self._repo(repo_id), revision)
            recursive = query.get("recursive", "False").lower() in ("true", "1")
            prefix = f"{path.strip('/')}/" if path.strip("/") else ""
            entries, folders = [], set()
            for file_path in sorted(commit.files):
                if not file_path.startswith(prefix):
                    continue
                rest = file_path[len(prefix) :]
                parts = rest.split("/")
                for depth in range(1, len(parts)):
                    folder = prefix + "/".join(parts[:depth])
                    if (recursive or depth == 1) and folder not in folders:
                        folders.add(folder)
                        tree_id = hashlib.sha1(folder.encode()).hexdigest()
                        entries.append({"type": "directory", "oid": tree_id, "size": 0, "path": folder})
                if recursive or len(parts) == 1:
                    entries.append(self._entry(file_path, commit.files[file_path]))
            if prefix and not entries:
                raise _HTTPError(404, f"{path} does not exist on {revision}", code="EntryNotFound")
        self._json(200, entries)
        return True

    def _paths_info(self, repo_id: str, revision: str) -> bool:
        body = self._body
        if self.headers.get("Content-Type", "").startswith("application/json"):
            paths = json.loads(body or b"{}").get("paths", [])
        else:
            paths = parse_qs(body.decode()).get("paths", [])
        with self.hub._lock:
            commit = self._commit(self._repo(repo_id), revision)
            entries = [self._entry(p, commit.files[p]) for p in paths if p in commit.files]
            folders = {p for p in paths if p not in commit.files and any(f.startswith(p + "/") for f in commit.files)}
            entries += [
                {"type": "directory", "oid": hashlib.sha1(p.encode()).hexdigest(), "size": 0, "path": p}
                for p in sorted(folders)
            ]
        self._json(200, entries)
        return True

    def _refs(self, repo_id: str) -> bool:
        with self.hub._lock:
            repo = self._repo(repo_id)
            branches = [
                {"name": n, "ref": f"refs/heads/{n}", "targetCommit": oid}
                for n, oid in repo.branches.items()
                if not n.startswith("refs/pr/")
            ]
            prs = [{"name": n, "ref": n, "targetCommit": repo.branches[n]} for n in repo.pull_requests]
        self._json(200, {"branches": branches, "converts": [], "tags": [], "pullRequests": prs})
        return True

    def _create_branch(self, repo_id: str, branch: str) -> bool:
        payload = json.loads(self._body or b"{}")
        with self.hub._lock:
            repo = self._repo(repo_id, for_write=True)
            if branch in repo.branches:
                raise _HTTPError(409, f"Reference refs/heads/{branch} already exists")
            start = self._commit(repo, payload.get("startingPoint") or "main")
            repo.branches[branch] = start.oid
        self._json(200, {})
        return True

    # ------------------------------------------------------------------ endpoints: uploads
    def _preupload(self, repo_id: str, revision: str) -> bool:
        payload = json.loads(self._body or b"{}")
        self.hub._maybe_fail("preupload")
        with self.hub._lock:
            repo = self._repo(repo_id, for_write=True)
            current = repo.head_files(revision)
            files = []
            for item in payload.get("files", []):
                sample = base64.b64decode(item.get("sample", ""))
                path = item["path"]
                lfs = path.endswith(LFS_SUFFIXES) or item.get("size", 0) >= LFS_MIN_SIZE or _is_binary(sample)
                existing = current.get(path)
                files.append(
                    {
                        "path": path,
                        "uploadMode": "lfs" if lfs else "regular",
                        "shouldIgnore": False,
                        "oid": existing.etag if existing else None,
                    }
                )
        self._json(200, {"files": files, "commitOid": repo.branches.get(revision)})
        return True

    def _lfs_batch(self, repo_id: str) -> bool:
        payload = json.loads(self._body or b"{}")
        self.hub._maybe_fail("lfs_batch")
        with self.hub._lock:
            self._repo(repo_id, for_write=True)
            if payload.get("operation") != "upload" or "basic" not in payload.get("transfers", ["basic"]):
                raise _HTTPError(422, "the local hub supports basic LFS uploads only")
            objects = []
            for obj in payload.get("objects", []):
                entry = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
                if obj["oid"] not in self.hub.lfs_objects:  # already stored objects need no upload
                    entry["actions"] = {
                        "upload": {"href": f"{self.hub.url}/_lfs/upload/{obj['oid']}", "header": {}},
                        "verify": {"href": f"{self.hub.url}/_lfs/verify", "header": {}},
                    }
                objects.append(entry)
        self._json(200, {"transfer": "basic", "objects": objects}, {"Content-Type": "application/vnd.git-lfs+json"})
        return True

    def _lfs_put(self, oid: str) -> bool:
        data = self._body
        self.hub._maybe_fail("lfs_upload")
        if hashlib.sha256(data).hexdigest() != oid:
            raise _HTTPError(400, f"LFS object content does not match its oid {oid}")
        with self.hub._lock:
            self.hub.lfs_objects[oid] = data
        self._send(200)
        return True

    def _lfs_verify(self) -> bool:
        payload = json.loads(self._body or b"{}")
        with self.hub._lock:
            stored = self.hub.lfs_objects.get(payload.get("oid"))
        if stored is None or len(stored) != payload.get("size"):
            raise _HTTPError(404, f"LFS object {payload.get('oid')} was not uploaded")
        self._json(200, {})
        return True

    def _commit_endpoint(self, repo_id: str, revision: str, query: dict) -> bool:
        lines = [json.loads(line) for line in self._body.splitlines() if line.strip()]
        self.hub._maybe_fail("commit")
        if self.hub.before_commit is not None:  # tests simulate a concurrent push here
            hook, self.hub.before_commit = self.hub.before_commit, None
            hook(repo_id)
        create_pr = query.get("create_pr") in ("1", "true", "True")
        with self.hub._lock:
            repo = self._repo(repo_id, for_write=True)
            base = self._commit(repo, revision)
            header = next((line["value"] for line in lines if line["key"] == "header"), None)
            if not header or not header.get("summary"):
                raise _HTTPError(400, "commit header with a summary is required")
            parent = header.get("parentCommit")
            if parent and not base.oid.startswith(parent):
                raise _HTTPError(412, f"A commit has happened since {parent}; the head of {revision} is {base.oid}")
            files = dict(base.files)
            for line in lines:  # build the whole new tree first: any bad operation aborts with nothing changed
                key, value = line["key"], line.get("value", {})
                if key == "file":
                    content = base64.b64decode(value["content"])
                    files[value["path"]] = StoredFile(size=len(content), blob_id=git_blob_id(content), content=content)
                elif key == "lfsFile":
                    stored = self.hub.lfs_objects.get(value["oid"])
                    if stored is None:
                        raise _HTTPError(422, f"LFS object {value['oid']} for {value['path']} was never uploaded")
                    pointer = lfs_pointer(value["oid"], len(stored))
                    files[value["path"]] = StoredFile(
                        size=len(stored), blob_id=git_blob_id(pointer), lfs_sha256=value["oid"]
                    )
                elif key == "deletedFile":
                    if value["path"] not in files:
                        raise _HTTPError(
                            404, f"A file with this name doesn't exist: {value['path']}", code="EntryNotFound"
                        )
                    del files[value["path"]]
                elif key == "deletedFolder":
                    prefix = value["path"].rstrip("/") + "/"
                    files = {p: f for p, f in files.items() if not p.startswith(prefix)}
                elif key != "header":
                    raise _HTTPError(400, f"unknown commit operation {key!r}")
            message = header["summary"] + ("\n\n" + header["description"] if header.get("description") else "")
            commit = self.hub._new_commit(repo, base.oid, message, files)
            pr_url = None
            if create_pr:
                repo.pull_requests.append(f"refs/pr/{len(repo.pull_requests) + 1}")
                repo.branches[repo.pull_requests[-1]] = commit.oid
                pr_url = f"{self.hub.url}/{repo_id}/discussions/{len(repo.pull_requests)}"
            else:
                branch = revision[len("refs/heads/") :] if revision.startswith("refs/heads/") else revision
                if branch not in repo.branches:
                    raise _HTTPError(400, f"cannot commit to {revision}: not a branch")
                repo.branches[branch] = commit.oid  # the only mutation: one pointer moves
        self._json(
            200,
            {
                "success": True,
                "commitOid": commit.oid,
                "commitUrl": f"{self.hub.url}/{repo_id}/commit/{commit.oid}",
                "pullRequestUrl": pr_url,
            },
        )
        return True

    # ------------------------------------------------------------------ endpoints: downloads
    def _resolve(self, repo_id: str, revision: str, path: str, method: str) -> bool:
        head_only = method == "HEAD"
        self.hub._maybe_fail("resolve")
        with self.hub._lock:
            repo = self._repo(repo_id)
            commit = self._commit(repo, revision)
            stored = commit.files.get(path)
            if stored is None:
                raise _HTTPError(
                    404, f"{path} not found at {revision}", code="EntryNotFound", headers={"X-Repo-Commit": commit.oid}
                )
        headers = {"X-Repo-Commit": commit.oid, "ETag": f'"{stored.blob_id}"', "Accept-Ranges": "bytes"}
        if stored.lfs_sha256:
            # Like the Hub: LFS files redirect to the object store; the headers name the object itself.
            location = f"{self.hub.cdn_url}/_lfs/objects/{stored.lfs_sha256}"
            headers.update(
                {"Location": location, "X-Linked-Etag": f'"{stored.lfs_sha256}"', "X-Linked-Size": stored.size}
            )
            self._send(302, b"", headers, head_only=head_only)
            return True
        self._send(200, stored.content, {"Content-Type": "application/octet-stream", **headers}, head_only=head_only)
        return True

    def _lfs_get(self, oid: str, head_only: bool) -> bool:
        with self.hub._lock:
            data = self.hub.lfs_objects.get(oid)
        if data is None:
            raise _HTTPError(404, f"no LFS object {oid}")
        start = 0
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
        if match:  # resumed downloads ask for the rest of the file
            start = int(match.group(1))
            self._send(
                206,
                data[start:],
                {"Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}", "ETag": f'"{oid}"'},
                head_only,
            )
            return True
        self._send(200, data, {"Content-Type": "application/octet-stream", "ETag": f'"{oid}"'}, head_only=head_only)
        return True
