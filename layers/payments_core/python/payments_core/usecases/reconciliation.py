"""The reconciler and settlement audit, run every few minutes until its deadline.

Two kinds of payment are checked against Stripe, each under the order's lease (skipped, and
left due, while someone else holds it); check_queue keeps their schedules and the backlog:
- stale non-final payments (PENDING, REQUIRES_ACTION, AUTHORIZED past their windows): webhooks
  get lost, a function can die between Stripe and the database, holds lapse after ~7 days.
  Looked at once past the window; one still where it was (a hold waiting for its release) is
  looked at again after ``reconcile_backoff_seconds``, not on every run;
- uncertain payments (``audit_due_at``): a money call whose outcome was never recorded (a
  crash, a timeout, a 5xx), a lease taken over, a payment that became final (something may
  still land), an event we did not expect (a stray hold, a transfer or refund update). Each is
  checked at growing intervals (``audit_backoff_seconds``) until Stripe and the row agree and
  nothing can still land (no money call of the order with an unknown outcome within
  ``audit_in_doubt_seconds``): every PaymentIntent of the order, its transfers and its refunds. What
  disagrees is fixed (holds canceled on payments that hold nothing, transfers reversed and
  refunds made or redone on reverted ones) and checked again later; what cannot be fixed is
  counted (``AuditUnresolved``, alarmed) and checked again. A check that fails is retried,
  never marked done.
Stripe calls are paced to ``audit_stripe_reads_per_second``, the reconciler's share of the
account's budget: with the checks' Stripe calls, it sets how many final payments a day the
audit keeps up with (README, "Operations"). Every run reports what it did and what it left
(``ReconcileChecks``, ``ReconcileCheckRate``, ``StaleCheckBacklog``/``Age``,
``AuditBacklog``/``Age``; the ages are alarmed)."""

from __future__ import annotations

import contextlib
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from aws_lambda_powertools.metrics import MetricUnit

from payments_core.adapters.postgres import check_queue, outbox, repository
from payments_core.adapters.postgres.db import Database
from payments_core.adapters.services import Services, get_services
from payments_core.adapters.stripe_api.stripe_gateway import IntentSnapshot
from payments_core.config import Settings
from payments_core.domain.contracts import AUTHENTICATION_FAILED, AUTHORIZATION_EXPIRED
from payments_core.domain.errors import Rejection, TransientError
from payments_core.domain.payment import Payment, PaymentStatus
from payments_core.observability import add_metric, count, logger
from payments_core.usecases import authorization, leases, lifecycle

S = PaymentStatus
T = TypeVar("T")
R = TypeVar("R")
# A PaymentIntent in one of these may still hold money by itself: a customer can still finish
# 3-D Secure, a payment can still be processing. One that requires a payment method or a
# confirmation moves no money unless we send one, which we never do after a failure.
_MAY_STILL_HOLD = frozenset({"requires_action", "processing"})
# What is canceled on a payment that holds nothing (processing cannot be canceled: waited for).
_CANCELED_WHEN_NOTHING_HELD = frozenset({"requires_capture", "requires_action"})
# Refund states that give (or will give) the money back.
_REFUND_LIVE = frozenset({"succeeded", "pending", "requires_action"})


