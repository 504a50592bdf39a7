"""revert_payment: give the money back (cancel the hold, or refund the capture and reverse the
runner's transfer), and always answer REVERTED once nothing is held, so the saga's compensation
completes.

Runs holding the order's lease (``order_holds``), Stripe calls included. Each Stripe side effect
has its own idempotency key derived from the payment, and a step an earlier attempt may have
taken first checks what Stripe already did (a transfer found by its group, a refund already
made), so a redelivery or a retry after a crash converges on one refund. Refusals by Stripe are
answered REVERT_FAILED: REVERTED is never announced for money still taken."""

from __future__ import annotations

from payments_core.adapters.postgres import archive, outbox, repository
from payments_core.adapters.postgres.db import Database
from payments_core.adapters.services import Services
from payments_core.domain.contracts import REVERT_FAILED, Command, RevertPayment
from payments_core.domain.errors import Rejection
from payments_core.domain.events import PaymentReleased, event_envelope
from payments_core.domain.payment import Payment, PaymentStatus, event_id_for
from payments_core.observability import count, logger
from payments_core.usecases import lifecycle, order_holds

S = PaymentStatus


def revert(services: Services, command: Command) -> str:
    body = command.body
    assert isinstance(body, RevertPayment)
    cid = command.correlation_id
    reason = body.reason or "payment reverted"
    order_id = repository.find_order_id(services.db, order_id=body.order_id, payment_id=body.payment_id)
    if order_id is None:
        # A payment id we never issued: nothing is held under it, and the saga's compensation
        # waits for REVERTED, so that is the answer (PAYMENT_NOT_FOUND would leave it stuck).
        with services.db.transaction():
            _announce_nothing_held(services.db, None, body.payment_id, reason, cid)
        return body.payment_id or ""
    with order_holds.hold_order(services, order_id) as services:
        db = services.db
        payment = repository.get_by_order_id(db, order_id)
        archived = archive.find(db, order_id=order_id) if payment is None else None
        if archived is not None and archived.status is S.SUCCEEDED:
            # Archived payments are read-only (archive): the refund is an operator's, at Stripe.
            count("RevertFailed")
            raise Rejection(
                REVERT_FAILED,
                "the payment was archived (over for longer than RETAIN_PAYMENTS_DAYS): nothing was"
                " refunded; refund it from the Stripe Dashboard",
                order_id=order_id,
                payment_id=archived.payment_id,
                correlation_id=cid,
            )
        payment = payment or archived  # an archived REVERTED or FAILED one: acknowledged below
        if payment is None:
            # The revert overtook its own authorize (or the order never got one): remember it,
            # so that authorize, if it still comes, places no hold that nobody would release;
            # nothing is held now, so the compensation is complete.
            with db.transaction():
                repository.remember_reverted_order(db, order_id, reason, cid)
                _announce_nothing_held(db, order_id, body.payment_id, reason, cid)
            count("PaymentReverted")
            return order_id
        if payment.status in (S.FAILED, S.REVERTED):
            # Nothing to give back; still answer REVERTED so the saga's compensation completes.
            with db.transaction():
                if payment.status is S.REVERTED and payment.failure_code is None:
                    lifecycle.announce(db, payment, correlation_id=cid)
                else:
                    lifecycle.answer(
                        db,
                        payment,
                        "payment.released",
                        lifecycle.reverted_announcement(payment),
                        answer_key="revert-acknowledged",
                        correlation_id=cid,
                    )
            count("DuplicateCommand")
            return order_id

        columns: dict[str, object] = {"revert_reason": reason}
        try:
            if payment.status is S.SUCCEEDED:
                columns.update(_give_back_capture(services, payment))
            else:  # PENDING, REQUIRES_ACTION, AUTHORIZED: release the hold, if one exists
                intent = services.stripe.find_hold(payment)
                if intent is not None:
                    payment.payment_intent_id = intent.id
                    columns["payment_intent_id"] = intent.id
                    if intent.status == "succeeded":
                        columns.update(_give_back_capture(services, payment))
                    elif intent.status != "canceled":
                        services.stripe.cancel(payment)
        except Rejection as exc:
            # Stripe refused to give the money back (e.g. a disputed charge, a PaymentIntent
            # still processing): say so, never announce REVERTED for money still taken.
            count("RevertFailed")
            logger.error("revert refused by Stripe", extra={"order_id": order_id, "reason": exc.message})
            raise Rejection(
                REVERT_FAILED,
                f"revert refused by Stripe: {exc.message}",
                order_id=payment.order_id,
                payment_id=payment.payment_id,
                correlation_id=cid,
                stripe_code=exc.stripe_code,
            ) from exc
        with db.transaction():
            lifecycle.change_status(db, payment, S.REVERTED, correlation_id=cid, **columns)
        count("PaymentReverted")
        return order_id


def _announce_nothing_held(
    db: Database, order_id: str | None, payment_id: str | None, reason: str, cid: str | None
) -> None:
    """payment.released REVERTED for a revert that found no payment: nothing is held."""
    key = order_id or payment_id or ""
    body = PaymentReleased(order_id=order_id, payment_id=payment_id, status="REVERTED", message=reason)
    event_id = event_id_for(f"no-payment:{key}", "REVERTED")
    envelope = event_envelope("payment.released", body, event_id=event_id, correlation_id=cid)
    outbox.enqueue(db, envelope, order_id=key, payment_id=None)  # no payments row to point at


def _give_back_capture(services: Services, payment: Payment) -> dict[str, object]:
    changes: dict[str, object] = {}
    if payment.transfer_id is None and payment.runner_connect_account_id and payment.transfer_failure is None:
        # A release recorded its runner, then died around its transfer: find it by its group.
        payment.transfer_id = services.stripe.find_transfer(payment)
        if payment.transfer_id:
            changes["transfer_id"] = payment.transfer_id
    if payment.transfer_id:
        try:
            changes["transfer_reversal_id"] = services.stripe.reverse_transfer(payment)
        except Rejection as exc:
            # The customer is refunded regardless; the runner's share is then the platform's loss.
            logger.error(
                "transfer reversal failed", extra={"order_id": payment.order_id, "reason": exc.message}
            )
            count("TransferReversalFailed")
    try:
        # No amount: Stripe refunds what was captured and not yet refunded, never more.
        changes["refund_id"] = services.stripe.refund(payment)
    except Rejection as exc:
        if exc.stripe_code != "charge_already_refunded":
            raise
        # Refunded already (by an earlier attempt whose answer was lost, or in the dashboard).
        logger.warning("charge already refunded", extra={"order_id": payment.order_id})
    return changes
