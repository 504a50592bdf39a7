"""Stripe at Stripe's speed, for benchmarks: a latency-only double, or a latency proxy.

    python -m local.doubles.stripe_latency --port 8790                   # the double, 300 ms per request
    python -m local.doubles.stripe_latency --port 8791 --upstream http://127.0.0.1:8420   # the proxy

- ``StripeLatencyDouble`` answers the requests this service makes (PaymentIntents: create
  with confirm, list by customer, retrieve, capture, cancel; refunds and transfers, and their
  lists; transfer reversals; Connect accounts, every one connected with transfers active) like Stripe, after sleeping ``delay_s``: no CPU cost, so what it
  measures is the service's own concurrency (localstripe saturates one core at about 15
  requests/s). Every create is held with manual capture (``requires_capture``); an
  ``Idempotency-Key`` seen before gets the first answer again, as Stripe does.
- ``StripeLatencyProxy`` forwards every request to an upstream emulator (localstripe) after
  the same sleep: the realistic end to end.
Both record the PaymentIntents created per order (``creates``), so a benchmark can count
duplicate holds, and count the requests waiting for their answer (``in_flight``, ``progress()``),
so a sampler can tell what the service does while Stripe answers. Everything binds to and
forwards to 127.0.0.1 only: the server, the latency and the forwarding are the fault proxy's
(``local.doubles.http_double``), the form parser the strict double's (``stripe_wire``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import threading
import urllib.parse
import uuid
from collections import defaultdict
from typing import Any

from local.doubles.http_double import Answer, LoopbackHttpServer, forward, header, loopback_port
from local.doubles.stripe_wire import form_params, form_tree, stripe_error


class _LatencyServer(LoopbackHttpServer):
    """A server on 127.0.0.1 whose every answer waits ``delay_s``, counting the requests in flight."""

    thread_name = "stripe-latency"

    def __init__(self, delay_s: float = 0.3, port: int = 0) -> None:
        super().__init__(port, latency_ms=delay_s * 1000)
        self.requests = 0  # received
        self.answered = 0  # answers about to be sent (after the delay)
        self.in_flight = 0  # received, not yet answered: waiting out the delay
        self.received: list[str] = []  # "POST /v1/payment_intents", in order of arrival
        self.rate_limited = 0  # 429s answered
        self._rate_limit_next = 0
        self.creates: dict[str, set[str]] = defaultdict(set)  # order_id -> PaymentIntent ids
        self._lock = threading.Lock()

    @property
    def delay_s(self) -> float:
        return self.latency_ms / 1000

    def serve(self, method: str, path: str, headers: list[tuple[str, str]], body: bytes) -> Answer:
        with self._lock:
            self.requests += 1
            self.in_flight += 1
            self.received.append(f"{method} {path.split('?')[0]}")
        try:
            return super().serve(method, path, headers, body)  # the latency, and nothing else
        finally:
            # counted as answered before the answer is sent: the client cannot act on it while
            # it still counts as in flight
            with self._lock:
                self.in_flight -= 1
                self.answered += 1

    def respond(self, method: str, path: str, headers: list[tuple[str, str]], body: bytes) -> Answer:
        if self._take_rate_limit():
            return stripe_error(429, "Request rate limit exceeded. (latency double)", code="rate_limit")
        return self.answer(method, path, headers, body)

    def progress(self) -> tuple[int, int]:
        """(requests received, requests answered), read together: a sampler that reads the
        same pair before and after looking elsewhere knows the same requests stayed in flight."""
        with self._lock:
            return self.requests, self.answered

    def rate_limit_next(self, count: int) -> None:
        """Answer the next ``count`` requests with 429, as Stripe does past its rate limit
        (nothing is processed)."""
        with self._lock:
            self._rate_limit_next = count

    def _take_rate_limit(self) -> bool:
        with self._lock:
            if self._rate_limit_next <= 0:
                return False
            self._rate_limit_next -= 1
            self.rate_limited += 1
            return True

    def note_create(self, order_id: str | None, intent_id: str | None) -> None:
        if order_id and intent_id:
            with self._lock:
                self.creates[order_id].add(intent_id)

    def duplicate_holds(self, order_ids: list[str] | None = None) -> int:
        """Orders with more than one PaymentIntent."""
        with self._lock:
            return sum(
                1 for o, ids in self.creates.items() if len(ids) > 1 and (order_ids is None or o in order_ids)
            )

    def answer(self, method: str, path: str, headers: list[tuple[str, str]], body: bytes) -> Answer:
        raise NotImplementedError


class StripeLatencyDouble(_LatencyServer):
    """Answers like Stripe, from memory, after ``delay_s``."""

    def __init__(self, delay_s: float = 0.3, port: int = 0) -> None:
        super().__init__(delay_s, port)
        self.intents: dict[str, dict[str, Any]] = {}
        self.made: dict[str, list[dict[str, Any]]] = defaultdict(list)  # refunds, transfers
        self._by_key: dict[str, bytes] = {}
        self._ids = itertools.count(1)
        self._run = uuid.uuid4().hex[:8]

    def _id(self, prefix: str) -> str:
        return f"{prefix}_lat{self._run}{next(self._ids):08d}"  # unique across runs, as Stripe's are

    def answer(self, method: str, path: str, headers: list[tuple[str, str]], body: bytes) -> Answer:
        key = header(headers, "Idempotency-Key")
        with self._lock:
            if method == "POST" and key and key in self._by_key:
                return (
                    200,
                    [("Content-Type", "application/json"), ("Idempotent-Replayed", "true")],
                    self._by_key[key],
                )
            status, obj = self._route(method, path, form_tree(form_params(body)))
            payload = json.dumps(obj).encode()
            if method == "POST" and key and status == 200:
                self._by_key[key] = payload
        return (
            status,
            [("Content-Type", "application/json"), ("Request-Id", f"req_{next(self._ids)}")],
            payload,
        )

    def _route(self, method: str, path: str, form: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        url = urllib.parse.urlsplit(path)
        parts = [p for p in url.path.split("/") if p][1:]  # without "v1"
        if parts[:1] == ["payment_intents"]:
            if method == "POST" and len(parts) == 1:
                return 200, self._create(form)
            if method == "GET" and len(parts) == 1:
                query = dict(urllib.parse.parse_qsl(url.query))
                data = [i for i in self.intents.values() if i["customer"] == query.get("customer")]
                return 200, {"object": "list", "url": "/v1/payment_intents", "has_more": False, "data": data}
            intent = self.intents.get(parts[1]) if len(parts) > 1 else None
            if intent is None:
                return 404, _error("invalid_request_error", "resource_missing", "No such payment_intent")
            if method == "GET" and len(parts) == 2:
                return 200, intent
            if method == "POST" and parts[2:] == ["capture"]:
                amount = int(form.get("amount_to_capture") or intent["amount_capturable"])
                intent.update(status="succeeded", amount_received=amount, amount_capturable=0)
                return 200, intent
            if method == "POST" and parts[2:] == ["cancel"]:
                intent.update(status="canceled", amount_capturable=0)
                return 200, intent
        if method == "GET" and len(parts) == 2 and parts[0] == "accounts":
            # every account is one of the platform's, able to receive transfers: the payout
            # destination check reads it before a release captures
            return 200, {"id": parts[1], "object": "account", "capabilities": {"transfers": "active"}}
        if method == "POST" and parts in (["refunds"], ["transfers"]):
            kind = parts[0]
            made = {"id": self._id("re" if kind == "refunds" else "tr"), "object": kind[:-1], **_ints(form)}
            if kind == "refunds":
                made["status"] = "succeeded"
            self.made[kind].append(made)
            return 200, made
        if method == "GET" and parts in (["refunds"], ["transfers"]):
            # the gateway looks for an earlier attempt's refund (by PaymentIntent) or transfer
            # (by transfer_group) before making one
            query = dict(urllib.parse.parse_qsl(url.query))
            wanted = {k: v for k, v in query.items() if k in ("payment_intent", "transfer_group")}
            data = [m for m in self.made[parts[0]] if all(m.get(k) == v for k, v in wanted.items())]
            return 200, {"object": "list", "url": url.path, "has_more": False, "data": data}
        if method == "POST" and len(parts) == 3 and parts[0] == "transfers" and parts[2] == "reversals":
            return 200, {
                "id": self._id("trr"),
                "object": "transfer_reversal",
                "transfer": parts[1],
                **_ints(form),
            }
        return 404, _error(
            "invalid_request_error", "resource_missing", f"Unrecognized request URL {url.path}"
        )

    def _create(self, form: dict[str, Any]) -> dict[str, Any]:
        amount = int(form.get("amount") or 0)
        intent = {
            "id": self._id("pi"),
            "object": "payment_intent",
            "amount": amount,
            "amount_capturable": amount,
            "amount_received": 0,
            "currency": form.get("currency", "sgd"),
            "customer": form.get("customer"),
            "payment_method": form.get("payment_method"),
            "capture_method": form.get("capture_method", "automatic"),
            "status": "requires_capture",
            "metadata": form.get("metadata") or {},
            "latest_charge": self._id("ch"),
            "last_payment_error": None,
            "next_action": None,
            "livemode": False,
        }
        self.intents[intent["id"]] = intent
        order_id = intent["metadata"].get("order_id")
        if order_id:
            self.creates[order_id].add(intent["id"])  # under the caller's lock
        return intent


class StripeLatencyProxy(_LatencyServer):
    """Forwards to an emulator on 127.0.0.1 after ``delay_s``."""

    def __init__(self, upstream: str, delay_s: float = 0.3, port: int = 0) -> None:
        self.upstream_port = loopback_port(upstream, "latency proxy")
        super().__init__(delay_s, port)

    def answer(self, method: str, path: str, headers: list[tuple[str, str]], body: bytes) -> Answer:
        status, kept, payload = forward(self.upstream_port, method, path, headers, body, timeout=60)
        if method == "POST" and urllib.parse.urlsplit(path).path == "/v1/payment_intents" and status == 200:
            created = json.loads(payload)
            self.note_create((created.get("metadata") or {}).get("order_id"), created.get("id"))
        return status, kept, payload


def _ints(form: dict[str, Any]) -> dict[str, Any]:
    return {k: int(v) if isinstance(v, str) and v.isdigit() else v for k, v in form.items()}


def _error(kind: str, code: str, message: str) -> dict[str, Any]:
    return {"error": {"type": kind, "code": code, "message": message}}


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m local.doubles.stripe_latency", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--delay-ms", type=float, default=300.0)
    parser.add_argument(
        "--upstream", help="forward to this emulator (a proxy) instead of answering (a double)"
    )
    args = parser.parse_args()
    delay = args.delay_ms / 1000
    server = (
        StripeLatencyProxy(args.upstream, delay, args.port)
        if args.upstream
        else StripeLatencyDouble(delay, args.port)
    )
    server.start()
    print(f"READY: {type(server).__name__} on {server.url} (+{args.delay_ms:.0f} ms)", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