def reconcile(services: Services | None = None, *, deadline: float | None = None) -> dict[str, int]:
    """Check what was due when the run started until none is left or ``deadline``
    (time.monotonic()) passes; returns counts by outcome (and ``stripe_calls``)."""
    services = services or get_services()
    s = services.settings
    db = services.db
    started = time.monotonic()
    outcomes: Counter[str] = Counter()
    pacer = _Pacer(s.audit_stripe_reads_per_second)
    paced = replace(services, stripe=_Paced(services.stripe, pacer))
    outcomes["lost_calls_flagged"] = repository.flag_unfinished_money_calls(db, leases.lease_ttl_seconds(s))
    run = check_queue.Run(db, stale_windows(s), s.reconcile_batch_size)

    def check_all(worker: Services, checks: list[check_queue.Due]) -> list[tuple[str, str]]:
        return [(due.order_id, _check(worker, due, run)) for due in checks if not _past(deadline)]

    with _CheckPool(paced, s.reconcile_workers) as pool:
        while not _past(deadline):
            batch = run.next_batch()
            if not batch:
                break
            by_order: dict[str, list[check_queue.Due]] = {}
            for due in batch:  # one order's checks one after the other, on one worker
                by_order.setdefault(due.order_id, []).append(due)
            touched: list[str] = []
            for order_id, outcome in (
                done for group in pool.map(check_all, by_order.values()) for done in group
            ):
                outcomes[outcome] += 1
                if outcome not in _NOTHING_CHANGED:
                    touched.append(order_id)
            outbox.publish_best_effort(db, services.publisher, touched)  # a page at a time: no list grows
    _report(db, run, outcomes, time.monotonic() - started)
    outcomes["stripe_calls"] = pacer.calls
    return {k: v for k, v in outcomes.items() if v}


# Outcomes after which nothing was written that announces anything (no publish needed).
_NOTHING_CHANGED = frozenset(
    {"unchanged", "settled", "still_held", "waiting", "skipped_locked", "skipped_pending", "errors"}
)
# Outcomes that are not a check (the order was someone else's, or the outcome is a tally).
_NOT_CHECKS = frozenset({"skipped_locked", "lost_calls_flagged"})


def stale_windows(settings: Settings) -> dict[PaymentStatus, float]:
    """How long a payment may stay in each non-final status before the reconciler looks."""
    return {
        S.PENDING: settings.reconcile_pending_after_seconds,
        S.REQUIRES_ACTION: settings.reconcile_requires_action_after_seconds,
        S.AUTHORIZED: settings.reconcile_authorized_after_seconds,
    }


def _past(deadline: float | None) -> bool:
    return deadline is not None and time.monotonic() >= deadline


def _report(db: Database, run: check_queue.Run, outcomes: Counter[str], elapsed_s: float) -> None:
    """Every run: what it did, how fast, and what it left (the backlog alarms read these)."""
    checks = sum(n for outcome, n in outcomes.items() if outcome not in _NOT_CHECKS)
    count("ReconcileChecks", checks)
    add_metric("ReconcileCheckRate", MetricUnit.CountPerSecond, checks / elapsed_s if elapsed_s > 0 else 0.0)
    count("AuditUnresolved", outcomes["unresolved"])
    try:
        left = check_queue.backlog(db, run.windows, run.as_of)
    except TransientError as exc:  # the checks are done; only the gauges are missing this time
        logger.warning("reconciler backlog not measured", extra={"reason": str(exc)})
        return
    count("AuthorizationsNearExpiry", left.authorized_past_window)
    count("StaleCheckBacklog", left.stale_due)
    add_metric("StaleCheckBacklogAge", MetricUnit.Seconds, left.stale_age_s)
    count("AuditBacklog", left.audits_due)
    add_metric("AuditBacklogAge", MetricUnit.Seconds, left.audit_age_s)
    logger.info(
        "reconciler run",
        extra={
            "checks": checks,
            "seconds": round(elapsed_s, 3),
            "stale_backlog": left.stale_due,
            "audit_backlog": left.audits_due,
        },
    )


def _check(services: Services, due: check_queue.Due, run: check_queue.Run) -> str:
    db = services.db
    try:
        with leases.hold_order(services, due.order_id) as held:
            if due.kind == "audit":
                return _audit(held, due.order_id)
            return _stale_check(held, due, run)
    except leases.LeaseBusy:
        return "skipped_locked"  # left due: behind this run's cursor, the next run takes it
    except (TransientError, Rejection) as exc:
        logger.warning(
            "check failed; it is retried later", extra={"order_id": due.order_id, "reason": str(exc)}
        )
        count("AuditCheckFailed")
        if due.kind == "audit":
            with contextlib.suppress(TransientError):  # still due if this fails: the next run retries it
                check_queue.audit_again_later(db, due.order_id, services.settings.audit_backoff_seconds)
        return "errors"


