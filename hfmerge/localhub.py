"""A small Hub-compatible HTTP server on 127.0.0.1, for offline demos and tests.

It speaks the part of the Hub protocol that huggingface_hub's client uses for models and datasets:
whoami, repo create/info/tree/paths-info/commits, preupload + LFS batch/PUT/verify + ndjson commits
(applied atomically: a commit lands whole or not at all), validate-yaml, and resolve with HEAD, GET and
byte ranges. Tokens are checked (Bearer), private and gated repos are refused to the wrong callers, and
errors carry the client's X-Error-Code headers. Storage is a folder (content-addressed blobs) + memory.
Start it with :func:`serve`; point clients at it with HF_ENDPOINT (and HF_HUB_DISABLE_XET=1).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

import yaml

LFS_THRESHOLD = 10 * 1024  # files at least this large (or *.safetensors) go through LFS, like the Hub


@dataclass
class FileEntry:
    size: int
    sha256: str
    git_oid: str
    lfs: bool


@dataclass
class Commit:
    sha: str
    parent: str | None
    files: dict[str, FileEntry]
    title: str
    date: float


@dataclass
class Repo:
    type: str
    id: str
    private: bool = False
    gated: bool = False
    branches: dict[str, str] = field(default_factory=dict)
    commits: dict[str, Commit] = field(default_factory=dict)


class HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


class LocalHub:
    """State of the server: users (token -> name), repos, blobs."""

    def __init__(self, root: Path, tokens: dict[str, str]):
        self.root = root
        (root / "blobs").mkdir(parents=True, exist_ok=True)
        self.tokens = tokens
        self.repos: dict[tuple[str, str], Repo] = {}
        self.lock = threading.Lock()
        self.on_lfs_put = None  # test hook: called with the handler before an LFS upload is read

    # ---- blobs --------------------------------------------------------------------------------------------
    def blob_path(self, sha256: str) -> Path:
        return self.root / "blobs" / sha256

    def put_blob(self, data: bytes) -> FileEntry:
        sha = hashlib.sha256(data).hexdigest()
        path = self.blob_path(sha)
        if not path.exists():
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(data)
            tmp.rename(path)
        git = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        return FileEntry(len(data), sha, git, False)

    # ---- repos --------------------------------------------------------------------------------------------
    def create_repo(self, repo_type: str, repo_id: str, private: bool) -> Repo:
        with self.lock:
            key = (repo_type, repo_id)
            if key in self.repos:
                raise HubError(409, "You already created this repo")
            repo = Repo(repo_type, repo_id, private)
            first = Commit(_sha(f"{repo_id}|init"), None, {}, "initial commit", time.time())
            readme = self.put_blob(b"")
            first.files = {".gitattributes": readme}
            repo.commits[first.sha] = first
            repo.branches["main"] = first.sha
            self.repos[key] = repo
            return repo

    def get(self, repo_type: str, repo_id: str, user: str | None) -> Repo:
        repo = self.repos.get((repo_type, repo_id))
        if repo is None or (repo.private and user != repo_id.split("/")[0]):
            raise HubError(404, f"Repository {repo_id} not found", "RepoNotFound")
        if repo.gated and user is None:
            raise HubError(403, f"Access to {repo_id} is restricted: you must be authenticated", "GatedRepo")
        return repo

    @staticmethod
    def commit_of(repo: Repo, revision: str) -> Commit:
        sha = repo.branches.get(revision, revision)
        if sha not in repo.commits:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return repo.commits[sha]

    def apply_commit(self, repo: Repo, branch: str, lines: list[dict]) -> Commit:
        """All operations land, or none (everything is validated before the branch moves)."""
        with self.lock:
            if branch not in repo.branches:
                raise HubError(404, f"Invalid rev id: {branch}", "RevisionNotFound")
            parent = repo.commits[repo.branches[branch]]
            files = dict(parent.files)
            title = "commit"
            for line in lines:
                key, value = line.get("key"), line.get("value", {})
                if key == "header":
                    title = value.get("summary") or title
                elif key == "file":
                    files[value["path"]] = self.put_blob(base64.b64decode(value["content"]))
                elif key == "lfsFile":
                    path = self.blob_path(value["oid"])
                    if not path.exists():
                        raise HubError(422, f"LFS object {value['oid']} was not uploaded")
                    files[value["path"]] = FileEntry(path.stat().st_size, value["oid"], _sha(value["oid"]), True)
                elif key == "deletedFile":
                    if files.pop(value["path"], None) is None:
                        raise HubError(404, f"{value['path']} does not exist", "EntryNotFound")
                elif key == "deletedFolder":
                    prefix = value["path"].rstrip("/") + "/"
                    files = {p: f for p, f in files.items() if not p.startswith(prefix)}
                else:
                    raise HubError(400, f"unsupported commit operation {key!r}")
            commit = Commit(_sha(f"{parent.sha}|{time.time_ns()}|{title}"), parent.sha, files, title, time.time())
            repo.commits[commit.sha] = commit
            repo.branches[branch] = commit.sha
            return commit


def _sha(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


def _card_data(hub: LocalHub, commit: Commit) -> dict | None:
    entry = commit.files.get("README.md")
    if entry is None:
        return None
    text = hub.blob_path(entry.sha256).read_text(errors="replace")
    m = re.match(r"^---\s*\n(.*?)\n---\s*\n", text, re.S)
    try:
        return yaml.safe_load(m.group(1)) if m else None
    except yaml.YAMLError:
        return None


TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}


class Handler(BaseHTTPRequestHandler):
    hub: LocalHub
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # quiet
        pass

    # ---- plumbing ------------------------------------------------------------------------------------------
    def _user(self) -> str | None:
        auth = self.headers.get("Authorization", "")
        if not auth.startswith("Bearer "):
            return None
        token = auth[7:].strip()
        if token not in self.hub.tokens:
            raise HubError(401, "Invalid credentials in Authorization header")
        return self.hub.tokens[token]

    def _need_user(self) -> str:
        user = self._user()
        if user is None:
            raise HubError(401, "You must be authenticated to do this")
        return user

    def _body(self) -> bytes:
        n = int(self.headers.get("Content-Length") or 0)
        if n:
            return self.rfile.read(n)
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = b""
            while True:
                size = int(self.rfile.readline().strip(), 16)
                if size == 0:
                    self.rfile.readline()
                    return out
                out += self.rfile.read(size)
                self.rfile.readline()
        return b""

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None, head: bool = False) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, str(v))
        if "Content-Length" not in (headers or {}):
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body and not head and self.command != "HEAD":  # a HEAD answer never carries a body, errors included
            self.wfile.write(body)

    def _json(self, obj: object, status: int = 200, headers: dict | None = None) -> None:
        self._send(status, json.dumps(obj).encode(), {"Content-Type": "application/json", **(headers or {})})

    def _dispatch(self, method: str) -> None:
        url = urlparse(self.path)
        path, query = unquote(url.path), parse_qs(url.query)
        try:
            for pattern, verb, fn in ROUTES:
                m = pattern.fullmatch(path)
                if m and method in verb.split():
                    return fn(self, query, **m.groupdict())
            raise HubError(404, f"no route for {method} {path}")
        except (KeyError, ValueError, TypeError) as e:
            self._json({"error": f"bad request: {e}"}, 400)
        except HubError as e:
            headers = {"X-Error-Code": e.code} if e.code else {}
            headers["X-Error-Message"] = " ".join(e.message.split())
            self._json({"error": e.message}, e.status, headers)

    def do_GET(self):  # noqa: N802
        self._dispatch("GET")

    def do_HEAD(self):  # noqa: N802
        self._dispatch("HEAD")

    def do_POST(self):  # noqa: N802
        self._dispatch("POST")

    def do_PUT(self):  # noqa: N802
        self._dispatch("PUT")

    def do_DELETE(self):  # noqa: N802
        self._dispatch("DELETE")

    # ---- API -----------------------------------------------------------------------------------------------
    def whoami(self, query) -> None:
        user = self._need_user()
        self._json({"type": "user", "name": user, "fullname": user, "orgs": [],
                    "auth": {"type": "access_token", "accessToken": {"displayName": "local", "role": "write"}}})

    def create(self, query) -> None:
        user = self._need_user()
        body = json.loads(self._body() or b"{}")
        repo_type = body.get("type") or "model"
        repo_id = f"{body.get('organization') or user}/{body['name']}"
        url = f"{self._base()}/{PREFIX[repo_type]}{repo_id}"
        try:
            self.hub.create_repo(repo_type, repo_id, bool(body.get("private")))
        except HubError as e:
            return self._json({"error": e.message, "url": url}, 409)
        self._json({"url": url, "name": repo_id, "id": repo_id})

    def delete(self, query) -> None:
        self._need_user()
        body = json.loads(self._body() or b"{}")
        repo_type = body.get("type") or "model"
        repo_id = f"{body.get('organization') or self._user()}/{body['name']}"
        with self.hub.lock:
            if self.hub.repos.pop((repo_type, repo_id), None) is None:
                raise HubError(404, f"Repository {repo_id} not found", "RepoNotFound")
        self._json({})

    def _base(self) -> str:
        return f"http://{self.headers.get('Host')}"

    def info(self, query, kind: str, repo: str, rev: str = "main") -> None:
        r = self.hub.get(TYPES[kind], repo, self._user())
        c = self.hub.commit_of(r, rev or "main")
        blobs = query.get("blobs", ["false"])[0] == "true"
        siblings = []
        for p, f in sorted(c.files.items()):
            s = {"rfilename": p}
            if blobs:
                s.update(size=f.size, blobId=f.git_oid)
                if f.lfs:
                    s["lfs"] = {"size": f.size, "sha256": f.sha256, "pointerSize": 134}
            siblings.append(s)
        card = _card_data(self.hub, c)
        self._json({"id": repo, "modelId": repo, "sha": c.sha, "private": r.private, "gated": r.gated,
                    "disabled": False, "downloads": 0, "likes": 0, "tags": (card or {}).get("tags", []),
                    "siblings": siblings, "cardData": card, "author": repo.split("/")[0],
                    "lastModified": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(c.date)),
                    "createdAt": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(c.date))})

    def listing(self, query, kind: str) -> None:
        user = self._user()
        wanted = query.get("filter", [])
        out = []
        for (t, rid), r in sorted(self.hub.repos.items()):
            if t != TYPES[kind] or (r.private and user != rid.split("/")[0]):
                continue
            c = self.hub.commit_of(r, "main")
            card = _card_data(self.hub, c) or {}
            tags = list(card.get("tags") or [])
            if all(w in tags for w in wanted):
                out.append({"id": rid, "modelId": rid, "sha": c.sha, "tags": tags, "private": r.private,
                            "lastModified": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(c.date))})
        self._json(out)

    def tree(self, query, kind: str, repo: str, rev: str, sub: str = "") -> None:
        r = self.hub.get(TYPES[kind], repo, self._user())
        c = self.hub.commit_of(r, rev)
        recursive = query.get("recursive", ["false"])[0].lower() in ("true", "1")
        sub = (sub or "").strip("/")
        items, dirs = [], set()
        for p, f in sorted(c.files.items()):
            if sub and not p.startswith(sub + "/"):
                continue
            rest = p[len(sub) + 1:] if sub else p
            parts = rest.split("/")
            for i in range(1, len(parts)):
                d = "/".join(([sub] if sub else []) + parts[:i])
                if d not in dirs and (recursive or i == 1):
                    dirs.add(d)
                    items.append({"type": "directory", "oid": _sha(d), "size": 0, "path": d})
            if recursive or len(parts) == 1:
                items.append(self._file_item(p, f))
        self._json(items)

    @staticmethod
    def _file_item(path: str, f: FileEntry) -> dict:
        item = {"type": "file", "oid": f.git_oid, "size": f.size, "path": path}
        if f.lfs:
            item["lfs"] = {"oid": f.sha256, "size": f.size, "pointerSize": 134}
        return item

    def paths_info(self, query, kind: str, repo: str, rev: str) -> None:
        r = self.hub.get(TYPES[kind], repo, self._user())
        c = self.hub.commit_of(r, rev)
        body = self._body().decode()
        form = parse_qs(body) if not body.startswith("{") else json.loads(body)
        paths = form.get("paths", [])
        self._json([self._file_item(p, c.files[p]) for p in paths if p in c.files])

    def commits(self, query, kind: str, repo: str, rev: str) -> None:
        r = self.hub.get(TYPES[kind], repo, self._user())
        c, out = self.hub.commit_of(r, rev), []
        while c is not None:
            out.append({"id": c.sha, "title": c.title, "message": "", "authors": [{"user": repo.split("/")[0]}],
                        "date": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(c.date))})
            c = r.commits.get(c.parent) if c.parent else None
        self._json(out)

    def preupload(self, query, kind: str, repo: str, rev: str) -> None:
        self._need_user()
        self.hub.get(TYPES[kind], repo, self._user())
        files = json.loads(self._body())["files"]
        out = [{"path": f["path"], "uploadMode": "lfs" if f["size"] >= LFS_THRESHOLD or
                f["path"].endswith(".safetensors") else "regular", "shouldIgnore": False} for f in files]
        self._json({"files": out, "commitOid": None})

    def lfs_batch(self, query, prefix: str, repo: str) -> None:
        self._need_user()
        body = json.loads(self._body())
        objects = []
        for o in body.get("objects", []):
            entry = {"oid": o["oid"], "size": o["size"]}
            if not self.hub.blob_path(o["oid"]).exists():
                entry["actions"] = {
                    "upload": {"href": f"{self._base()}/_lfs/{o['oid']}"},
                    "verify": {"href": f"{self._base()}/_lfs/{o['oid']}/verify"},
                }
            objects.append(entry)
        self._json({"transfer": "basic", "objects": objects})

    def lfs_put(self, query, oid: str) -> None:
        if self.hub.on_lfs_put:
            self.hub.on_lfs_put(self)
        data = self._body()
        if hashlib.sha256(data).hexdigest() != oid:
            raise HubError(400, "LFS object does not match its oid")
        self.hub.put_blob(data)
        self._send(200)

    def lfs_verify(self, query, oid: str) -> None:
        self._body()
        if not self.hub.blob_path(oid).exists():
            raise HubError(404, "LFS object not found")
        self._json({})

    def commit(self, query, kind: str, repo: str, rev: str) -> None:
        user = self._need_user()
        r = self.hub.get(TYPES[kind], repo, user)
        if repo.split("/")[0] != user:
            raise HubError(403, f"You don't have the rights to write to {repo}")
        lines = [json.loads(line) for line in self._body().splitlines() if line.strip()]
        c = self.hub.apply_commit(r, rev, lines)
        self._json({"commitUrl": f"{self._base()}/{PREFIX[r.type]}{repo}/commit/{c.sha}", "commitOid": c.sha,
                    "pullRequestUrl": None})

    def branch(self, query, kind: str, repo: str, branch: str) -> None:
        user = self._need_user()
        r = self.hub.get(TYPES[kind], repo, user)
        body = json.loads(self._body() or b"{}")
        with self.hub.lock:
            if branch in r.branches:
                raise HubError(409, f"Reference {branch} already exists")
            r.branches[branch] = self.hub.commit_of(r, body.get("startingPoint") or "main").sha
        self._json({})

    def validate_yaml(self, query) -> None:
        content = json.loads(self._body() or b"{}").get("content", "")
        m = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", content, re.S)
        try:
            meta = yaml.safe_load(m.group(1)) if m else {}
        except yaml.YAMLError as e:
            raise HubError(400, f"Invalid metadata YAML: {e}") from None
        if meta is not None and not isinstance(meta, dict):
            raise HubError(400, "The metadata must be a YAML mapping")
        self._json({"errors": [], "warnings": []})

    def resolve(self, query, prefix: str, repo: str, rev: str, file: str) -> None:
        head = self.command == "HEAD"
        kind = {"": "model", "datasets/": "dataset", "spaces/": "space"}[prefix or ""]
        r = self.hub.get(kind, repo, self._user())
        c = self.hub.commit_of(r, rev)
        f = c.files.get(file)
        if f is None:
            raise HubError(404, f"{file} not found in {repo}", "EntryNotFound")
        headers = {"X-Repo-Commit": c.sha, "ETag": f'"{f.sha256 if f.lfs else f.git_oid}"', "Accept-Ranges": "bytes",
                   "Content-Type": "application/octet-stream"}
        if f.lfs:
            headers["X-Linked-Etag"] = f'"{f.sha256}"'
            headers["X-Linked-Size"] = f.size
        data_path = self.hub.blob_path(f.sha256)
        rng = self.headers.get("Range")
        if rng and (m := re.fullmatch(r"bytes=(\d+)-(\d*)", rng.strip())):
            start = int(m.group(1))
            end = min(int(m.group(2)) if m.group(2) else f.size - 1, f.size - 1)
            if start >= f.size:
                return self._send(416, b"", {"Content-Range": f"bytes */{f.size}"}, head)
            with open(data_path, "rb") as fh:
                fh.seek(start)
                body = b"" if head else fh.read(end - start + 1)
            headers.update({"Content-Range": f"bytes {start}-{end}/{f.size}", "Content-Length": end - start + 1})
            return self._send(206, body, headers, head)
        headers["Content-Length"] = f.size
        self._send(200, b"" if head else data_path.read_bytes(), headers, head)


_R = r"(?P<repo>[^/]+/[^/]+)"
ROUTES = [
    (re.compile(r"/api/whoami-v2"), "GET", Handler.whoami),
    (re.compile(r"/api/repos/create"), "POST", Handler.create),
    (re.compile(r"/api/repos/delete"), "DELETE", Handler.delete),
    (re.compile(r"/api/validate-yaml"), "POST", Handler.validate_yaml),
    (re.compile(r"/api/(?P<kind>models|datasets|spaces)"), "GET", Handler.listing),
    (re.compile(rf"/api/(?P<kind>models|datasets|spaces)/{_R}(?:/revision/(?P<rev>.+))?"), "GET", Handler.info),
    (re.compile(rf"/api/(?P<kind>models|datasets|spaces)/{_R}/tree/(?P<rev>[^/]+)(?P<sub>/.*)?"), "GET",
     Handler.tree),
    (re.compile(rf"/api/(?P<kind>models|datasets|spaces)/{_R}/paths-info/(?P<rev>[^/]+)"), "POST",
     Handler.paths_info),
    (re.compile(rf"/api/(?P<kind>models|datasets|spaces)/{_R}/commits/(?P<rev>[^/]+)"), "GET", Handler.commits),
    (re.compile(rf"/api/(?P<kind>models|datasets|spaces)/{_R}/preupload/(?P<rev>[^/]+)"), "POST",
     Handler.preupload),
    (re.compile(rf"/api/(?P<kind>models|datasets|spaces)/{_R}/commit/(?P<rev>[^/]+)"), "POST", Handler.commit),
    (re.compile(rf"/api/(?P<kind>models|datasets|spaces)/{_R}/branch/(?P<branch>[^/]+)"), "POST", Handler.branch),
    (re.compile(rf"/(?P<prefix>datasets/|spaces/)?{_R}\.git/info/lfs/objects/batch"), "POST", Handler.lfs_batch),
    (re.compile(r"/_lfs/(?P<oid>[0-9a-f]{64})"), "PUT", Handler.lfs_put),
    (re.compile(r"/_lfs/(?P<oid>[0-9a-f]{64})/verify"), "POST", Handler.lfs_verify),
    (re.compile(rf"/(?P<prefix>datasets/|spaces/)?{_R}/resolve/(?P<rev>[^/]+)/(?P<file>.+)"), "GET HEAD",
     Handler.resolve),
]


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address) -> None:  # dropped connections are not news
        pass


class Server:
    """A running local Hub: ``url``, ``token`` (of user ``user``), ``stop()``."""

    def __init__(self, root: Path, user: str = "hfmerge-user", token: str = "hf_local_test_token", port: int = 0):
        self.hub = LocalHub(Path(root), {token: user})
        handler = type("BoundHandler", (Handler,), {"hub": self.hub})
        self.httpd = _QuietServer(("127.0.0.1", port), handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.user, self.token = user, token
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def serve(root: str | Path, port: int = 0, user: str = "hfmerge-user", token: str = "hf_local_test_token") -> Server:
    return Server(Path(root), user, token, port)
