"""A minimal in-memory Hugging Face Hub for offline tests, and a runner for isolated client processes.

:class:`HubServer` speaks the part of the Hub protocol that ``huggingface_hub`` 2.4 uses for a push and a
pull of model repositories (checked against its ``hf_api.py``, ``_commit_api.py`` and ``file_download.py``):

- ``POST /api/repos/create``                       -> ``{"url": ...}`` (409 when it exists)
- ``POST /api/validate-yaml``                      -> ``{}``
- ``GET  /api/whoami-v2``                          -> the test user
- ``POST /api/models/{repo}/preupload/{rev}``      -> every file ``"regular"`` (inline base64 in the commit)
- ``POST /api/models/{repo}/commit/{rev}``         -> ndjson header/file/deletedFile/deletedFolder lines
- ``GET  /api/models/{repo}[/revision/{rev}]``     -> model info with ``sha`` and ``siblings``
- ``GET  /api/models/{repo}/tree/{rev}[/{path}]``  -> ``RepoFile``/``RepoFolder`` entries
- ``POST /api/models/{repo}/paths-info/{rev}``     -> entries for the paths that exist
- ``HEAD/GET /{repo}/resolve/{rev}/{file}``        -> bytes with ``X-Repo-Commit`` and ``ETag``

Errors carry ``X-Error-Code`` (``RepoNotFound``, ``RevisionNotFound``, ``EntryNotFound``) as the Hub does, so
the client raises its usual exceptions (e.g. a missing README.md is an ``EntryNotFoundError``). Every request
is recorded in :attr:`HubServer.requests`. Revisions are branch names or commit shas; commits are kept.

:func:`run_isolated` runs Python code in a fresh interpreter whose ``import causalqwen`` fails and whose
sockets may only connect to 127.0.0.1, with the ``HF_*`` variables set before anything is imported.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

USER = "tester"
TOKEN = "hf_test_token_for_the_local_server"


def git_blob_sha1(data: bytes) -> str:
    """The git blob id the Hub reports as a regular file's ``oid`` (and the client computes locally)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Repo:
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)

    def resolve(self, revision: str) -> str | None:
        if revision in self.branches:
            return self.branches[revision]
        return revision if revision in self.commits else None


class HubServer:
    """The in-memory Hub, served by a ``ThreadingHTTPServer`` on 127.0.0.1 in a daemon thread."""

    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.requests: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> HubServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    # ----------------------------------------------------------------------------------------- repository
    def create_repo(self, repo_id: str) -> bool:
        with self._lock:
            if repo_id in self.repos:
                return False
            repo = Repo()
            self._commit(repo, "main", {}, summary="initial commit")
            self.repos[repo_id] = repo
            return True

    def _commit(self, repo: Repo, branch: str, files: dict[str, bytes], summary: str) -> str:
        parent = repo.branches.get(branch, "")
        sha = hashlib.sha1(f"{parent}:{summary}:{time.time_ns()}:{len(repo.commits)}".encode()).hexdigest()
        repo.commits[sha] = files
        repo.branches[branch] = sha
        return sha

    def apply_commit(self, repo_id: str, branch: str, lines: list[dict]) -> str:
        with self._lock:
            repo = self.repos[repo_id]
            files = dict(repo.commits[repo.branches[branch]])
            summary = ""
            for line in lines:
                key, value = line["key"], line["value"]
                if key == "header":
                    summary = value.get("summary", "")
                elif key == "file":
                    if value.get("encoding", "base64") != "base64":
                        raise ValueError(f"unsupported file encoding {value.get('encoding')!r}")
                    files[value["path"]] = base64.b64decode(value["content"])
                elif key == "deletedFile":
                    files.pop(value["path"], None)
                elif key == "deletedFolder":
                    prefix = value["path"].rstrip("/") + "/"
                    files = {p: d for p, d in files.items() if not p.startswith(prefix)}
                else:
                    raise ValueError(f"unsupported commit operation {key!r} (LFS is never requested)")
            return self._commit(repo, branch, files, summary)

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        repo = self.repos[repo_id]
        return repo.commits[repo.resolve(revision)]


def _tree_entries(files: dict[str, bytes], prefix: str, recursive: bool) -> list[dict]:
    prefix = prefix.strip("/")
    base = f"{prefix}/" if prefix else ""
    entries, folders = [], set()
    for path in sorted(files):
        if not path.startswith(base):
            continue
        rest = path[len(base) :]
        if "/" in rest:
            folder = base + rest.split("/")[0]
            folders.add(folder)
            if not recursive:
                continue
            parts = rest.split("/")[:-1]
            folders.update(base + "/".join(parts[: i + 1]) for i in range(len(parts)))
        data = files[path]
        entries.append({"type": "file", "path": path, "size": len(data), "oid": git_blob_sha1(data)})
    for folder in sorted(folders):
        oid = hashlib.sha1(folder.encode()).hexdigest()
        entries.append({"type": "directory", "path": folder, "size": 0, "oid": oid})
    return entries