def _stale_check(services: Services, due: check_queue.Due, run: check_queue.Run) -> str:
    """A look at a stale payment, under its lease: what the page said may have changed since."""
    db = services.db
    payment = repository.get_by_order_id(db, due.order_id)
    if payment is None or (payment.stale_checked_at is not None and payment.stale_checked_at > run.as_of):
        return "unchanged"  # another run looked after this one started: its schedule stands
    if not run.is_stale(payment.status, payment.updated_at):
        if due.kind == "recheck":  # final, or in a status whose window has not passed yet
            check_queue.nothing_due(db, due.order_id)
        return "unchanged"
    status = payment.status
    try:
        return _reconcile_one(services, payment)
    finally:  # also when the look failed: due again after the next delay
        with contextlib.suppress(TransientError):
            check_queue.stale_checked(db, due.order_id, status, services.settings.reconcile_backoff_seconds)


# ---- the settlement audit -------------------------------------------------------------------


@dataclass
class _Findings:
    fixed: list[str] = field(default_factory=list)
    unresolved: list[str] = field(default_factory=list)
    waiting: list[str] = field(default_factory=list)  # Stripe has not finished (a refund pending)


def _audit(services: Services, order_id: str) -> str:
    db = services.db
    payment = repository.get_by_order_id(db, order_id)
    if payment is None:
        return "unchanged"
    found = _Findings()
    if payment.status is S.PENDING:
        # Its create's answer may be lost: the PaymentIntent found may be its own. Completed by
        # the stale-payment check first; audited once it has a status.
        return "skipped_pending"
    intents = services.stripe.order_intents(payment)
    if payment.payment_intent_id and all(i.id != payment.payment_intent_id for i in intents):
        intents.append(services.stripe.retrieve(payment.payment_intent_id))
    for intent in intents:
        _check_intent(services, payment, intent, found)
    if payment.status in (S.SUCCEEDED, S.REVERTED):
        _check_transfers(services, payment, found)
    in_doubt = repository.money_calls_in_doubt(db, order_id, services.settings.audit_in_doubt_seconds)
    if in_doubt:  # Stripe may still execute it: what agrees now may not in a minute
        found.waiting.append(f"outcome unknown, may still land: {', '.join(in_doubt)}")
    extra = {"order_id": order_id, "status": payment.status.value}
    if found.unresolved:
        count("AuditUnresolved")
        logger.error("audit cannot settle this payment", extra={**extra, "problems": found.unresolved})
    if found.fixed:
        count("AuditFixed", len(found.fixed))
        logger.warning(
            "audit fixed what Stripe and our row disagreed on", extra={**extra, "fixes": found.fixed}
        )
    if found.fixed or found.unresolved or found.waiting:
        check_queue.audit_again_later(db, order_id, services.settings.audit_backoff_seconds)
        return "fixed" if found.fixed else "unresolved" if found.unresolved else "waiting"
    check_queue.audit_settled(db, order_id)
    return "settled"


def _check_intent(services: Services, payment: Payment, intent: IntentSnapshot, found: _Findings) -> None:
    ours = intent.id == payment.payment_intent_id
    if ours and not payment.status.is_final and payment.status is not S.SUCCEEDED:
        # A status of ours that Stripe has moved on from (a lost webhook): the state machine decides.
        with services.db.transaction():
            if lifecycle.apply_intent(services.db, payment, intent, correlation_id=payment.correlation_id):
                found.fixed.append(f"status from {intent.id}: {payment.status.value}")
        if intent.status in _MAY_STILL_HOLD:
            found.waiting.append(f"{intent.id} is {intent.status}")
        return
    nothing_held = payment.status.is_final or not ours
    if intent.status in _CANCELED_WHEN_NOTHING_HELD and nothing_held:
        cancel_stray_hold(services, payment, intent.id)
        found.fixed.append(f"{intent.status} {intent.id} canceled")
    elif intent.status in _MAY_STILL_HOLD and nothing_held:
        found.waiting.append(f"{intent.id} is {intent.status}")
    elif intent.status == "succeeded" and (not ours or payment.status is S.FAILED):
        found.unresolved.append(f"{intent.id} captured money on a payment that says nothing was taken")
    elif intent.status == "succeeded" and payment.status is S.REVERTED:
        _check_refunds(services, payment, intent, found)


