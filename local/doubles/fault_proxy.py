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

import itertools
import json
import re
import threading
import time
import urllib.parse
from dataclasses import dataclass, field

from local.doubles.http_double import Answer, LoopbackHttpServer, forward, header, loopback_port

_ERROR_BODY = b'{"error": {"type": "api_error", "message": "fault drill: simulated Stripe outage"}}'
_JSON = [("Content-Type", "application/json")]


def simulated_500() -> Answer:
    return 500, list(_JSON), _ERROR_BODY


def proxy_error(exc: Exception) -> Answer:
    body = json.dumps({"error": {"type": "api_error", "message": f"proxy: {exc}"}}).encode()
    return 502, list(_JSON), body


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


class StripeFaultProxy(LoopbackHttpServer):
    thread_name = "stripe-fault-proxy"

    def __init__(
        self, upstream: str, host: str = "127.0.0.1", port: int = 0, *, latency_ms: float = 0.0
    ) -> None:
        self.upstream_port = loopback_port(upstream, "fault proxy")
        if host != "127.0.0.1":
            raise ValueError("the fault proxy only listens on 127.0.0.1")
        self.stats = ProxyStats()
        self._lock = threading.Lock()
        self._fail_until = 0.0
        self._fail_remaining = 0
        self._mode = "mixed"
        self._match: re.Pattern[str] | None = None  # only requests "METHOD /path" matching this fail
        self._alternate = itertools.cycle(self.MIXED)
        self._idempotent: dict[str, Answer] = {}
        super().__init__(port, latency_ms=latency_ms)

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
        return forward(self.upstream_port, method, path, headers, body)

    def count_route(self, method: str, path: str) -> str:
        route = f"{method} {urllib.parse.urlsplit(path).path}"
        with self._lock:
            self.stats.by_path[route] = self.stats.by_path.get(route, 0) + 1
        return route

    def respond(self, method: str, path: str, headers: list[tuple[str, str]], body: bytes) -> Answer:
        """The answer to one request: forwarded, replayed or failed."""
        route = self.count_route(method, path)
        key = header(headers, "Idempotency-Key") if method == "POST" else None
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
