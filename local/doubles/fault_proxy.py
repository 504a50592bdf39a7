"""A fault-injecting reverse proxy for the Stripe API, for fault drills.

    proxy = StripeFaultProxy("http://127.0.0.1:8420")   # listens on 127.0.0.1, a free port
    proxy.start(); url = proxy.url
    proxy.fail_for(5.0)          # answer 500 to every request for 5 seconds
    proxy.fail_next(3)           # ... or to the next 3 requests
    proxy.latency_ms = 300       # every answer 300 ms later (a benchmark's "real Stripe" distance)
    proxy.stop()

Everything binds to and forwards to 127.0.0.1 only. Two ways to fail, alternated while a fault
is active (``mode="mixed"``) or chosen with ``mode="refuse"`` / ``mode="lose"``:

- ``refuse``: answer 500 without forwarding (Stripe is down; nothing happened there);
- ``lose``: forward, let localstripe act, then answer 500 instead of its answer (Stripe acted,
  its answer was lost on the way back).

Like real Stripe (and unlike localstripe, which ignores the header), a POST with an
``Idempotency-Key`` whose request already reached the emulator is answered with the stored
first answer and not forwarded again: without this a client retry after a lost answer would
create a second object in the emulator, which real Stripe would never do.

This proxy is lenient where Stripe is not (it never saves a 500, nor compares a key's
parameters): ``local.doubles.strict_stripe.StrictStripe`` builds on it and is as strict as Stripe.
"""

from __future__ import annotations

import http.client
import itertools
import json
import re
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "content-length"}
_ERROR_BODY = b'{"error": {"type": "api_error", "message": "fault drill: simulated Stripe outage"}}'
_JSON = [("Content-Type", "application/json")]

# (status, headers, body) of an HTTP answer
Answer = tuple[int, list[tuple[str, str]], bytes]


def simulated_500() -> Answer:
    return 500, list(_JSON), _ERROR_BODY


def proxy_error(exc: Exception) -> Answer:
    body = json.dumps({"error": {"type": "api_error", "message": f"proxy: {exc}"}}).encode()
    return 502, list(_JSON), body


def _header(headers: list[tuple[str, str]], name: str) -> str | None:
    wanted = name.lower()
    return next((v for k, v in headers if k.lower() == wanted), None)


@dataclass
class ProxyStats:
    forwarded: int = 0
    refused: int = 0  # 500 without forwarding
    lost: int = 0  # forwarded, answer replaced by 500
    replayed: int = 0  # answered from the idempotency store
    by_path: dict[str, int] = field(default_factory=dict)

    @property
    def failed(self) -> int:
        return self.refused + self.lost