def _check_refunds(services: Services, payment: Payment, intent: IntentSnapshot, found: _Findings) -> None:
    refunds = services.stripe.intent_refunds(intent.id, since=intent.created or None)
    given_back = sum(int(r.get("amount") or 0) for r in refunds if r.get("status") in _REFUND_LIVE)
    if any(r.get("status") in ("pending", "requires_action") for r in refunds):
        found.waiting.append("a refund is pending")  # refund updates can come days later
    if given_back >= (intent.amount_received or payment.captured_amount_cents or payment.amount_cents):
        return
    failed = [r for r in refunds if r.get("status") == "failed"]
    if failed:
        # The card cannot take the money back (closed, expired): a person must act.
        count("RefundFailed")
        found.unresolved.append(f"refund {failed[0].get('id')} failed: {failed[0].get('failure_reason')}")
        return
    canceled = sum(1 for r in refunds if r.get("status") == "canceled")
    refund_id = services.stripe.refund(replace(payment, payment_intent_id=intent.id), redo=canceled)
    found.fixed.append(f"refund {refund_id} made" + (" again after a canceled one" if canceled else ""))


def _check_transfers(services: Services, payment: Payment, found: _Findings) -> None:
    if not payment.runner_connect_account_id and not payment.transfer_id:
        return
    transfers = services.stripe.order_transfers(payment)
    if payment.status is S.SUCCEEDED:
        if payment.transfer_id is None and transfers:
            with services.db.transaction():
                repository.update(
                    services.db,
                    payment.payment_id,
                    expected_status=S.SUCCEEDED,
                    transfer_id=transfers[0]["id"],
                )
            found.fixed.append(f"transfer {transfers[0]['id']} recorded")
        keep = payment.transfer_id or (transfers[0]["id"] if transfers else None)
        extra = [t for t in transfers if t["id"] != keep and not _fully_reversed(t)]
    else:
        extra = [t for t in transfers if not _fully_reversed(t)]
    for transfer in extra:  # a runner paid for a reverted payment, or paid twice
        try:
            services.stripe.reverse_transfer(payment, transfer_id=str(transfer["id"]))
        except Rejection as exc:
            count("TransferReversalFailed")
            found.unresolved.append(f"transfer {transfer['id']} not reversed: {exc.message}")
            continue
        found.fixed.append(f"transfer {transfer['id']} reversed")


def _fully_reversed(transfer: dict[str, Any]) -> bool:
    return bool(transfer.get("reversed")) or int(transfer.get("amount_reversed") or 0) >= int(
        transfer.get("amount") or 0
    )


def cancel_stray_hold(services: Services, payment: Payment, payment_intent_id: str) -> None:
    """Cancel a hold on a payment that is already FAILED or REVERTED, or a second hold on one
    order: we announced that nothing is held, so nothing may be. Caller holds the lease.
    Stripe refusing (the hold was captured or canceled meanwhile) is logged; the audit, which
    scheduled this payment, looks again."""
    count("StrayHoldFound")
    logger.error(
        "hold found on a payment that holds nothing; canceling it",
        extra={
            "order_id": payment.order_id,
            "status": payment.status.value,
            "payment_intent_id": payment_intent_id,
        },
    )
    try:
        services.stripe.cancel(replace(payment, payment_intent_id=payment_intent_id))
    except Rejection as exc:
        logger.error("stray hold not canceled", extra={"order_id": payment.order_id, "reason": exc.message})


# ---- stale non-final payments ----------------------------------------------------------------


