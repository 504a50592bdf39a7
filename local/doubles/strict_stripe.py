"""A Stripe double as strict as Stripe, in front of localstripe, for the drills.

    stripe = StrictStripe(localstripe_url, validator=stripe_mock_url).start()   # 127.0.0.1, free port
    stripe.url                     # STRIPE_API_BASE for the service
    stripe.fail_next(1, "error", match=r"^POST /v1/transfers$")   # Stripe's own 500, saved
    stripe.ledger.transfers_for(order_id)                         # what was paid out
    stripe.stop()

Where localstripe is kinder than Stripe, this double is not:

- **Idempotency as Stripe does it.** The first answer per ``Idempotency-Key`` is saved once the
  endpoint began executing, *500 errors included*, and replayed (``Idempotent-Replayed: true``)
  for the life of the proxy (Stripe keeps keys at least 24 h; a drill is shorter). The same key
  on another endpoint or with other parameters answers ``400`` with ``type: idempotency_error``;
  a second request while the first is executing answers ``409 idempotency_key_in_use``. Answers
  that never began executing are not saved: a refused request, a validation error, a 409, a 429.
- **Faults on demand** (``fail_next`` / ``fail_for``, optionally only for routes matching a
  regex), each a different thing Stripe does:
  ``refuse`` (500, nothing happened, nothing saved: Stripe unreachable),
  ``lose`` (forwarded and executed, the true answer saved, 500 returned: the answer was lost on
  the way back, a retry with the key gets the true answer),
  ``error`` (forwarded and executed, then *the 500 is what Stripe saved*: every retry with that
  key gets the 500 again, so only a lookup and a new key recover),
  ``error_before_effect`` (500 saved, nothing executed: a key poisoned for a day).
- **Money rules localstripe does not check**: a refund never exceeds what was captured less
  what was refunded (``charge_already_refunded`` once all is refunded); PaymentIntents carry
  ``amount_capturable`` and ``amount_received`` (localstripe omits them), from the captures seen.
- **What localstripe lacks**: Transfers (``POST /v1/transfers``, ``GET /v1/transfers`` with
  ``transfer_group`` / ``destination`` / ``created[gte]``, ``GET /v1/transfers/{id}``, reversals), shaped like
  stripe-mock's answers.
- **Slow execution and targeted faults, for the crash drill**: ``delay_transfer(group, s)``
  holds the next transfer of that ``transfer_group`` for ``s`` seconds *before it executes*
  (the client may time out and move on; the transfer still lands later, as a request that
  reached Stripe does); ``fail_matching(regex, n, mode)`` fails the next ``n`` requests whose
  ``"METHOD /path?query"`` matches, independently of ``fail_next`` and of each other; besides
  the modes above, ``timeout`` answers only after ``timeout_s`` (the client has given up).
- **Request shapes checked against stripe-mock** (``validator``): a request Stripe's OpenAPI
  rejects (an unknown parameter, a missing one, e.g. ``GET /v1/refunds?metadata[...]``, which
  Stripe does not offer) gets stripe-mock's 400, before anything executes. localstripe's own
  routes (``/_authenticate``, ``/_config``) are not checked.

Everything that moved money is in ``ledger`` (PaymentIntents created per order, captures,
refunds, transfers and reversals), for the drills' checks against Stripe's own state.
Binds to and forwards to 127.0.0.1 only.
"""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.parse
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from local.doubles.fault_proxy import StripeFaultProxy, proxy_error, simulated_500
from local.doubles.http_double import Answer, forward, header
from local.doubles.stripe_ledger import Ledger
from local.doubles.stripe_wire import JSON_HEADERS, form_params, idempotency_error, nested, stripe_error

_NOT_SAVED = frozenset({409, 429})  # Stripe saves nothing for a conflict or a rate limit
_UNCHECKED_SUFFIXES = ("/_authenticate", "/_config")  # localstripe's own test routes


@dataclass
class _Saved:
    method: str
    route: str
    params: list[tuple[str, str]]
    answer: Answer | None = None  # None while the first request executes


@dataclass
class StrictStats:
    saved_500: int = 0  # 500s saved under a key (error / error_before_effect)
    replayed_500: int = 0  # saved 500s answered again
    idempotency_errors: int = 0
    keys_in_use: int = 0
    validation_errors: int = 0  # rejected by stripe-mock's schema
    refunds_refused: int = 0  # over the refundable amount