class StripeFaultProxy:
    def __init__(
        self, upstream: str, host: str = "127.0.0.1", port: int = 0, *, latency_ms: float = 0.0
    ) -> None:
        parsed = urllib.parse.urlsplit(upstream)
        if parsed.hostname not in ("127.0.0.1", "localhost"):
            raise ValueError(f"the fault proxy only forwards to 127.0.0.1, not {upstream}")
        if host != "127.0.0.1":
            raise ValueError("the fault proxy only listens on 127.0.0.1")
        self.upstream_host = "127.0.0.1"
        self.upstream_port = parsed.port or 80
        self.stats = ProxyStats()
        # added before every answer (faults and replays included), as a distant Stripe would
        self.latency_ms = latency_ms
        self._lock = threading.Lock()
        self._fail_until = 0.0
        self._fail_remaining = 0
        self._mode = "mixed"
        self._match: re.Pattern[str] | None = None  # only requests "METHOD /path" matching this fail
        self._alternate = itertools.cycle(self.MIXED)
        self._idempotent: dict[str, Answer] = {}
        self._server = ThreadingHTTPServer((host, port), self._handler_class())
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    # -- control
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> StripeFaultProxy:
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="stripe-fault-proxy", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    # the ways this proxy can fail a request; "mixed" takes them in turn
    MODES: tuple[str, ...] = ("refuse", "lose")
    MIXED: tuple[str, ...] = ("refuse", "lose")

    def _check_mode(self, mode: str, match: str | None) -> None:
        if mode != "mixed" and mode not in self.MODES:
            raise ValueError(f"unknown fault mode {mode!r}: one of mixed, {', '.join(self.MODES)}")
        self._mode = mode
        self._match = re.compile(match) if match else None

    def fail_for(self, seconds: float, mode: str = "mixed", match: str | None = None) -> None:
        """Fail every request (or those whose "METHOD /path" matches ``match``) for a while."""
        with self._lock:
            self._check_mode(mode, match)
            self._fail_until = time.monotonic() + seconds

    def fail_next(self, n: int, mode: str = "mixed", match: str | None = None) -> None:
        """Fail the next ``n`` requests (or the next ``n`` whose "METHOD /path" matches)."""
        with self._lock:
            self._check_mode(mode, match)
            self._fail_remaining = n

    def heal(self) -> None:
        with self._lock:
            self._fail_until = 0.0
            self._fail_remaining = 0

    @property
    def failing(self) -> bool:
        with self._lock:
            return self._fail_remaining > 0 or time.monotonic() < self._fail_until

    def _decide(self, route: str = "") -> str | None:
        """None to pass the request ("METHOD /path") through, else how to fail it."""
        with self._lock:
            if self._match is not None and not self._match.search(route):
                return None
            if self._fail_remaining > 0:
                self._fail_remaining -= 1
            elif time.monotonic() >= self._fail_until:
                return None
            return next(self._alternate) if self._mode == "mixed" else self._mode

    # -- forwarding
    def _forward(self, method: str, path: str, headers: list[tuple[str, str]], body: bytes) -> Answer:
        conn = http.client.HTTPConnection(self.upstream_host, self.upstream_port, timeout=30)
        try:
            conn.request(method, path, body=body or None, headers=dict(headers))
            resp = conn.getresponse()
            data = resp.read()
            out = [(k, v) for k, v in resp.getheaders() if k.lower() not in _HOP_BY_HOP]
            return resp.status, out, data
        finally:
            conn.close()

    def count_route(self, method: str, path: str) -> str:
        route = f"{method} {urllib.parse.urlsplit(path).path}"
        with self._lock:
            self.stats.by_path[route] = self.stats.by_path.get(route, 0) + 1
        return route

    def respond(self, method: str, path: str, headers: list[tuple[str, str]], body: bytes) -> Answer:
        """The answer to one request: forwarded, replayed or failed."""
        route = self.count_route(method, path)
        key = _header(headers, "Idempotency-Key") if method == "POST" else None
        decision = self._decide(route)
        if decision == "refuse":
            with self._lock:
                self.stats.refused += 1
            return simulated_500()
        if key is not None:
            with self._lock:
                stored = self._idempotent.get(key)
            if stored is not None:
                with self._lock:
                    self.stats.replayed += 1
                if decision == "lose":
                    with self._lock:
                        self.stats.lost += 1
                    return simulated_500()
                return stored
        try:
            answer = self._forward(method, path, headers, body)
        except OSError as exc:
            return proxy_error(exc)
        with self._lock:
            self.stats.forwarded += 1
            if key is not None and answer[0] < 500:
                self._idempotent.setdefault(key, answer)
        if decision == "lose":
            with self._lock:
                self.stats.lost += 1
            return simulated_500()
        return answer

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = [(k, v) for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP | {"host"}]
                # half the latency on the way in, half on the way out: a request the client
                # gave up on (or died during) still reaches Stripe and acts, as it would
                half = proxy.latency_ms / 2000
                if half > 0:
                    time.sleep(half)
                answer = proxy.respond(self.command, self.path, headers, body)
                if half > 0:
                    time.sleep(half)
                self._send(*answer)

            def _send(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
                self.send_response(status)
                for k, v in headers:
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_DELETE = _handle

        return Handler