def _make_handler(hub: HubServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format, *args):  # keep pytest output clean
            pass

        # -------------------------------------------------------------------------------------- replies
        def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            headers = {"Content-Length": str(len(body)), **(headers or {})}
            for key, value in headers.items():
                self.send_header(key, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _json(self, status: int, payload, headers: dict[str, str] | None = None) -> None:
            body = json.dumps(payload).encode()
            self._send(status, body, {"Content-Type": "application/json", **(headers or {})})

        def _error(self, status: int, code: str, message: str) -> None:
            self._json(status, {"error": message}, {"X-Error-Code": code, "X-Error-Message": message})

        def _body(self) -> bytes:
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        # -------------------------------------------------------------------------------------- routing
        def _route(self) -> None:
            url = urlsplit(self.path)
            parts = [unquote(p) for p in url.path.strip("/").split("/")]
            query = parse_qs(url.query)
            hub.requests.append((self.command, url.path))
            if self.headers.get("Authorization") not in (f"Bearer {TOKEN}", None):
                return self._error(401, "Unauthorized", "Invalid credentials in Authorization header")
            if parts[:2] == ["api", "repos"] and parts[2:] == ["create"] and self.command == "POST":
                return self._create_repo()
            if parts == ["api", "validate-yaml"] and self.command == "POST":
                self._body()
                return self._json(200, {"errors": [], "warnings": []})
            if parts == ["api", "whoami-v2"]:
                return self._json(200, {"type": "user", "name": USER, "orgs": [], "auth": {}})
            if parts[:2] == ["api", "models"] and len(parts) >= 4:
                return self._model_api(f"{parts[2]}/{parts[3]}", parts[4:], query)
            if len(parts) >= 5 and parts[2] == "resolve" and self.command in ("GET", "HEAD"):
                return self._resolve(f"{parts[0]}/{parts[1]}", parts[3], "/".join(parts[4:]))
            return self._error(404, "NotFound", f"no route for {self.command} {url.path}")

        def _repo(self, repo_id: str) -> Repo | None:
            repo = hub.repos.get(repo_id)
            if repo is None:
                self._error(404, "RepoNotFound", f"Repository {repo_id} not found")
            return repo

        def _commit_of(self, repo: Repo, revision: str) -> str | None:
            sha = repo.resolve(revision)
            if sha is None:
                self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
            return sha

        def _create_repo(self) -> None:
            payload = json.loads(self._body() or b"{}")
            if payload.get("type", "model") not in (None, "model"):
                return self._error(400, "BadRequest", "the test server only hosts model repositories")
            repo_id = f"{payload.get('organization') or USER}/{payload['name']}"
            url = f"{hub.url}/{repo_id}"
            if not hub.create_repo(repo_id):
                return self._json(409, {"error": "You already created this model repo", "url": url})
            return self._json(200, {"url": url, "name": repo_id})

        def _model_api(self, repo_id: str, rest: list[str], query: dict) -> None:
            repo = self._repo(repo_id)
            if repo is None:
                return None
            action = rest[0] if rest else "revision"
            revision = rest[1] if len(rest) > 1 else "main"
            if action == "preupload" and self.command == "POST":
                payload = json.loads(self._body())
                files = hub.files(repo_id, revision) if repo.resolve(revision) else {}
                answer = [
                    {
                        "path": f["path"],
                        "uploadMode": "regular",
                        "shouldIgnore": False,
                        "oid": git_blob_sha1(files[f["path"]]) if f["path"] in files else None,
                    }
                    for f in payload["files"]
                ]
                return self._json(200, {"files": answer})
            if action == "commit" and self.command == "POST":
                if revision not in repo.branches:
                    return self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
                lines = [json.loads(line) for line in self._body().splitlines() if line.strip()]
                try:
                    sha = hub.apply_commit(repo_id, revision, lines)
                except ValueError as error:
                    return self._error(400, "BadRequest", str(error))
                return self._json(
                    200,
                    {
                        "commitUrl": f"{hub.url}/{repo_id}/commit/{sha}",
                        "commitOid": sha,
                        "pullRequestUrl": None,
                    },
                )
            if action == "revision" and self.command == "GET":
                sha = self._commit_of(repo, revision)
                if sha is None:
                    return None
                siblings = [{"rfilename": path} for path in sorted(repo.commits[sha])]
                info = {"id": repo_id, "modelId": repo_id, "sha": sha, "private": False, "siblings": siblings}
                return self._json(200, {**info, "tags": [], "downloads": 0, "likes": 0})
            if action == "tree" and self.command == "GET":
                sha = self._commit_of(repo, revision)
                if sha is None:
                    return None
                recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
                prefix = "/".join(rest[2:])
                entries = _tree_entries(repo.commits[sha], prefix, recursive)
                if prefix and not entries:
                    return self._error(404, "EntryNotFound", f"{prefix} does not exist at {revision}")
                return self._json(200, entries)
            if action == "paths-info" and self.command == "POST":
                sha = self._commit_of(repo, revision)
                if sha is None:
                    return None
                body = self._body()
                try:
                    paths = json.loads(body)["paths"]
                except (ValueError, KeyError):
                    paths = parse_qs(body.decode()).get("paths", [])
                entries = _tree_entries(repo.commits[sha], "", True)
                return self._json(200, [e for e in entries if e["path"] in set(paths)])
            return self._error(404, "NotFound", f"unsupported model API call {self.command} {action}")

        def _resolve(self, repo_id: str, revision: str, path: str) -> None:
            repo = self._repo(repo_id)
            if repo is None:
                return None
            sha = self._commit_of(repo, revision)
            if sha is None:
                return None
            files = repo.commits[sha]
            if path not in files:
                return self._error(404, "EntryNotFound", f"{path} does not exist at {revision}")
            data = files[path]
            headers = {
                "ETag": f'"{git_blob_sha1(data)}"',
                "X-Repo-Commit": sha,
                "Content-Type": "application/octet-stream",
            }
            return self._send(200, data, headers)

        def do_GET(self):
            self._route()

        def do_HEAD(self):
            self._route()

        def do_POST(self):
            self._route()

    return Handler


# ----------------------------------------------------------------------------------------- isolated runs
_PRELUDE = '''
import importlib.abc, socket, sys

class _NoCausalQwen(importlib.abc.MetaPathFinder):
    """Makes the process look like a machine where causalqwen is not installed."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "causalqwen":
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)", name=name)

if __BLOCK_PACKAGE__:
    sys.meta_path.insert(0, _NoCausalQwen())

_connect = socket.socket.connect

def _loopback_only(self, address):
    host = address[0] if isinstance(address, tuple) else address
    if self.family in (socket.AF_INET, socket.AF_INET6) and host not in ("127.0.0.1", "::1", "localhost"):
        raise ConnectionRefusedError(f"test process may only reach 127.0.0.1, not {host}")
    return _connect(self, address)

socket.socket.connect = _loopback_only
'''


def run_isolated(
    code: str,
    tmp_path: Path,
    *,
    endpoint: str | None = None,
    block_package: bool = True,
    timeout: float = 300,
) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter (cwd ``tmp_path``) and return the finished process.

    ``import causalqwen`` fails there when ``block_package``; sockets reach only the loopback interface.
    ``HF_MODULES_CACHE`` and ``HF_HOME`` live under ``tmp_path``; with ``endpoint`` the process talks to that
    Hub (online mode, test token, no Xet), otherwise it runs with ``HF_HUB_OFFLINE=1``.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env.update(
        HF_HOME=str(tmp_path / "hf_home"),
        HF_MODULES_CACHE=str(tmp_path / "hf_modules"),
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
        USE_HUB_KERNELS="0",
        TOKENIZERS_PARALLELISM="false",
        PYTHONDONTWRITEBYTECODE="1",
        NO_PROXY="127.0.0.1,localhost",
        no_proxy="127.0.0.1,localhost",
    )
    for proxy in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        env.pop(proxy, None)
    if endpoint is None:
        env["HF_HUB_OFFLINE"] = "1"
    else:
        env.update(HF_ENDPOINT=endpoint, HF_TOKEN=TOKEN, HF_HUB_OFFLINE="0", HF_HUB_DISABLE_XET="1")
    script = tmp_path / "isolated_script.py"
    script.write_text(
        _PRELUDE.replace("__BLOCK_PACKAGE__", str(bool(block_package))) + textwrap.dedent(code),
        encoding="utf-8",
    )
    return subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def last_json_line(process: subprocess.CompletedProcess) -> dict:
    """The JSON object the isolated script printed last; fails with its output when it crashed."""
    if process.returncode != 0:
        raise AssertionError(
            f"isolated process failed ({process.returncode}):\n{process.stdout}\n{process.stderr}"
        )
    for line in reversed(process.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise AssertionError(f"isolated process printed no JSON:\n{process.stdout}\n{process.stderr}")
