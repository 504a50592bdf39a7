"""Applying a status change: the state machine decides, the row and its announcement are
written together (same transaction, via the outbox). Every path goes through ``change_status``.

The announcement of a status is derived from the stored payment, so a re-announcement is
byte-for-byte the event first written (same event_id: see domain.event_id_for)."""

from __future__ import annotations

from typing import Any

from payments_core.adapters.postgres import outbox, repository
from payments_core.adapters.postgres.db import Database
from payments_core.config import get_settings
from payments_core.domain.events import (
    PaymentAuthorized,
    PaymentFailed,
    PaymentReleased,
    PaymentRequiresAction,
    amount_in_units,
    event_envelope,
)
from payments_core.domain.payment import Payment, PaymentStatus, can_transition, event_id_for
from payments_core.observability import logger

S = PaymentStatus


def announcement_for(payment: Payment) -> tuple[str, Any] | None:
    """The event that announces the payment's current status (None for PENDING)."""
    p = payment
    match p.status:
        case S.AUTHORIZED:
            return "payment.authorized", PaymentAuthorized(
                payment_id=p.payment_id,
                order_id=p.order_id,
                payment_intent_id=p.payment_intent_id or "",
                amount_cents=p.amount_cents,
                currency=p.currency,
            )
        case S.REQUIRES_ACTION:
            return "payment.requires_action", PaymentRequiresAction(
                payment_id=p.payment_id,
                order_id=p.order_id,
                payment_intent_id=p.payment_intent_id or "",
                next_action_url=p.next_action_url,
            )
        case S.SUCCEEDED:
            return "payment.released", released_announcement(p)
        case S.REVERTED if p.failure_code is None:
            return "payment.released", reverted_announcement(p)
        case S.REVERTED | S.FAILED:
            return "payment.failed", PaymentFailed(
                order_id=p.order_id,
                payment_id=p.payment_id,
                error=p.failure_code or "UNEXPECTED_PROCESSING_ERROR",
                message=p.failure_message or "payment failed",
                stripe_code=p.stripe_code,
                decline_code=p.decline_code,
                status=p.status.value,
            )
    return None


def released_announcement(payment: Payment) -> PaymentReleased:
    captured = (
        payment.captured_amount_cents if payment.captured_amount_cents is not None else payment.amount_cents
    )
    return PaymentReleased(
        payment_id=payment.payment_id,
        order_id=payment.order_id,
        status="SUCCEEDED",
        runner_id=payment.runner_id,
        amount=amount_in_units(captured, payment.currency),
        amount_cents=captured,
        currency=payment.currency,
        transfer_id=payment.transfer_id,
    )


def announce_completed_release(db: Database, payment: Payment, *, correlation_id: str | None) -> None:
    """Announce a release finished after its SUCCEEDED event was written (by a webhook or the
    audit, which knew no transfer yet): its own event naming the runner's transfer, so the
    saga's last word on the order says who was paid. One such event per payment."""
    answer(
        db,
        payment,
        "payment.released",
        released_announcement(payment),
        answer_key="release-completed",
        correlation_id=correlation_id,
    )


def reverted_announcement(payment: Payment) -> PaymentReleased:
    return PaymentReleased(
        payment_id=payment.payment_id,
        order_id=payment.order_id,
        status="REVERTED",
        message=payment.revert_reason or "payment reverted",
    )


def change_status(
    db: Database, payment: Payment, target: PaymentStatus, *, correlation_id: str | None, **columns: Any
) -> bool:
    """Move the payment to ``target`` if the state machine allows it, storing ``columns`` and
    enqueueing the announcement. Must run inside a transaction holding the order's lock.
    Returns False (and changes nothing) when the move is not allowed."""
    if not can_transition(payment.status, target):
        logger.info(
            "status change ignored",
            extra={
                "order_id": payment.order_id,
                "from_status": payment.status.value,
                "to_status": target.value,
            },
        )
        return False
    repository.update(db, payment.payment_id, expected_status=payment.status, status=target, **columns)
    for name, value in columns.items():
        setattr(payment, name, value)
    payment.status = target
    announce(db, payment, correlation_id=correlation_id)
    if target.is_final and (payment.payment_intent_id or payment.stripe_create_attempts):
        # We now say nothing is held. Something may still land at Stripe (a create, capture or
        # transfer still executing when this ran): the audit checks once it could have landed,
        # and again until Stripe agrees.
        repository.schedule_audit(
            db, payment.order_id, get_settings().audit_backoff_seconds[0], f"became {target.value}"
        )
    return True


def announce(db: Database, payment: Payment, *, correlation_id: str | None) -> None:
    """Enqueue the current status's event. A re-announcement re-queues the row first written
    for it (same event_id, original envelope): see outbox.enqueue."""
    found = announcement_for(payment)
    if found is None:
        return
    event_type, body = found
    event_id = event_id_for(payment.payment_id, payment.status.value)
    envelope = event_envelope(event_type, body, event_id=event_id, correlation_id=correlation_id)
    outbox.enqueue(db, envelope, order_id=payment.order_id, payment_id=payment.payment_id)


def answer(
    db: Database, payment: Payment, event_type: str, body: Any, *, answer_key: str, correlation_id: str | None
) -> None:
    """Enqueue an event that answers a command without changing the status (e.g. a release
    refused because nothing is held). Keyed so a redelivered command answers with the same id."""
    event_id = event_id_for(payment.payment_id, answer_key)
    envelope = event_envelope(event_type, body, event_id=event_id, correlation_id=correlation_id)
    outbox.enqueue(db, envelope, order_id=payment.order_id, payment_id=payment.payment_id)


def apply_intent(
    db: Database,
    payment: Payment,
    intent: Any,
    *,
    correlation_id: str | None,
    attempt_failed: bool = False,
    failed_code: str = "STRIPE_PAYMENT_FAILED",
    canceled_code: str = "STRIPE_PAYMENT_CANCELED",
) -> bool:
    """Bring the payment to what Stripe says of its PaymentIntent (an ``IntentSnapshot``),
    through the state machine. The PaymentIntent's status decides, never an event's name."""
    from payments_core.domain.payment import status_from_payment_intent

    target = status_from_payment_intent(
        intent.status, attempt_failed=attempt_failed or bool(intent.failure_code)
    )
    if target is None or target == payment.status:
        return False
    columns: dict[str, Any] = {}
    if payment.payment_intent_id is None:
        columns["payment_intent_id"] = intent.id
    if target is S.REQUIRES_ACTION:
        columns["next_action_url"] = intent.next_action_url
    elif target is S.FAILED:
        columns.update(
            failure_code=failed_code,
            failure_message=intent.failure_message or "The payment failed.",
            stripe_code=intent.failure_code,
            decline_code=intent.decline_code,
        )
    elif target is S.REVERTED and payment.status is not S.SUCCEEDED:
        columns.update(
            failure_code=canceled_code, failure_message="The PaymentIntent was canceled in Stripe."
        )
    elif target is S.SUCCEEDED:
        columns["captured_amount_cents"] = intent.amount_received or payment.amount_cents
    return change_status(db, payment, target, correlation_id=correlation_id, **columns)
