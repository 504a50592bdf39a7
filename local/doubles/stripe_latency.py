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
forwards to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import json
import re
import threading
import time
import urllib.parse
import uuid
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

HOST = "127.0.0.1"
_RATE_LIMITED = json.dumps(
    {
        "error": {
            "type": "invalid_request_error",
            "code": "rate_limit",
            "message": "Request rate limit exceeded. (latency double)",
        }
    }
).encode()
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "content-length"}


def _form(body: bytes) -> dict[str, Any]:
    """Stripe's form encoding (``metadata[order_id]=...``) into nested dicts."""
    out: dict[str, Any] = {}
    for name, value in urllib.parse.parse_qsl(body.decode("utf-8"), keep_blank_values=True):
        parts = re.findall(r"[^\[\]]+", name)
        where = out
        for part in parts[:-1]:
            where = where.setdefault(part, {})
        if parts:
            where[parts[-1]] = value
    return out


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class _LatencyServer:
    """A threaded server on 127.0.0.1 whose every answer waits ``delay_s`` first."""

    def __init__(self, delay_s: float = 0.3, port: int = 0) -> None:
        self.delay_s = delay_s
        self.requests = 0  # received
        self.answered = 0  # answers about to be sent (after the delay)
        self.in_flight = 0  # received, not yet answered: waiting out the delay
        self.received: list[str] = []  # "POST /v1/payment_intents", in order of arrival
        self.rate_limited = 0  # 429s answered
        self._rate_limit_next = 0
        self.creates: dict[str, set[str]] = defaultdict(set)  # order_id -> PaymentIntent ids
        self._lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, like Stripe's client expects

            def log_message(self, *args: Any) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                with owner._lock:
                    owner.requests += 1
                    owner.in_flight += 1
                    owner.received.append(f"{self.command} {self.path.split('?')[0]}")
                try:
                    time.sleep(owner.delay_s)  # the latency, and nothing else
                    if owner._take_rate_limit():
                        status, headers, payload = 429, [("Content-Type", "application/json")], _RATE_LIMITED
                    else:
                        status, headers, payload = owner.answer(
                            self.command, self.path, dict(self.headers), body
                        )
                finally:
                    # counted as answered before the answer is sent: the client cannot act on
                    # it while it still counts as in flight
                    with owner._lock:
                        owner.in_flight -= 1
                        owner.answered += 1
                self.send_response(status)
                for name, value in headers:
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_DELETE = _handle

        self._server = _Server((HOST, port), Handler)
        self._thread: threading.Thread | None = None

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

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self._server.server_address[1]}"

    def start(self) -> _LatencyServer:
        self._thread = threading.Thread(target=self._server.serve_forever, name="stripe-latency", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

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

    def answer(
        self, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, list[tuple[str, str]], bytes]:
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

    def answer(
        self, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        key = next((v for k, v in headers.items() if k.lower() == "idempotency-key"), None)
        with self._lock:
            if method == "POST" and key and key in self._by_key:
                return (
                    200,
                    [("Content-Type", "application/json"), ("Idempotent-Replayed", "true")],
                    self._by_key[key],
                )
            status, obj = self._route(method, path, _form(body))
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
        parsed = urllib.parse.urlsplit(upstream)
        if parsed.hostname not in ("127.0.0.1", "localhost"):
            raise ValueError(f"the latency proxy only forwards to 127.0.0.1, not {upstream}")
        super().__init__(delay_s, port)
        self.upstream_port = parsed.port or 80
        self._local = threading.local()

    def answer(
        self, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        forward = {k: v for k, v in headers.items() if k.lower() not in _HOP_BY_HOP and k.lower() != "host"}
        for attempt in (1, 2):
            conn = getattr(self._local, "conn", None)
            if conn is None:
                conn = self._local.conn = http.client.HTTPConnection(HOST, self.upstream_port, timeout=60)
            try:
                conn.request(method, path, body=body or None, headers=forward)
                response = conn.getresponse()
                payload = response.read()
                break
            except (OSError, http.client.HTTPException):
                conn.close()
                self._local.conn = None
                if attempt == 2:
                    raise
        if (
            method == "POST"
            and urllib.parse.urlsplit(path).path == "/v1/payment_intents"
            and response.status == 200
        ):
            created = json.loads(payload)
            self.note_create((created.get("metadata") or {}).get("order_id"), created.get("id"))
        kept = [(k, v) for k, v in response.getheaders() if k.lower() not in _HOP_BY_HOP]
        return response.status, kept, payload


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
