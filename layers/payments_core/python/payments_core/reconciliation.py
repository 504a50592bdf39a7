"""The reconciler and settlement audit, run every few minutes until its deadline.

Two kinds of payment are checked against Stripe, each under the order's lease (skipped, and
left due, while someone else holds it):
- stale non-final payments (PENDING, REQUIRES_ACTION, AUTHORIZED past their windows): webhooks
  get lost, a function can die between Stripe and the database, holds lapse after ~7 days;
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
Stripe reads are paced to ``audit_stripe_reads_per_second``, a share of the account's budget."""

from __future__ import annotations

import contextlib
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from payments_core import authorization, leases, lifecycle, outbox, repository
from payments_core.contracts import AUTHENTICATION_FAILED, AUTHORIZATION_EXPIRED
from payments_core.domain import Payment, PaymentStatus
from payments_core.errors import Rejection, TransientError
from payments_core.observability import count, logger
from payments_core.services import Services, get_services
from payments_core.stripe_gateway import IntentSnapshot

S = PaymentStatus
# A PaymentIntent in one of these may still hold money by itself: a customer can still finish
# 3-D Secure, a payment can still be processing. One that requires a payment method or a
# confirmation moves no money unless we send one, which we never do after a failure.
_MAY_STILL_HOLD = frozenset({"requires_action", "processing"})
# What is canceled on a payment that holds nothing (processing cannot be canceled: waited for).
_CANCELED_WHEN_NOTHING_HELD = frozenset({"requires_capture", "requires_action"})
# Refund states that give (or will give) the money back.
_REFUND_LIVE = frozenset({"succeeded", "pending", "requires_action"})


def reconcile(services: Services | None = None, *, deadline: float | None = None) -> dict[str, int]:
    """Check every due payment until none is left or ``deadline`` (time.monotonic()) passes;
    returns counts by outcome."""
    services = services or get_services()
    s = services.settings
    db = services.db
    outcomes: Counter[str] = Counter()
    touched: list[str] = []
    seen: list[str] = []
    paced = replace(services, stripe=_Paced(services.stripe, _Pacer(s.audit_stripe_reads_per_second)))
    outcomes["lost_calls_flagged"] = repository.flag_unfinished_money_calls(db, leases.lease_ttl_seconds(s))
    windows = (
        (S.PENDING, s.reconcile_pending_after_seconds),
        (S.REQUIRES_ACTION, s.reconcile_requires_action_after_seconds),
        (S.AUTHORIZED, s.reconcile_authorized_after_seconds),
    )
    while deadline is None or time.monotonic() < deadline:
        batch: list[tuple[str, PaymentStatus | None]] = [
            (order_id, status)
            for status, age in windows
            for order_id in repository.stale_order_ids(db, status, age, s.reconcile_batch_size, seen)
        ]
        batch += [
            (o, None) for o in repository.due_audits(db, s.reconcile_batch_size, seen + [o for o, _ in batch])
        ]
        if not batch:
            break
        for order_id, status in batch:
            if deadline is not None and time.monotonic() >= deadline:
                break
            seen.append(order_id)
            outcome = _check(paced, order_id, status)
            outcomes[outcome] += 1
            if outcome not in ("unchanged", "settled", "skipped_locked", "skipped_pending", "errors"):
                touched.append(order_id)
    outbox.publish_best_effort(db, services.publisher, touched)
    count("AuthorizationsNearExpiry", outcomes["still_held"])
    count("AuditUnresolved", outcomes["unresolved"])
    due, _ = repository.audit_backlog(db)
    count("AuditBacklog", due)
    return {k: v for k, v in outcomes.items() if v}


def _check(services: Services, order_id: str, status: PaymentStatus | None) -> str:
    db = services.db
    try:
        with leases.hold_order(services, order_id) as held:
            if status is not None:
                outcome = _reconcile_one(held, order_id, status)
                repository.mark_reconciled(db, order_id)
                return outcome
            return _audit(held, order_id)
    except leases.LeaseBusy:
        return "skipped_locked"
    except (TransientError, Rejection) as exc:
        logger.warning("check failed; it is retried later", extra={"order_id": order_id, "reason": str(exc)})
        count("AuditCheckFailed")
        with contextlib.suppress(TransientError):  # still due if this fails: the next run retries it
            if status is None:
                repository.audit_again_later(db, order_id, services.settings.audit_backoff_seconds)
            else:  # still stale, so still a candidate: only sorted behind those not yet looked at
                repository.mark_reconciled(db, order_id)
        return "errors"


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
        repository.audit_again_later(db, order_id, services.settings.audit_backoff_seconds)
        return "fixed" if found.fixed else "unresolved" if found.unresolved else "waiting"
    repository.audit_settled(db, order_id)
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
    refunds = services.stripe.intent_refunds(intent.id)
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


def _reconcile_one(services: Services, order_id: str, expected: PaymentStatus) -> str:
    db = services.db
    payment = repository.get_by_order_id(db, order_id)
    if payment is None or payment.status is not expected:
        return "unchanged"  # another path moved it since the query
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


# ---- pacing ----------------------------------------------------------------------------------


class _Pacer:
    """At most ``per_second`` calls on average (the audit's share of Stripe's rate budget)."""

    def __init__(self, per_second: float) -> None:
        self._interval = 1.0 / per_second if per_second > 0 else 0.0
        self._next = time.monotonic()
        self._lock = threading.Lock()

    def wait(self) -> None:
        with self._lock:
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


def invocation_deadline(remaining_ms: Callable[[], int] | None, margin_s: float = 20.0) -> float | None:
    """The monotonic time a scheduled run stops starting checks (leaving ``margin_s``)."""
    if remaining_ms is None:
        return None
    return time.monotonic() + remaining_ms() / 1000 - margin_s
