"""The reconciler: re-reads from Stripe the payments that are not final and have waited too
long, because webhooks get lost (or are never sent: localstripe sends none for a failed 3-D
Secure), a function can die between a Stripe call and the database write, and card holds
lapse after about seven days. What it finds goes through the same state machine and outbox.

Overlapping runs never touch one payment twice: each payment is taken with a non-blocking
try-lock on the order (the advisory lock every other path also takes), and skipped if held."""

from __future__ import annotations

import contextlib
from collections import Counter

from payments_core import authorization, lifecycle, outbox, repository
from payments_core.contracts import AUTHENTICATION_FAILED, AUTHORIZATION_EXPIRED
from payments_core.domain import PaymentStatus
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
    for status, age in windows:
        for order_id in repository.stale_order_ids(db, status, age, s.reconcile_batch_size):
            if not db.try_order_lock(order_id):
                outcomes["skipped_locked"] += 1
                continue
            try:
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