def _reconcile_one(services: Services, payment: Payment) -> str:
    db = services.db
    order_id = payment.order_id
    cid = payment.correlation_id
    if payment.status is S.PENDING:
        authorization.authorize_pending(services, payment, correlation_id=cid)
        return "completed_pending"
    intent = services.stripe.find_hold(payment)
    if intent is None:
        return "unchanged"
    if payment.status is S.REQUIRES_ACTION:
        if intent.status == "requires_action":
            # The customer never finished: cancel, so a late authentication cannot create a
            # hold nobody tracks, then fail the payment.
            services.stripe.cancel(replace(payment, payment_intent_id=intent.id))
            with db.transaction():
                lifecycle.change_status(
                    db,
                    payment,
                    S.FAILED,
                    correlation_id=cid,
                    payment_intent_id=intent.id,
                    failure_code=AUTHENTICATION_FAILED,
                    failure_message="3-D Secure authentication was not completed in time.",
                )
            return "authentication_abandoned"
        with db.transaction():
            changed = lifecycle.apply_intent(
                db,
                payment,
                intent,
                correlation_id=cid,
                attempt_failed=True,
                failed_code=AUTHENTICATION_FAILED,
            )
        return "applied" if changed else "unchanged"
    # AUTHORIZED for longer than the window: the hold may have lapsed.
    if intent.status == "requires_capture":
        logger.warning("authorization near expiry and still held", extra={"order_id": order_id})
        return "still_held"
    with db.transaction():
        changed = lifecycle.apply_intent(
            db, payment, intent, correlation_id=cid, canceled_code=AUTHORIZATION_EXPIRED
        )
    return "expired" if changed else "unchanged"


# ---- concurrency and pacing -------------------------------------------------------------------


class _CheckPool:
    """``size`` threads for a run's checks: a check waits mostly on Stripe (~300 ms a call), so
    one at a time would cap a run near 3 checks/s whatever its Stripe share. Each thread has its
    own database connection (a lease is held on one, and a pg8000 connection is not shared
    between threads); all share the pacer. Size 1: on the caller's thread and connection."""

    def __init__(self, services: Services, size: int) -> None:
        self._base = services
        self._executor = ThreadPoolExecutor(size, thread_name_prefix="reconcile") if size > 1 else None
        self._local = threading.local()
        self._made: list[Database] = []
        self._lock = threading.Lock()

    def __enter__(self) -> _CheckPool:
        return self

    def __exit__(self, *_exc: object) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)
        for db in self._made:
            db.close()

    def map(self, fn: Callable[[Services, T], R], items: Iterable[T]) -> list[R]:
        if self._executor is None:
            return [fn(self._base, item) for item in items]
        return list(self._executor.map(lambda item: fn(self._worker(), item), items))

    def _worker(self) -> Services:
        worker: Services | None = getattr(self._local, "services", None)
        if worker is None:
            db = type(self._base.db)(self._base.settings)  # of the run's own kind (a test's double too)
            with self._lock:
                self._made.append(db)
            worker = self._local.services = replace(self._base, db=db)
        return worker


class _Pacer:
    """At most ``per_second`` calls on average (the audit's share of Stripe's rate budget)."""

    def __init__(self, per_second: float) -> None:
        self._interval = 1.0 / per_second if per_second > 0 else 0.0
        self._next = time.monotonic()
        self._lock = threading.Lock()
        self.calls = 0

    def wait(self) -> None:
        with self._lock:
            self.calls += 1
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + self._interval
        if start > now:
            time.sleep(start - now)


class _Paced:
    """A Stripe gateway whose every call waits its turn at the pacer."""

    def __init__(self, inner: Any, pacer: _Pacer) -> None:
        self._inner = inner
        self._pacer = pacer

    def __getattr__(self, name: str) -> Any:
        target = getattr(self._inner, name)
        if not callable(target):
            return target

        def paced(*args: Any, **kwargs: Any) -> Any:
            self._pacer.wait()
            return target(*args, **kwargs)

        return paced
