"""The HTTP plumbing the Stripe doubles and proxies share: a 127.0.0.1 server, latency, forwarding.

A threaded server that answers each request after a set latency, and forwarding to an upstream,
both on 127.0.0.1 only.

    class MyDouble(LoopbackHttpServer):
        def respond(self, method, path, headers, body) -> Answer: ...
    double = MyDouble(latency_ms=300).start(); double.url; double.stop()

The latency is split: half before ``respond`` runs, half after, so a request the client gave up
on (or died during) still reaches the double and acts, as it would at a distant Stripe.
"""

from __future__ import annotations

import http.client
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

HOST = "127.0.0.1"
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "content-length"}

# (status, headers, body) of an HTTP answer
Answer = tuple[int, list[tuple[str, str]], bytes]


def header(headers: list[tuple[str, str]], name: str) -> str | None:
    wanted = name.lower()
    return next((v for k, v in headers if k.lower() == wanted), None)


def loopback_port(upstream: str, what: str) -> int:
    """The port of an upstream URL on 127.0.0.1; anything else is refused, naming ``what``."""
    parsed = urllib.parse.urlsplit(upstream)
    if parsed.hostname not in (HOST, "localhost"):
        raise ValueError(f"the {what} only forwards to 127.0.0.1, not {upstream}")
    return parsed.port or 80


def forward(
    port: int, method: str, path: str, headers: list[tuple[str, str]], body: bytes, *, timeout: float = 30
) -> Answer:
    """One request to 127.0.0.1:``port`` on a fresh connection; its answer without hop-by-hop headers."""
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request(method, path, body=body or None, headers=dict(headers))
        resp = conn.getresponse()
        data = resp.read()
        out = [(k, v) for k, v in resp.getheaders() if k.lower() not in HOP_BY_HOP]
        return resp.status, out, data
    finally:
        conn.close()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class LoopbackHttpServer:
    """A threaded HTTP server on 127.0.0.1 (a free port by default) answering from ``respond``."""

    thread_name = "http-double"

    def __init__(self, port: int = 0, *, latency_ms: float = 0.0) -> None:
        # added before every answer (faults and replays included), as a distant Stripe would
        self.latency_ms = latency_ms
        self._server = _Server((HOST, port), self._handler_class())
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self._server.server_address[1]}"

    def start(self) -> Self:
        self._thread = threading.Thread(target=self._server.serve_forever, name=self.thread_name, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def respond(self, method: str, path: str, headers: list[tuple[str, str]], body: bytes) -> Answer:
        raise NotImplementedError

    def serve(self, method: str, path: str, headers: list[tuple[str, str]], body: bytes) -> Answer:
        """One request's answer, half the latency on the way in and half on the way out."""
        half = self.latency_ms / 2000
        if half > 0:
            time.sleep(half)
        answer = self.respond(method, path, headers, body)
        if half > 0:
            time.sleep(half)
        return answer

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, like Stripe's client expects

            def log_message(self, *args: Any) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = [(k, v) for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP | {"host"}]
                status, out, payload = owner.serve(self.command, self.path, headers, body)
                self.send_response(status)
                for k, v in out:
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_DELETE = _handle

        return Handler