class StrictStripe(StripeFaultProxy):
    MODES = ("refuse", "lose", "error", "error_before_effect")
    MIXED = ("refuse", "lose", "error")

    def __init__(
        self,
        upstream: str,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        validator: str | None = None,
        latency_ms: float = 0.0,
    ) -> None:
        super().__init__(upstream, host, port, latency_ms=latency_ms)
        self.validator: tuple[str, int] | None = None
        if validator:
            parsed = urllib.parse.urlsplit(validator)
            if parsed.hostname not in ("127.0.0.1", "localhost"):
                raise ValueError(f"the strict double only talks to 127.0.0.1, not {validator}")
            self.validator = ("127.0.0.1", parsed.port or 80)
        self.ledger = Ledger()
        self.strict = StrictStats()
        self._saved: dict[str, _Saved] = {}
        self._ledger_lock = threading.RLock()  # refunds check-then-act, transfers
        self._rules: list[_Rule] = []  # fail_matching
        self._transfer_delays: dict[str, float] = {}  # transfer_group -> seconds held
        self.transfers_held: dict[str, float] = {}  # transfer_group -> when its held transfer arrived
        self.transfers_landed_late: dict[str, str] = {}  # transfer_group -> id, once executed
        self.rule_hits: dict[str, int] = defaultdict(int)  # by rule label

    # -- the drill's slow and failing requests
    def delay_transfer(self, transfer_group: str, seconds: float) -> None:
        """The next ``POST /v1/transfers`` of ``transfer_group`` waits ``seconds``, then executes."""
        with self._lock:
            self._transfer_delays[transfer_group] = seconds

    def fail_matching(
        self, match: str, n: int, mode: str = "refuse", *, label: str = "", timeout_s: float = 5.0
    ) -> None:
        """Fail the next ``n`` requests whose ``"METHOD /path?query"`` matches ``match``
        (``mode``: one of MODES or ``timeout``: answered after ``timeout_s``, executed)."""
        if mode not in (*self.MODES, "timeout"):
            raise ValueError(f"unknown fault mode {mode!r}")
        with self._lock:
            self._rules.append(_Rule(re.compile(match), n, mode, label or mode, timeout_s))

    def _rule_for(self, request: str) -> _Rule | None:
        with self._lock:
            for rule in self._rules:
                if rule.remaining > 0 and rule.match.search(request):
                    rule.remaining -= 1
                    self.rule_hits[rule.label] += 1
                    return rule
        return None

    # -- the request path
    def respond(self, method: str, path: str, headers: list[tuple[str, str]], body: bytes) -> Answer:
        if self._rules or self._transfer_delays:
            rule = self._rule_for(f"{method} {path}")
            if rule is not None and rule.mode == "timeout":
                time.sleep(rule.timeout_s)  # the client has given up; the request still executes
            elif rule is not None:
                return self._respond(method, path, headers, body, forced=rule.mode)
            if method == "POST" and urllib.parse.urlsplit(path).path == "/v1/transfers":
                group = dict(form_params(body)).get("transfer_group", "")
                with self._lock:
                    delay = self._transfer_delays.pop(group, None)
                    if delay is not None:
                        self.transfers_held[group] = time.monotonic()
                if delay is not None:
                    time.sleep(delay)
                    answer = self._respond(method, path, headers, body)
                    if answer[0] == 200:
                        self.transfers_landed_late[group] = str(json.loads(answer[2]).get("id"))
                    return answer
        return self._respond(method, path, headers, body)

    def _respond(
        self, method: str, path: str, headers: list[tuple[str, str]], body: bytes, forced: str | None = None
    ) -> Answer:
        route = self.count_route(method, path)
        url = urllib.parse.urlsplit(path)
        params = form_params(body) if method == "POST" else sorted(urllib.parse.parse_qsl(url.query))
        key = header(headers, "Idempotency-Key") if method == "POST" else None
        decision = forced or self._decide(route)
        if decision == "refuse":
            with self._lock:
                self.stats.refused += 1
            return simulated_500()
        if key is None:
            plain = self._execute(method, path, url.path, params, headers, body)
            if decision in ("lose", "error", "error_before_effect"):
                with self._lock:
                    self.stats.lost += 1
                return simulated_500()
            return plain

        with self._lock:
            saved = self._saved.get(key)
            if saved is None:
                self._saved[key] = mine = _Saved(method, url.path, params)
        if saved is not None:
            return self._replay(key, saved, method, url.path, params, decision)

        if decision == "error_before_effect":
            answer = simulated_500()
        else:
            answer = self._execute(method, path, url.path, params, headers, body)
            if decision == "error":
                answer = simulated_500()
        with self._lock:
            if answer[0] in _NOT_SAVED or _validation_refusal(answer):
                del self._saved[key]  # the endpoint never began executing
            else:
                mine.answer = answer
            if decision in ("error", "error_before_effect"):
                self.stats.lost += 1
                self.strict.saved_500 += 1
            elif decision == "lose":
                self.stats.lost += 1
        return simulated_500() if decision == "lose" else answer

    def _replay(
        self,
        key: str,
        saved: _Saved,
        method: str,
        route: str,
        params: list[tuple[str, str]],
        decision: str | None,
    ) -> Answer:
        with self._lock:
            if (saved.method, saved.route) != (method, route):
                self.strict.idempotency_errors += 1
                return idempotency_error(key, endpoint=(saved.route, route))
            if saved.params != params:
                self.strict.idempotency_errors += 1
                return idempotency_error(key)
            if saved.answer is None:
                self.strict.keys_in_use += 1
                return stripe_error(
                    409,
                    "There is currently another in-progress request using this Idempotent Key "
                    "(that probably means you submitted twice, and the other request is still going "
                    f"through): {key}. Please try again later.",
                    code="idempotency_key_in_use",
                )
            self.stats.replayed += 1
            if saved.answer[0] >= 500:
                self.strict.replayed_500 += 1
            status, headers, body = saved.answer
            if decision in ("lose", "error", "error_before_effect"):
                self.stats.lost += 1
                return simulated_500()
        return status, [*headers, ("Idempotent-Replayed", "true")], body

    def _execute(
        self,
        method: str,
        path: str,
        route: str,
        params: list[tuple[str, str]],
        headers: list[tuple[str, str]],
        body: bytes,
    ) -> Answer:
        try:
            refused = self._validate(method, path, route, headers, body)
            if refused is not None:
                return refused
            if route == "/v1/transfers" or route.startswith("/v1/transfers/"):
                with self._ledger_lock:
                    return self.ledger.serve_transfers(method, route, params)
            if method == "POST" and route == "/v1/refunds":
                return self._refund(path, params, headers, body)
            answer = self._forward(method, path, headers, body)
        except OSError as exc:
            return proxy_error(exc)
        with self._lock:
            self.stats.forwarded += 1
        return self._record_and_complete(method, route, params, answer)

    # -- stripe-mock as the schema
    def _validate(
        self, method: str, path: str, route: str, headers: list[tuple[str, str]], body: bytes
    ) -> Answer | None:
        if self.validator is None or route.endswith(_UNCHECKED_SUFFIXES):
            return None
        sent = [(k, v) for k, v in headers if k.lower() != "idempotency-key"]
        status, _, data = forward(self.validator[1], method, path, sent, body, timeout=10)
        if status == 400 and b"Request validation error" in data:
            with self._lock:
                self.strict.validation_errors += 1
            return 400, list(JSON_HEADERS), data
        return None

    # -- what localstripe omits or gets wrong
    def _record_and_complete(
        self, method: str, route: str, params: list[tuple[str, str]], answer: Answer
    ) -> Answer:
        status, headers, body = answer
        if not route.startswith("/v1/payment_intents") or not 200 <= status < 300:
            return answer
        try:
            data = json.loads(body)
        except ValueError:
            return answer
        with self._ledger_lock:
            if method == "POST" and route == "/v1/payment_intents":
                order_id = nested(params, "metadata").get("order_id", "")
                self.ledger.intents_by_order[order_id].append(str(data.get("id")))
            elif method == "POST" and route.endswith("/capture"):
                to_capture = dict(params).get("amount_to_capture")
                self.ledger.captures[str(data.get("id"))].append(
                    int(to_capture) if to_capture else int(data.get("amount") or 0)
                )
            for obj in data.get("data", []) if data.get("object") == "list" else [data]:
                if isinstance(obj, dict) and obj.get("object") == "payment_intent":
                    self._complete_intent(obj)
        return status, headers, json.dumps(data).encode()

    def _complete_intent(self, obj: dict[str, Any]) -> None:
        amount = int(obj.get("amount") or 0)
        status = obj.get("status")
        obj["amount_capturable"] = amount if status == "requires_capture" else 0
        captured = self.ledger.captured(str(obj.get("id")))
        obj["amount_received"] = (
            (captured if captured is not None else amount) if status == "succeeded" else 0
        )

    def _refund(
        self, path: str, params: list[tuple[str, str]], headers: list[tuple[str, str]], body: bytes
    ) -> Answer:
        values = dict(params)
        pi = values.get("payment_intent")
        if not pi:
            return self._forward("POST", path, headers, body)
        with self._ledger_lock:  # check and refund as one step, as Stripe's charge lock does
            status, _, raw = self._forward(
                "GET", f"/v1/payment_intents/{urllib.parse.quote(pi)}", headers, b""
            )
            if status != 200:
                return status, list(JSON_HEADERS), raw
            intent = json.loads(raw)
            if intent.get("status") == "succeeded":
                captured = self.ledger.captured(pi)
                captured = captured if captured is not None else int(intent.get("amount") or 0)
                remaining = captured - self.ledger.refunded(pi)
                wanted = int(values.get("amount") or remaining)
                charge = intent.get("latest_charge")
                charge_id = charge.get("id") if isinstance(charge, dict) else charge
                if remaining <= 0:
                    self.strict.refunds_refused += 1
                    return stripe_error(
                        400, f"Charge {charge_id} has already been refunded.", code="charge_already_refunded"
                    )
                if wanted > remaining:
                    self.strict.refunds_refused += 1
                    return stripe_error(
                        400,
                        f"Refund amount ({wanted}) is greater than unrefunded amount on charge ({remaining})",
                        param="amount",
                    )
            answer = self._forward("POST", path, headers, body)
            with self._lock:
                self.stats.forwarded += 1
            if 200 <= answer[0] < 300:
                refund = json.loads(answer[2])
                self.ledger.refunds[pi].append(
                    {
                        "id": refund.get("id"),
                        "amount": int(refund.get("amount") or 0),
                        "metadata": nested(params, "metadata"),
                    }
                )
            return answer


@dataclass
class _Rule:
    match: re.Pattern[str]
    remaining: int
    mode: str
    label: str
    timeout_s: float


def _validation_refusal(answer: Answer) -> bool:
    return answer[0] == 400 and b"Request validation error" in answer[2]
