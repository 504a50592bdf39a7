"""The crash drill's workload, driver and verdict (issue 12). Used by test_crash_drill.py.

Workload: every order gets a seeded plan (card, what follows the authorization, how its
commands travel), commands go to payment_commands exactly as the sagas send them (releases
also over HTTP), and a driver moves each order on as its payment's status allows, the way the
sagas would. Stripe's webhooks reach the local API Gateway from localstripe on their own; the
driver also delivers snapshots of each PaymentIntent late (after the order moved on) and
twice. The verdict compares every order with Stripe's own state: localstripe's PaymentIntents
and the strict double's ledger (captures, refunds, transfers, reversals).
"""

from __future__ import annotations

import json
import random
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from conftest import CARD_3DS, CARD_DECLINED_ON_CHARGE, CARD_OK, Card, authorize_command, command
from webhook_helpers import encode, sign

from local.strict_stripe import Ledger

# What an order does after its authorize_payment (the sagas' paths, and their races).
RELEASE = "release"  # released: SUCCEEDED, runner paid
PARTIAL = "partial_release"  # released with amount_to_capture (Kafka only): SUCCEEDED for less
REVERT_BEFORE = "revert_before_release"  # cancelled while held: REVERTED, hold canceled
REVERT_AFTER = "revert_after_release"  # released, then compensated: refund and transfer reversal
RACE = "release_and_revert_together"  # both at once: either outcome, but a consistent one
REVERT_EARLY = "revert_with_authorize"  # revert by order_id right behind its authorize: races the create
DECLINED = "declined"  # the card is declined: FAILED
DECLINED_REVERTED = "declined_then_reverted"  # the saga compensates a failed order anyway
AUTH_3DS = "3ds_authenticated_then_release"
ABANDON_3DS = "3ds_abandoned"  # never authenticated: the reconciler fails it
REVERT_3DS = "3ds_reverted_while_waiting"

PLAN_WEIGHTS: list[tuple[str, int]] = [
    (RELEASE, 26),
    (PARTIAL, 6),
    (REVERT_BEFORE, 14),
    (REVERT_AFTER, 18),
    (RACE, 8),
    (REVERT_EARLY, 6),
    (DECLINED, 7),
    (DECLINED_REVERTED, 4),
    (AUTH_3DS, 8),
    (ABANDON_3DS, 4),
    (REVERT_3DS, 5),
]
CARD_OF_PLAN = {
    DECLINED: "declined",
    DECLINED_REVERTED: "declined",
    AUTH_3DS: "3ds",
    ABANDON_3DS: "3ds",
    REVERT_3DS: "3ds",
}
CARD_NUMBERS = {"ok": CARD_OK, "3ds": CARD_3DS, "declined": CARD_DECLINED_ON_CHARGE}
CUSTOMERS_PER_CARD = {"ok": 6, "3ds": 2, "declined": 2}


@dataclass
class Order:
    order_id: str
    plan: str
    card: Card
    amount: int
    authorize: bytes
    release_via_http: bool
    duplicate: bool
    stage: str = "authorize_sent"
    payment_id: str | None = None
    status: str | None = None
    sent: list[str] = field(default_factory=list)  # what the driver sent, in order
    snapshots: list[dict[str, Any]] = field(default_factory=list)  # PaymentIntent events for later

    @property
    def runner(self) -> tuple[str, str]:
        n = int(self.order_id[:6], 16) % 50
        return f"user_runner{n}", f"acct_runner{n:04d}"


@dataclass
class Problem:
    order_id: str
    plan: str
    invariant: str
    detail: str

    def __str__(self) -> str:
        return f"[{self.invariant}] order {self.order_id} ({self.plan}): {self.detail}"


