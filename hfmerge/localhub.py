"""A small Hub-compatible HTTP server on 127.0.0.1, for offline demos and tests.

It speaks the part of the Hub protocol that huggingface_hub's client uses for models and datasets:
whoami, repo create/info/tree/paths-info/commits, preupload + LFS batch/PUT/verify + ndjson commits
(applied atomically: a commit lands whole or not at all), validate-yaml, and resolve with HEAD, GET and
byte ranges. Tokens are checked (Bearer), private and gated repos are refused to the wrong callers, and
errors carry the client's X-Error-Code headers. Storage is a folder (content-addressed blobs) + memory.
Start it with :func:`serve`; point clients at it with HF_ENDPOINT (and HF_HUB_DISABLE_XET=1).

:class:`Realism` (``server.hub.realism``, switchable at any time) makes it behave like huggingface.co at
scale: a round trip per request, a bandwidth cap per connection, LFS resolves answered by a 302 to a storage
"bridge" URL on another host name (``localhost``) signed for the exact range asked, a rate limit on
``/resolve`` calls answered by 429 with ``RateLimit`` / ``RateLimit-Policy`` headers, a proxy that ignores
``Range``, and injected faults (503s, connections cut mid-body, short bodies). ``server.hub.counters``
counts what clients did (``blob_bytes``: body bytes sent per file blob).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import re
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

import yaml

LFS_THRESHOLD = 10 * 1024  # files at least this large (or *.safetensors) go through LFS, like the Hub
BRIDGE_HOST = "localhost"  # another host name for the same loopback server: clients treat it as another origin


@dataclass
class Realism:
    """How much of the real Hub's behaviour to imitate (all off by default)."""

    rtt: float = 0.0  # seconds added before every answer (one round trip)
    bandwidth: float | None = None  # bytes/s per connection for file bodies
    bridge: bool = False  # LFS resolves -> 302 to an exact-range signed URL on BRIDGE_HOST
    resolve_limit: int | None = None  # /resolve calls allowed per window (429 beyond)
    resolve_window: float = 300.0  # seconds (the Hub's windows are 5 minutes)
    ignore_range: bool = False  # answer 200 with the whole file to a Range request
    fail_every: int = 0  # every n-th file-body answer is a 503
    cut_every: int = 0  # every n-th file-body answer is cut after half its body (connection closed)
    short_every: int = 0  # every n-th ranged answer is a valid 206 for the first half of the range only


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
        self.realism = Realism()
        self.counters: Counter = Counter()
        self.blob_bytes: Counter = Counter()  # body bytes sent per blob sha256 (what crossed the wire, per file)
        self.secret = hashlib.sha256(str(root).encode() + str(time.time_ns()).encode()).digest()
        self._window = (0.0, 0)  # (start, resolve calls in it)
        self._connections = 0
        self._active = 0

    def count(self, **kw: int) -> None:
        with self.lock:
            self.counters.update(kw)

    def connection(self, delta: int) -> None:
        with self.lock:
            self._connections += delta

    def active(self, delta: int) -> None:
        """Requests being answered at once (``max_active``: how many ranges a client had in flight)."""
        with self.lock:
            self._active += delta
            self.counters["max_active"] = max(self.counters["max_active"], self._active)

    def rate_limited(self) -> float | None:
        """Count one /resolve call: None when allowed, else the seconds until the window resets."""
        r = self.realism
        if r.resolve_limit is None:
            return None
        with self.lock:
            now = time.monotonic()
            start, n = self._window
            if now - start >= r.resolve_window:
                start, n = now, 0
            if n >= r.resolve_limit:
                self._window = (start, n)
                return r.resolve_window - (now - start)
            self._window = (start, n + 1)
            return None

    def sign(self, sha256: str, rng: str, expires: int) -> str:
        return hmac.new(self.secret, f"{sha256}|{rng}|{expires}".encode(), "sha256").hexdigest()

    def reset_counters(self) -> None:
        with self.lock:
            self.counters.clear()
            self.blob_bytes.clear()
            self._window = (0.0, 0)

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

    def setup(self) -> None:
        super().setup()
        self.hub.connection(+1)
        self.hub.count(connections=1)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.hub.connection(-1)

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
        return read_body(self)

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
        self.hub.count(requests=1)
        self.hub.active(+1)
        try:
            self._route(method, path, query)
        finally:
            self.hub.active(-1)

    def _route(self, method: str, path: str, query: dict) -> None:
        if self.hub.realism.rtt:
            time.sleep(self.hub.realism.rtt)
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
        self.hub.count(resolve=1)
        wait = self.hub.rate_limited()
        if wait is not None:
            self.hub.count(rate_limited=1)
            r = self.hub.realism
            return self._json({"error": "You have exceeded our rate limit on resolvers"}, 429, {
                "RateLimit": f'"resolvers";r=0;t={max(1, math.ceil(wait))}',
                "RateLimit-Policy": f'"fixed window";"resolvers";q={r.resolve_limit};w={math.ceil(r.resolve_window)}'})
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
        if f.lfs and self.hub.realism.bridge:  # like the Hub: a redirect to storage, signed for this exact range
            rng = (self.headers.get("Range") or "").strip()
            expires = int(time.time()) + 3600
            sig = self.hub.sign(f.sha256, rng, expires)
            port = self.server.server_address[1]
            loc = f"http://{BRIDGE_HOST}:{port}/_bridge/{f.sha256}?range={rng}&expires={expires}&sig={sig}"
            return self._send(302, b"", {**headers, "Location": loc, "Content-Length": 0}, head)
        self._send_file(f.sha256, f.size, headers, head)

    def bridge(self, query, oid: str) -> None:
        """The storage bridge: serves a blob only for the Range its URL was signed for."""
        self.hub.count(bridge=1)
        rng, expires, sig = (query.get(k, [""])[0] for k in ("range", "expires", "sig"))
        asked = (self.headers.get("Range") or "").strip()
        if (not hmac.compare_digest(sig, self.hub.sign(oid, rng, int(expires or 0))) or asked != rng
                or int(expires or 0) < time.time()):
            raise HubError(403, "Request signature does not match the range asked")
        path = self.hub.blob_path(oid)
        if not path.exists():
            raise HubError(404, "blob not found")
        self._send_file(oid, path.stat().st_size, {"Accept-Ranges": "bytes", "ETag": f'"{oid}"',
                                                   "Content-Type": "application/octet-stream"},
                        self.command == "HEAD")

    def _send_file(self, sha256: str, size: int, headers: dict, head: bool) -> None:
        """A file body (whole or the asked Range) with the realism's faults and bandwidth cap."""
        real = self.hub.realism
        rng = self.headers.get("Range")
        start, end, status = 0, size - 1, 200
        if rng and not real.ignore_range and (m := re.fullmatch(r"bytes=(\d+)-(\d*)", rng.strip())):
            start = int(m.group(1))
            end = min(int(m.group(2)) if m.group(2) else size - 1, size - 1)
            if start >= size:
                return self._send(416, b"", {"Content-Range": f"bytes */{size}"}, head)
            status = 206
        if head:
            headers["Content-Length"] = size
            return self._send(200, b"", headers, head)
        with self.hub.lock:
            self.hub.counters["bodies"] += 1
            n = self.hub.counters["bodies"]
        if real.fail_every and n % real.fail_every == 0:
            self.hub.count(failed=1)
            return self._json({"error": "Service Unavailable"}, 503)
        if status == 206 and real.short_every and n % real.short_every == 0 and end > start:
            end = start + (end - start + 1) // 2 - 1
            self.hub.count(short=1)
        length = end - start + 1
        if status == 206:
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        headers["Content-Length"] = length
        cut = bool(real.cut_every and n % real.cut_every == 0 and length > 1)
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, str(v))
        self.end_headers()
        limit = length // 2 if cut else length
        sent, t0, piece = 0, time.monotonic(), 64 << 10
        try:
            with open(self.hub.blob_path(sha256), "rb") as fh:
                fh.seek(start)
                while sent < limit:
                    data = fh.read(min(piece, limit - sent))
                    self.wfile.write(data)
                    sent += len(data)
                    with self.hub.lock:
                        self.hub.counters["body_bytes"] += len(data)
                        self.hub.blob_bytes[sha256] += len(data)
                    if real.bandwidth:
                        ahead = sent / real.bandwidth - (time.monotonic() - t0)
                        if ahead > 0:
                            time.sleep(ahead)
        except (BrokenPipeError, ConnectionResetError):  # the client went away: fine
            self.close_connection = True
            return
        if cut:
            self.hub.count(cut=1)
            self.wfile.flush()
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


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
    (re.compile(r"/_bridge/(?P<oid>[0-9a-f]{64})"), "GET HEAD", Handler.bridge),
    (re.compile(rf"/(?P<prefix>datasets/|spaces/)?{_R}/resolve/(?P<rev>[^/]+)/(?P<file>.+)"), "GET HEAD",
     Handler.resolve),
]


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address) -> None:  # dropped connections are not news
        pass


def read_body(handler: BaseHTTPRequestHandler) -> bytes:
    """A request's body: ``Content-Length`` bytes, or the chunks of a chunked transfer."""
    n = int(handler.headers.get("Content-Length") or 0)
    if n:
        return handler.rfile.read(n)
    if handler.headers.get("Transfer-Encoding", "").lower() != "chunked":
        return b""
    out = b""
    while (size := int(handler.rfile.readline().strip(), 16)) > 0:
        out += handler.rfile.read(size)
        handler.rfile.readline()
    handler.rfile.readline()
    return out


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
