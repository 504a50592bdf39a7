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
from payments_core.adapters.stripe_api.stripe_gateway import MAX_KEY_ATTEMPTS
from webhook_helpers import encode, sign

from local.doubles.strict_stripe import StrictStripe
from local.doubles.stripe_ledger import Ledger

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
# Issue 16, item 1: the release's transfer is held at Stripe past the client's timeout (its
# child killed, or its database sessions dropped, while it is in flight, or neither) and a
# revert is sent on another partition meanwhile; the transfer lands late, after the lease
# expired when the child died: the settlement audit must find it and reverse it.
LATE_TRANSFER = "release_late_transfer_and_revert"
# A second hold of a reverted order (a create that executed late, another process): Stripe's
# webhook reports it, the webhook's cancel fails (5xx), the audit must cancel it.
STRAY_HOLD = "reverted_then_stray_hold"
LATE_TRANSFER_WAYS = ("kill", "drop", "timeout")

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
    (LATE_TRANSFER, 3),  # few: each killed release keeps two partitions waiting for its lease
    (STRAY_HOLD, 3),
]
# Plans whose reverted payment lists its transfers at the audit: some of them get Stripe
# timeouts or 5xx on those reads (AUDIT_FAULTS), so a check fails and must be retried.
AUDITED_TRANSFERS = (REVERT_AFTER, RACE, LATE_TRANSFER)
AUDIT_FAULT_SHARE = 0.3
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
    way: str = ""  # LATE_TRANSFER: kill | drop | timeout; audit faults: 5xx | timeout
    audit_fault: str = ""
    partition: int | None = None  # where its release went (LATE_TRANSFER)
    since: float = 0.0  # when the current stage began
    planted: list[str] = field(default_factory=list)  # PaymentIntents the drill made (STRAY_HOLD)

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
        stripe: StrictStripe | None = None,
        in_flight: dict[str, str] | None = None,
        deliver_webhook: Callable[[bytes, str], int] | None = None,
        partitions: int = 3,
        late_transfer_s: tuple[float, float] = (30.0, 12.0),
        stripe_timeout_s: float = 10.0,
    ) -> None:
        """``stripe``: the double the service talks to (held transfers, targeted faults);
        ``in_flight``: the authorize runners' shared map of transfers to interrupt;
        ``deliver_webhook(body, signature) -> status``: a webhook handled by the service with
        Stripe at the double (so its cancel can fail); ``late_transfer_s``: how long a held
        transfer waits when its child is killed (past the lease) and otherwise."""
        self.rng = random.Random(f"{seed}:workload")
        self.produce = produce
        self.api_url = api_url
        self.localstripe_url = localstripe_url
        self.stripe_key = stripe_key
        self.webhook_secret = webhook_secret
        self.pg = pg
        self.stripe = stripe
        self.in_flight = in_flight if in_flight is not None else {}
        self.deliver_webhook = deliver_webhook
        self.partitions = partitions
        self.late_transfer_s = late_transfer_s
        self.stripe_timeout_s = stripe_timeout_s
        self.counts: Counter[str] = Counter()
        self.http_failures: list[str] = []
        self.orders: dict[str, Order] = {}
        plans, weights = zip(*PLAN_WEIGHTS, strict=True)
        if stripe is None or deliver_webhook is None:  # the new interleavings need the double
            plans, weights = zip(
                *[(p, w) for p, w in PLAN_WEIGHTS if p not in (LATE_TRANSFER, STRAY_HOLD)], strict=True
            )
        late = 0
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
                release_via_http=http_release and i % 2 == 0 and plan not in (PARTIAL, LATE_TRANSFER),
                duplicate=self.rng.random() < 0.15,
            )
            order = self.orders[order_id]
            if plan == LATE_TRANSFER:
                order.way = LATE_TRANSFER_WAYS[late % len(LATE_TRANSFER_WAYS)]
                late += 1
            if plan in AUDITED_TRANSFERS and stripe is not None and self.rng.random() < AUDIT_FAULT_SHARE:
                order.audit_fault = self.rng.choice(("5xx", "5xx", "timeout"))
        self.late_webhooks: list[tuple[Order, dict[str, Any]]] = []

    # -- sending
    def send_authorizations(self, per_second: float = 60.0) -> None:
        """Every authorize_payment, with exact duplicates some way behind their originals."""
        pending_dups: list[tuple[float, bytes]] = []
        for order in self.orders.values():
            self.produce(order.authorize, None)
            self.counts["authorize_sent"] += 1
            if order.plan == REVERT_EARLY:
                self._command(order, "revert_payment", by_order=True, reason="drill: cancelled at once")
                self.counts["revert_kafka"] += 1
                order.stage = "done"
            if order.duplicate:
                pending_dups.append((time.monotonic() + self.rng.uniform(0.2, 3.0), order.authorize))
            now = time.monotonic()
            for due, raw in [d for d in pending_dups if d[0] <= now]:
                self.produce(raw, None)
                self.counts["authorize_duplicates"] += 1
                pending_dups.remove((due, raw))
            time.sleep(1.0 / per_second)
        for _, raw in pending_dups:
            self.produce(raw, None)
            self.counts["authorize_duplicates"] += 1

    def _command(
        self, order: Order, kind: str, *, by_order: bool = False, partition: int | None = None, **payload: Any
    ) -> None:
        ref = {"order_id": order.order_id} if by_order else {"payment_id": order.payment_id}
        raw = json.dumps(command(kind, **ref, **payload)).encode()
        self.produce(raw, partition)
        if self.rng.random() < 0.15:  # a redelivered copy of the same command
            self.produce(raw, partition)
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

    def revert(self, order: Order, partition: int | None = None) -> None:
        self._command(order, "revert_payment", reason=f"drill: {order.plan}", partition=partition)
        self.counts["revert_kafka"] += 1

    # -- the new interleavings (issue 16)
    def _release_late(self, order: Order) -> None:
        """The release goes to one partition with its transfer held at the double (and its
        child interrupted while the transfer is in flight); the revert follows on another."""
        assert self.stripe is not None
        killed, otherwise = self.late_transfer_s
        self.stripe.delay_transfer(order.order_id, killed if order.way == "kill" else otherwise)
        if order.way in ("kill", "drop"):
            self.in_flight[order.order_id] = order.way
        order.partition = self.rng.randrange(self.partitions)
        runner_id, account = order.runner
        self._command(
            order,
            "release_payment",
            partition=order.partition,
            runner_id=runner_id,
            runner_connect_account_id=account,
        )
        self.counts["release_kafka"] += 1
        self.counts[f"late_transfer_{order.way}"] += 1

    def _arm_audit_fault(self, order: Order, status: str) -> None:
        """Once the order is REVERTED only the audit lists its transfers: those reads fail
        (Stripe 5xx twice: the client's retry too) or time out (once; the retry answers)."""
        if not order.audit_fault or status != "REVERTED" or self.stripe is None:
            return
        match = rf"^GET /v1/transfers\?.*transfer_group={order.order_id}"
        if order.audit_fault == "5xx":
            self.stripe.fail_matching(match, 2, "refuse", label="audit_transfer_list_5xx")
        else:
            self.stripe.fail_matching(
                match, 1, "timeout", label="audit_transfer_list_timeout", timeout_s=self.stripe_timeout_s + 1
            )
        self.counts[f"audit_fault_{order.audit_fault}"] += 1
        order.audit_fault = ""

    def _plant_stray_hold(self, order: Order) -> None:
        """A second hold of the reverted order, created without metadata (localstripe's own
        webhook for it finds no order, so the stack's webhook handler leaves it alone)."""
        assert self.stripe is not None
        hold = self._stripe(
            "/v1/payment_intents",
            {
                "amount": str(order.amount),
                "currency": "sgd",
                "customer": order.card.customer_id,
                "payment_method": order.card.payment_method_id,
                "capture_method": "manual",
                "confirm": "true",
            },
            base=self.stripe.url,
        )
        order.planted.append(str(hold["id"]))
        self.counts["stray_holds_planted"] += 1

    def _report_stray_hold(self, order: Order) -> None:
        """The hold now names the order (as a late create of ours would); Stripe reports it,
        and the webhook's cancel fails (5xx on it and its retry): the audit must cancel it."""
        assert self.stripe is not None and self.deliver_webhook is not None
        stray = order.planted[-1]
        intent = self._stripe(
            f"/v1/payment_intents/{stray}",
            {"metadata[order_id]": order.order_id, "metadata[payment_id]": str(order.payment_id)},
            base=self.stripe.url,
        )
        # every request of that cancel: each idempotency key the gateway tries, and each retry
        self.stripe.fail_matching(
            rf"^POST /v1/payment_intents/{stray}/cancel",
            2 * MAX_KEY_ATTEMPTS,
            "refuse",
            label="webhook_cancel_5xx",
        )
        event = {
            "id": f"evt_drill_{uuid.uuid4().hex}",
            "object": "event",
            "type": "payment_intent.amount_capturable_updated",
            "created": int(time.time()),
            "livemode": False,
            "data": {"object": intent},
        }
        body = encode(event)
        status = self.deliver_webhook(body, sign(body, self.webhook_secret))
        self.counts[f"stray_hold_webhook_{status}"] += 1

    def _post(self, path: str, body: dict[str, Any]) -> tuple[int, str]:
        request = urllib.request.Request(  # noqa: S310 - the local API Gateway on 127.0.0.1
            self.api_url + path,
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            # API Gateway's own integration limit: the local gateway serves one request at a
            # time, so a release may queue behind webhooks (each waits up to
            # WEBHOOK_LEASE_WAIT_SECONDS for a busy order) as it would not behind a scaled Lambda.
            with urllib.request.urlopen(request, timeout=29) as resp:  # noqa: S310
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
            "SELECT order_id, payment_id::text AS payment_id, status, payment_intent_id,"
            " audit_due_at IS NULL FROM payments WHERE order_id = ANY(CAST(:orders AS text[]))",
            orders=list(self.orders),
        )
        return {
            r[0]: {"payment_id": r[1], "status": r[2], "payment_intent_id": r[3], "audited": r[4]}
            for r in rows
        }

    def step(self) -> int:
        """Move every order on as far as its status allows; returns how many are not done."""
        rows = self._rows()
        not_done = 0
        for order in self.orders.values():
            row = rows.get(order.order_id)
            if row is not None:
                order.payment_id, order.status = row["payment_id"], row["status"]
            if order.stage != "done":
                stage = order.stage
                self._advance(order, row)
                if order.stage != stage:
                    order.since = time.monotonic()
            if row is not None:
                self._arm_audit_fault(order, row["status"])
            not_done += order.stage != "done"
        return not_done

    def _advance(self, order: Order, row: dict[str, Any] | None) -> None:
        if row is None:
            return
        status, plan = row["status"], order.plan
        if order.stage in ("late_release", "late_revert", "stray_wait", "stray_planted"):
            self._advance_new(order, row)
        elif order.stage == "authorize_sent":
            if status == "AUTHORIZED":
                self._snapshot(order, row["payment_intent_id"], "payment_intent.amount_capturable_updated")
                if plan == LATE_TRANSFER:
                    self._release_late(order)
                    order.stage = "late_release"
                elif plan == STRAY_HOLD:
                    self.revert(order)
                    order.stage = "stray_wait"
                elif plan in (RELEASE, PARTIAL, AUTH_3DS, REVERT_AFTER):
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

    def _advance_new(self, order: Order, row: dict[str, Any]) -> None:
        assert self.stripe is not None
        status, waited = row["status"], time.monotonic() - order.since
        if order.stage == "late_release":
            if order.order_id in self.stripe.transfers_held:
                # the transfer is at Stripe: the revert goes in on another partition now
                self.revert(order, partition=((order.partition or 0) + 1) % self.partitions)
                order.stage = "late_revert"
            elif status in ("FAILED", "REVERTED") or waited > 90:
                self.in_flight.pop(order.order_id, None)
                self.counts["late_transfer_never_held"] += 1
                if status not in ("FAILED", "REVERTED"):
                    self.revert(order)
                order.stage = "done"
        elif order.stage == "late_revert":
            landed = self.stripe.transfers_landed_late.get(order.order_id)
            if landed is not None:
                # the audit's reversal of it meets a Stripe 500 once (saved under its key)
                self.stripe.fail_matching(
                    rf"^POST /v1/transfers/{landed}/reversals$", 1, "error", label="audit_reversal_5xx"
                )
                self.counts["late_transfers_landed"] += 1
                order.stage = "done"
            elif waited > 120:
                order.stage = "done"
        elif order.stage == "stray_wait":
            if status == "REVERTED" and row["audited"]:  # its own audit is behind it
                self._plant_stray_hold(order)
                order.stage = "stray_planted"
            elif status in ("FAILED", "SUCCEEDED") or waited > 90:
                order.stage = "done"
        elif order.stage == "stray_planted" and waited > 1.5:  # localstripe's webhook has gone
            self._report_stray_hold(order)
            order.stage = "done"

    def _authenticate(self, order: Order, intent_id: str) -> None:
        """The customer completes 3-D Secure at the emulator, which then calls our webhook."""
        intent = self.stripe_get(f"/v1/payment_intents/{intent_id}")
        try:
            self._stripe(
                f"/v1/payment_intents/{intent_id}/_authenticate",
                {"client_secret": intent["client_secret"], "success": "true"},
            )
        except urllib.error.HTTPError:  # the reconciler gave up on it first (a slow run): FAILED
            self.counts["3ds_authenticate_too_late"] += 1
            return
        self.counts["3ds_authenticated"] += 1

    def stripe_get(self, path: str) -> dict[str, Any]:
        return self._stripe(path, None)

    def _stripe(self, path: str, form: dict[str, str] | None, base: str | None = None) -> dict[str, Any]:
        """localstripe itself (Stripe's state, not through the double), or ``base``."""
        request = urllib.request.Request(  # noqa: S310 - localstripe (or the double) on 127.0.0.1
            (base or self.localstripe_url) + path,
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

        every = intents.get(oid, [])
        # the holds the drill planted (STRAY_HOLD) are checked apart: canceled in the end
        pis = [p for p in every if p["id"] not in order.planted]
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
        counts["stray_holds_canceled"] += sum(
            1 for p in every if p["id"] in order.planted and p["status"] == "canceled"
        )
        for held in (p for p in every if p["status"] == "requires_capture"):
            if last in ("REVERTED", "FAILED") or held["id"] in order.planted:
                fail(
                    "no hold left",
                    f"last event says {last} but {held['id']} is {held['status']} (a hold on the card"
                    f"{', planted by the drill' if held['id'] in order.planted else ''}); {where}",
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