class Workload:
    """The orders, their commands and the driver that moves them on."""

    def __init__(
        self,
        *,
        seed: int,
        orders: int,
        cards: dict[str, list[Card]],
        produce: Callable[[bytes], None],
        http_release: bool,
        api_url: str,
        localstripe_url: str,
        stripe_key: str,
        webhook_secret: str,
        pg: Any,
    ) -> None:
        self.rng = random.Random(f"{seed}:workload")
        self.produce = produce
        self.api_url = api_url
        self.localstripe_url = localstripe_url
        self.stripe_key = stripe_key
        self.webhook_secret = webhook_secret
        self.pg = pg
        self.counts: Counter[str] = Counter()
        self.http_failures: list[str] = []
        self.orders: dict[str, Order] = {}
        plans, weights = zip(*PLAN_WEIGHTS, strict=True)
        for i in range(orders):
            plan = self.rng.choices(plans, weights)[0]
            kind = CARD_OF_PLAN.get(plan, "ok")
            card = cards[kind][i % len(cards[kind])]
            order_id = str(uuid.uuid4())  # fresh per run: a replayed seed replays plans, not ids
            amount = 500 + self.rng.randrange(0, 9500)
            cmd = authorize_command(card, order_id=order_id, amount=amount, correlation_id=str(uuid.uuid4()))
            self.orders[order_id] = Order(
                order_id=order_id,
                plan=plan,
                card=card,
                amount=amount,
                authorize=json.dumps(cmd).encode(),
                release_via_http=http_release and i % 2 == 0 and plan != PARTIAL,
                duplicate=self.rng.random() < 0.15,
            )
        self.late_webhooks: list[tuple[Order, dict[str, Any]]] = []

    # -- sending
    def send_authorizations(self, per_second: float = 60.0) -> None:
        """Every authorize_payment, with exact duplicates some way behind their originals."""
        pending_dups: list[tuple[float, bytes]] = []
        for order in self.orders.values():
            self.produce(order.authorize)
            self.counts["authorize_sent"] += 1
            if order.plan == REVERT_EARLY:
                self._command(order, "revert_payment", by_order=True, reason="drill: cancelled at once")
                self.counts["revert_kafka"] += 1
                order.stage = "done"
            if order.duplicate:
                pending_dups.append((time.monotonic() + self.rng.uniform(0.2, 3.0), order.authorize))
            now = time.monotonic()
            for due, raw in [d for d in pending_dups if d[0] <= now]:
                self.produce(raw)
                self.counts["authorize_duplicates"] += 1
                pending_dups.remove((due, raw))
            time.sleep(1.0 / per_second)
        for _, raw in pending_dups:
            self.produce(raw)
            self.counts["authorize_duplicates"] += 1

    def _command(self, order: Order, kind: str, *, by_order: bool = False, **payload: Any) -> None:
        ref = {"order_id": order.order_id} if by_order else {"payment_id": order.payment_id}
        raw = json.dumps(command(kind, **ref, **payload)).encode()
        self.produce(raw)
        if self.rng.random() < 0.15:  # a redelivered copy of the same command
            self.produce(raw)
            self.counts[f"{kind}_duplicates"] += 1
        order.sent.append(kind)

    def release(self, order: Order) -> None:
        runner_id, account = order.runner
        if order.release_via_http:
            status, body = self._post(
                f"/payment/{order.payment_id}/release",
                {"runner_id": runner_id, "runner_connect_account_id": account},
            )
            if 200 <= status < 300:
                self.counts["release_http"] += 1
                order.sent.append("release_payment(http)")
                return
            self.http_failures.append(
                f"POST /payment/{order.payment_id}/release answered {status}: {body[:200]}"
            )
            self.counts["release_http_refused_then_kafka"] += 1
        extra: dict[str, Any] = {}
        if order.plan == PARTIAL:
            extra["amount_to_capture"] = max(50, order.amount - 1 - self.rng.randrange(0, order.amount // 2))
        self._command(
            order, "release_payment", runner_id=runner_id, runner_connect_account_id=account, **extra
        )
        self.counts["release_kafka"] += 1

    def revert(self, order: Order) -> None:
        self._command(order, "revert_payment", reason=f"drill: {order.plan}")
        self.counts["revert_kafka"] += 1

    def _post(self, path: str, body: dict[str, Any]) -> tuple[int, str]:
        request = urllib.request.Request(  # noqa: S310 - the local API Gateway on 127.0.0.1
            self.api_url + path,
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as resp:  # noqa: S310
                return resp.status, resp.read().decode("utf-8", "replace")
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode("utf-8", "replace")
        except OSError as exc:
            return 0, str(exc)

    # -- webhooks, late and twice
    def _snapshot(self, order: Order, intent_id: str, event_type: str) -> None:
        intent = self.stripe_get(f"/v1/payment_intents/{intent_id}")
        event = {
            "id": f"evt_drill_{uuid.uuid4().hex}",
            "object": "event",
            "type": event_type,
            "created": int(time.time()),
            "livemode": False,
            "data": {"object": intent},
        }
        if self.rng.random() < 0.5:
            self.deliver(event)  # on time; its copy comes late
            self.counts["webhooks_on_time"] += 1
        self.late_webhooks.append((order, event))

    def deliver(self, event: dict[str, Any]) -> int:
        body = encode(event)
        request = urllib.request.Request(  # noqa: S310 - the local API Gateway on 127.0.0.1
            self.api_url + "/api/stripe-webhook",
            data=body,
            headers={"Content-Type": "application/json", "Stripe-Signature": sign(body, self.webhook_secret)},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as resp:  # noqa: S310
                self.counts["webhooks_delivered"] += 1
                return int(resp.status)
        except urllib.error.HTTPError as exc:
            self.counts[f"webhooks_answered_{exc.code}"] += 1
            return int(exc.code)
        except OSError:
            self.counts["webhooks_unreachable"] += 1
            return 0

    def deliver_late_webhooks(self) -> None:
        """Every snapshot once more (or twice, when it was never delivered on time)."""
        for _, event in self.late_webhooks:
            self.deliver(event)
            self.deliver(event)
            self.counts["webhooks_late_twice"] += 1

    # -- the driver
    def _rows(self) -> dict[str, dict[str, Any]]:
        rows = self.pg.run(
            "SELECT order_id, payment_id::text AS payment_id, status, payment_intent_id FROM payments"
            " WHERE order_id = ANY(CAST(:orders AS text[]))",
            orders=list(self.orders),
        )
        return {r[0]: {"payment_id": r[1], "status": r[2], "payment_intent_id": r[3]} for r in rows}

    def step(self) -> int:
        """Move every order on as far as its status allows; returns how many are not done."""
        rows = self._rows()
        not_done = 0
        for order in self.orders.values():
            row = rows.get(order.order_id)
            if row is not None:
                order.payment_id, order.status = row["payment_id"], row["status"]
            if order.stage != "done":
                self._advance(order, row)
            not_done += order.stage != "done"
        return not_done

    def _advance(self, order: Order, row: dict[str, Any] | None) -> None:
        if row is None:
            return
        status, plan = row["status"], order.plan
        if order.stage == "authorize_sent":
            if status == "AUTHORIZED":
                self._snapshot(order, row["payment_intent_id"], "payment_intent.amount_capturable_updated")
                if plan in (RELEASE, PARTIAL, AUTH_3DS, REVERT_AFTER):
                    self.release(order)
                    order.stage = "released" if plan == REVERT_AFTER else "done"
                elif plan == REVERT_BEFORE:
                    self.revert(order)
                    order.stage = "done"
                elif plan == RACE:
                    self.revert(order)
                    self.release(order)
                    order.stage = "done"
                else:  # a 3-D Secure plan that got authorized anyway: release it
                    self.release(order)
                    order.stage = "done"
            elif status == "REQUIRES_ACTION":
                if plan == AUTH_3DS:
                    self._authenticate(order, row["payment_intent_id"])
                    order.stage = "authenticated"
                elif plan == REVERT_3DS:
                    self.revert(order)
                    order.stage = "done"
                else:
                    order.stage = "abandoned"
            elif status == "FAILED":
                if plan == DECLINED_REVERTED:
                    self.revert(order)
                order.stage = "done"
        elif order.stage == "authenticated" and status == "AUTHORIZED":
            self.release(order)
            order.stage = "done"
        elif order.stage == "authenticated" and status in ("FAILED", "REVERTED"):
            order.stage = "done"
        elif order.stage == "released" and status == "SUCCEEDED":
            self._snapshot(order, row["payment_intent_id"], "payment_intent.succeeded")
            self.revert(order)
            order.stage = "done"
        elif (order.stage == "released" and status in ("FAILED", "REVERTED")) or (
            order.stage == "abandoned" and status != "REQUIRES_ACTION"
        ):
            order.stage = "done"

    def _authenticate(self, order: Order, intent_id: str) -> None:
        """The customer completes 3-D Secure at the emulator, which then calls our webhook."""
        intent = self.stripe_get(f"/v1/payment_intents/{intent_id}")
        self._stripe(
            f"/v1/payment_intents/{intent_id}/_authenticate",
            {"client_secret": intent["client_secret"], "success": "true"},
        )
        self.counts["3ds_authenticated"] += 1

    def stripe_get(self, path: str) -> dict[str, Any]:
        return self._stripe(path, None)

    def _stripe(self, path: str, form: dict[str, str] | None) -> dict[str, Any]:
        """localstripe itself (Stripe's state, not through the double)."""
        request = urllib.request.Request(  # noqa: S310 - localstripe on 127.0.0.1
            self.localstripe_url + path,
            data=urllib.parse.urlencode(form).encode() if form is not None else None,
            headers={"Authorization": f"Bearer {self.stripe_key}"},
            method="POST" if form is not None else "GET",
        )
        with urllib.request.urlopen(request, timeout=10) as resp:  # noqa: S310
            data: dict[str, Any] = json.loads(resp.read())
            return data


# ---- the verdict -------------------------------------------------------------------------------


def final_state(event: dict[str, Any]) -> str:
    """What an event says the payment is: AUTHORIZED, SUCCEEDED, REVERTED, FAILED, REQUIRES_ACTION."""
    kind = event.get("type")
    if kind == "payment.released":
        return str(event["payload"].get("status"))
    if kind == "payment.failed" and event["payload"].get("status") in ("REVERTED", "SUCCEEDED"):
        # a refused command (a release redelivered after the revert) names the payment's status
        return str(event["payload"]["status"])
    return {
        "payment.authorized": "AUTHORIZED",
        "payment.failed": "FAILED",
        "payment.requires_action": "REQUIRES_ACTION",
    }.get(str(kind), f"?{kind}")


def check_orders(
    orders: dict[str, Order],
    events: dict[str, list[dict[str, Any]]],
    intents: dict[str, list[dict[str, Any]]],
    ledger: Ledger,
    rows: dict[str, dict[str, Any]],
) -> tuple[list[Problem], Counter[str]]:
    problems: list[Problem] = []
    counts: Counter[str] = Counter()
    for order in orders.values():
        oid, plan = order.order_id, order.plan

        def fail(invariant: str, detail: str, oid: str = oid, plan: str = plan) -> None:
            problems.append(Problem(oid, plan, invariant, detail))

        pis = intents.get(oid, [])
        created = ledger.intents_by_order.get(oid, [])
        row = rows.get(oid) or {}
        # what a consumer sees: duplicates (a re-announcement repeats an earlier event_id) dropped
        evs = _first_copies(events.get(oid, []))
        story = " -> ".join(final_state(e) for e in evs) or "no events"
        where = (
            f"events: {story}; row: {row.get('status')} captured {row.get('captured_amount_cents')} "
            f"transfer {row.get('transfer_id')} failure {str(row.get('transfer_failure'))[:60]!r} "
            f"refund {row.get('refund_id')} reversal {row.get('transfer_reversal_id')}; sent: {order.sent}"
        )
        counts["intents"] += len(pis)
        if len(pis) > 1 or len(set(created)) > 1:
            fail(
                "one PaymentIntent",
                f"{len(pis)} PaymentIntents {[p['id'] for p in pis]} (created {created}); {where}",
            )
        pi = pis[0] if pis else None
        pi_id = pi["id"] if pi else None
        captures = ledger.captures.get(pi_id, []) if pi_id else []
        captured = captures[0] if captures else (pi["amount"] if pi and pi["status"] == "succeeded" else 0)
        refunds = ledger.refunds.get(pi_id, []) if pi_id else []
        refunded = sum(int(r["amount"]) for r in refunds)
        transfers = ledger.transfers_for(oid)
        counts["captures"] += len(captures)
        counts["refunds"] += len(refunds)
        counts["transfers"] += len(transfers)
        counts["reversed_transfers"] += sum(1 for t in transfers if t["amount_reversed"])
        if len(captures) > 1:
            fail("captured at most once", f"{len(captures)} captures {captures} of {pi_id}; {where}")
        if len(transfers) > 1:
            fail(
                "at most one transfer",
                f"{len(transfers)} transfers {[(t['id'], t['amount'], t['amount_reversed']) for t in transfers]}; {where}",
            )
        if refunded and any(t["amount_reversed"] < t["amount"] for t in transfers):
            fail(
                "transfer reversed if refunded",
                f"refunded {refunded} of {pi_id} but transfer(s) "
                f"{[(t['id'], t['amount'], t['amount_reversed']) for t in transfers]} not reversed; {where}",
            )
        if len(refunds) > 1:
            fail("refunded at most once", f"{len(refunds)} refunds {refunds} of {pi_id}; {where}")
        if refunded > captured:
            fail("refund <= captured", f"refunded {refunded} but captured {captured} on {pi_id}; {where}")
        if not evs:
            fail("final event", f"no event at all; {where}")
            continue
        last = final_state(evs[-1])
        counts[f"final_{last}"] += 1
        stripe = _stripe_says(pi, captured, refunded, transfers)
        if last in ("REVERTED", "FAILED") and pi and pi["status"] in ("requires_capture",):
            fail(
                "no hold left",
                f"last event says {last} but {pi_id} is {pi['status']} (a hold on the card); {where}",
            )
        if last == "REQUIRES_ACTION":
            fail(
                "final event",
                f"last event is payment.requires_action (never settled); Stripe: {stripe}; {where}",
            )
        elif not _agrees(last, pi, captured, refunded, transfers, evs[-1]):
            fail("final event agrees with Stripe", f"last event says {last}, Stripe: {stripe}; {where}")
    return problems, counts


def _stripe_says(
    pi: dict[str, Any] | None, captured: int, refunded: int, transfers: list[dict[str, Any]]
) -> str:
    if pi is None:
        return "no PaymentIntent"
    parts = [f"{pi['id']} {pi['status']} amount {pi['amount']}"]
    if captured and pi["status"] == "succeeded":
        parts.append(f"captured {captured}")
    if refunded:
        parts.append(f"refunded {refunded}")
    for t in transfers:
        parts.append(f"transfer {t['id']} {t['amount']} reversed {t['amount_reversed']}")
    return ", ".join(parts)


def _agrees(
    last: str,
    pi: dict[str, Any] | None,
    captured: int,
    refunded: int,
    transfers: list[dict[str, Any]],
    event: dict[str, Any],
) -> bool:
    status = pi["status"] if pi else None
    paid_out = [t for t in transfers if t["amount_reversed"] < t["amount"]]
    if last == "AUTHORIZED":
        return status == "requires_capture"
    if last == "SUCCEEDED":
        # the announced transfer is the one Stripe holds: none announced while Stripe paid the
        # runner (an operator, alarmed, would pay again), or one Stripe does not hold, disagree
        announced = event["payload"].get("transfer_id")
        runner = [t["id"] for t in paid_out] == ([announced] if announced else [])
        return status == "succeeded" and refunded < captured and runner
    if last == "REVERTED":
        given_back = status in (None, "canceled", "requires_payment_method") or (
            status == "succeeded" and refunded >= captured
        )
        return given_back and not paid_out
    if last == "FAILED":
        return status in (None, "canceled", "requires_payment_method") and not transfers
    return False


def _first_copies(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    seen: set[Any] = set()
    out = []
    for e in events:
        if e.get("event_id") not in seen:
            seen.add(e.get("event_id"))
            out.append(e)
    return out


def group_events(raw: list[tuple[str, dict[str, Any]]], orders: set[str]) -> dict[str, list[dict[str, Any]]]:
    """payment_events by order, in their partition's order (all of an order's are on one)."""
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for key, envelope in raw:
        if key in orders:
            out[key].append(envelope)
    return out
