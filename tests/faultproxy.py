"""A fault-injecting HTTP proxy on 127.0.0.1, put in front of the loopback Hub by the reliability tests.

It forwards every request to the upstream server and, for the requests a rule picks, answers badly instead:
a status (503), a body cut mid-way with the connection dropped, a short body with a consistent
Content-Length, a delay before answering, or a body trickled out slowly. Redirects to the upstream (the Hub's
storage bridge on another host name of the same server) are rewritten to go through the proxy as well.
"""

from __future__ import annotations

import http.client
import random
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit, urlunsplit

from hfmerge.localhub import read_body

HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
              "transfer-encoding", "upgrade", "host", "content-length"}


@dataclass(frozen=True)
class Fault:
    """``kind``: status | cut | short | delay | trickle."""

    kind: str
    status: int = 503
    fraction: float = 0.5  # cut / short: the part of the body sent
    seconds: float = 0.0  # delay: before answering; trickle: between pieces


Rule = Callable[[str, str, int], Fault | None]  # (method, path, index among eligible requests) -> fault or None


def file_request(method: str, path: str) -> bool:
    """The requests that carry file bytes: resolve (and the storage bridge behind it)."""
    return method == "GET" and ("/resolve/" in path or "/_bridge/" in path)


def every(n: int, fault: Fault, start: int = 0) -> Rule:
    """Fault every ``n``-th file request (the ``start``-th first)."""
    return lambda method, path, i: fault if i >= start and (i - start) % n == 0 else None


def randomly(p: float, faults: list[Fault], seed: int) -> Rule:
    """Each file request faulted with probability ``p`` by one of ``faults`` (seeded)."""
    rng, lock = random.Random(seed), threading.Lock()

    def rule(method: str, path: str, i: int) -> Fault | None:
        with lock:
            return rng.choice(faults) if rng.random() < p else None
    return rule


class FaultProxy:
    """``FaultProxy(upstream_url, rule)``: ``url``, ``counts`` (requests, and faults by kind), ``stop()``."""

    def __init__(self, upstream: str, rule: Rule | None = None, eligible: Callable[[str, str], bool] = file_request):
        up = urlsplit(upstream)
        self.up_host, self.up_port = up.hostname, up.port
        self.rule, self.eligible = rule, eligible
        self.counts: Counter = Counter()
        self._lock = threading.Lock()
        self._index = 0
        # spare_retries: a request (method, path, Range) faulted on its last try passes on this one, so a survivable
        # rule stays survivable whatever the order of requests (a retry always costs 2 requests behind the bridge:
        # with one connection, "every 2nd" would otherwise hit every retry of a request forever)
        self.spare_retries = False
        self._faulted: set = set()
        handler = type("FaultHandler", (_Handler,), {"proxy": self})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def pick(self, method: str, path: str, byte_range: str | None = None) -> Fault | None:
        with self._lock:
            self.counts["requests"] += 1
            if not (self.rule and self.eligible(method, path)):
                return None
            i, self._index = self._index, self._index + 1
            key = (method, path, byte_range)
            if self.spare_retries and key in self._faulted:
                self._faulted.discard(key)
                return None
        fault = self.rule(method, path, i)
        if fault:
            with self._lock:
                self.counts[fault.kind] += 1
                self._faulted.add(key)
        return fault

    def rewrite_location(self, loc: str) -> str:
        u = urlsplit(loc)
        if u.hostname in ("127.0.0.1", "localhost") and u.port == self.up_port:
            return urlunsplit(("http", self.url.removeprefix("http://"), u.path, u.query, u.fragment))
        return loc

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class _Handler(BaseHTTPRequestHandler):
    proxy: FaultProxy
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    def _body(self) -> bytes:
        return read_body(self)

    def _forward(self) -> None:
        p = self.proxy
        body = self._body()
        fault = p.pick(self.command, self.path, self.headers.get("Range"))
        if fault and fault.kind == "status":
            self._answer(fault.status, [("Content-Type", "text/plain")], b"injected fault\n")
            return
        conn = http.client.HTTPConnection(p.up_host, p.up_port, timeout=60)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        headers["Host"] = f"{p.up_host}:{p.up_port}"
        if body or self.command in ("POST", "PUT"):
            headers["Content-Length"] = str(len(body))
        conn.request(self.command, self.path, body=body or None, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        conn.close()
        out_headers = []
        for k, v in resp.getheaders():
            if k.lower() in HOP_BY_HOP:
                continue
            out_headers.append((k, p.rewrite_location(v) if k.lower() == "location" else v))
        if self.command == "HEAD":
            length = resp.getheader("Content-Length")
            self._answer(resp.status, out_headers + ([("Content-Length", length)] if length else []), b"", head=True)
            return
        if fault and fault.kind == "delay":
            time.sleep(fault.seconds)
        if fault and fault.kind in ("cut", "short") and data:
            part = data[:int(len(data) * fault.fraction)]
            if fault.kind == "short":  # a clean answer with fewer bytes than were asked
                self._answer(resp.status, out_headers, part)
            else:  # the full length announced, part of the body, then the connection drops
                self._send_head(resp.status, out_headers, len(data))
                self.wfile.write(part)
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        if fault and fault.kind == "trickle" and data:
            self._send_head(resp.status, out_headers, len(data))
            step = max(1, len(data) // 8)
            for i in range(0, len(data), step):
                self.wfile.write(data[i:i + step])
                self.wfile.flush()
                time.sleep(fault.seconds)
            return
        self._answer(resp.status, out_headers, data)

    def _send_head(self, status: int, headers: list[tuple[str, str]], length: int | None) -> None:
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        if length is not None:
            self.send_header("Content-Length", str(length))
        self.end_headers()

    def _answer(self, status: int, headers: list[tuple[str, str]], data: bytes, head: bool = False) -> None:
        self._send_head(status, headers, None if head else len(data))
        if not head:
            self.wfile.write(data)

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _forward
