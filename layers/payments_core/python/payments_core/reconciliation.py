"""The reconciler: re-reads from Stripe the payments that are not final and have waited too
long (and, once, those that recently became final, for a hold that appeared after), because webhooks get lost (or are never sent: localstripe sends none for a failed 3-D
Secure), a function can die between a Stripe call and the database write, and card holds
lapse after about seven days. What it finds goes through the same state machine and outbox.

Overlapping runs never touch one payment twice: each payment is taken with a non-blocking
try-lock on the order (the advisory lock every other path also takes), and skipped if held."""

from __future__ import annotations

import contextlib
import dataclasses
from collections import Counter

from payments_core import authorization, lifecycle, outbox, repository
from payments_core.contracts import AUTHENTICATION_FAILED, AUTHORIZATION_EXPIRED
from payments_core.domain import Payment, PaymentStatus
from payments_core.errors import Rejection, TransientError
from payments_core.observability import count, logger
from payments_core.services import Services, get_services

S = PaymentStatus


def reconcile(services: Services | None = None) -> dict[str, int]:
    """One pass over every stale non-final payment; returns counts by outcome."""
    services = services or get_services()
    s = services.settings
    db = services.db
    outcomes: Counter[str] = Counter()
    touched: list[str] = []
    windows = (
        (S.PENDING, s.reconcile_pending_after_seconds),
        (S.REQUIRES_ACTION, s.reconcile_requires_action_after_seconds),
        (S.AUTHORIZED, s.reconcile_authorized_after_seconds),
    )
    candidates = [
        (order_id, status)
        for status, age in windows
        for order_id in repository.stale_order_ids(db, status, age, s.reconcile_batch_size)
    ] + [
        (order_id, None)
        for order_id in repository.recently_final_order_ids(
            db, s.reconcile_final_settle_seconds, s.reconcile_final_window_seconds, s.reconcile_batch_size
        )
    ]
    for order_id, status in candidates:
        if not db.try_order_lock(order_id):
            outcomes["skipped_locked"] += 1
            continue
        try:
            if status is None:
                outcome = _sweep_final(services, order_id)
            else:
                outcome = _reconcile_one(services, order_id, status)
            outcomes[outcome] += 1
            if outcome != "unchanged":
                touched.append(order_id)
        except (TransientError, Rejection) as exc:
            outcomes["errors"] += 1
            logger.warning(
                "reconcile failed; next run retries", extra={"order_id": order_id, "reason": str(exc)}
            )
        finally:
            with contextlib.suppress(TransientError):
                repository.mark_reconciled(db, order_id)
            db.release_order_lock(order_id)
    outbox.publish_best_effort(db, services.publisher, touched)
    count("AuthorizationsNearExpiry", outcomes["still_held"])
    return dict(outcomes)


def _sweep_final(services: Services, order_id: str) -> str:
    payment = repository.get_by_order_id(services.db, order_id)
    if payment is None or not payment.status.is_final:
        return "unchanged"
    intent = services.stripe.find_hold(payment)
    if intent is None or intent.status != "requires_capture":
        return "unchanged"
    cancel_stray_hold(services, payment, intent.id)
    return "stray_hold_canceled"


def cancel_stray_hold(services: Services, payment: Payment, payment_intent_id: str) -> None:
    """Cancel a hold on a payment that is already FAILED or REVERTED, or a second hold on one
    order: we announced that nothing is held, so nothing may be. Stripe refusing (the hold was
    captured or canceled meanwhile) is logged; the next sweep looks again."""
    count("StrayHoldFound")
    logger.error(
        "hold found on a payment that holds nothing; canceling it",
        extra={
            "order_id": payment.order_id,
            "status": payment.status.value,
            "payment_intent_id": payment_intent_id,
        },
    )
    stray = dataclasses.replace(payment, payment_intent_id=payment_intent_id)
    try:
        services.stripe.cancel(stray)
    except Rejection as exc:
        logger.error("stray hold not canceled", extra={"order_id": payment.order_id, "reason": exc.message})


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
            services.stripe.cancel(payment)
            with db.transaction():
                lifecycle.change_status(
                    db,
                    payment,
                    S.FAILED,
                    correlation_id=cid,
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
