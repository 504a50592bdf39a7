"""authorize_payment: one Stripe hold (manual-capture PaymentIntent) per order.

Concurrency and redelivery: every copy of a command for one order takes the order's lease
(``leases``) for the whole use case, Stripe call included. The PENDING row is
committed before Stripe is called, with the attempt counted, so a copy that finds a PENDING
row knows an earlier attempt may have reached Stripe and looks for its PaymentIntent first;
Stripe itself returns the first answer for the order's idempotency key. A copy that finds any
other status only re-announces it."""

from __future__ import annotations

import uuid

from payments_core.adapters.postgres import archive, repository
from payments_core.adapters.services import Services
from payments_core.adapters.stripe_api.stripe_gateway import IntentSnapshot
from payments_core.domain.contracts import ORDER_REVERTED, STRIPE_UNEXPECTED_STATUS, AuthorizePayment, Command
from payments_core.domain.errors import Rejection, TransientError
from payments_core.domain.payment import Payment, PaymentStatus
from payments_core.observability import count, logger
from payments_core.usecases import leases, lifecycle

S = PaymentStatus
_KNOWN_OUTCOMES = frozenset({"requires_capture", "requires_action", "requires_payment_method", "canceled"})


def authorize(services: Services, command: Command) -> str:
    """Handle one authorize_payment command; returns the order id whose events to publish."""
    body = command.body
    assert isinstance(body, AuthorizePayment)
    db = services.db
    proposed = Payment(
        payment_id=str(uuid.uuid4()),
        order_id=body.order_id,
        status=S.PENDING,
        amount_cents=body.order.amount,
        currency=body.order.currency or services.settings.default_currency,
        correlation_id=command.correlation_id,
        clerk_user_id=body.customer.clerk_user_id,
        stripe_customer_id=body.customer.stripe_customer_id,
        payment_method_id=body.customer.user_stripe_card.payment_method_id,
        description=body.order.description,
        return_url=body.return_url,
    )
    # The lease is taken by the transaction that writes the PENDING row (one statement fewer).
    with leases.hold_order(services, body.order_id, take_with_first_transaction=True) as services:
        db = services.db
        lease = leases.lease_of(services)
        assert lease is not None
        with db.transaction():
            call_id = repository.insert_pending_with_intent(db, proposed, lease.token)
            created = call_id is not None
            if call_id is not None:
                lease.intended("create_hold", call_id)
            # An archived order's payment answers as any other duplicate: announced again.
            payment = (
                proposed
                if created
                else repository.get_by_order_id(db, body.order_id) or archive.find(db, order_id=body.order_id)
            )
        if payment is None:  # not written, yet no payment: the order was reverted first
            raise Rejection(
                ORDER_REVERTED,
                "the order was reverted before its payment was authorized; no hold is placed",
                order_id=body.order_id,
                correlation_id=command.correlation_id,
            )
        if not created:
            count("DuplicateCommand")
            if payment.amount_cents != proposed.amount_cents or payment.currency != proposed.currency:
                logger.warning(
                    "authorize command differs from the stored payment; the stored one stands",
                    extra={"order_id": payment.order_id, "stored_amount_cents": payment.amount_cents},
                )
            if payment.status is not S.PENDING:
                with db.transaction():
                    lifecycle.announce(db, payment, correlation_id=command.correlation_id)
                return payment.order_id
        authorize_pending(
            services, payment, correlation_id=command.correlation_id, just_written=created, last=lease
        )
    return payment.order_id


def authorize_pending(
    services: Services,
    payment: Payment,
    *,
    correlation_id: str | None,
    just_written: bool = False,
    last: leases.Lease | None = None,
) -> None:
    """Take a PENDING payment to its Stripe outcome. Caller holds the order's lease.
    ``just_written``: the caller wrote the row (its create attempt already counted), so no
    earlier attempt can have reached Stripe. ``last``: the caller's lease, given back by the
    transaction that writes the outcome (the caller does nothing more under it)."""
    db = services.db
    intent: IntentSnapshot | None = None
    if not just_written:
        if payment.stripe_create_attempts > 0 or payment.payment_intent_id:
            intent = services.stripe.find_hold(payment)
        if intent is None:
            with db.transaction():
                repository.count_create_attempt(db, payment.payment_id)
            payment.stripe_create_attempts += 1
    if intent is None:
        try:
            intent = services.stripe.create_hold(payment)
        except Rejection as refused:  # a decline (CardDeclined) or a request Stripe rejects
            _last_transaction(last)
            with db.transaction():
                lifecycle.change_status(
                    db,
                    payment,
                    S.FAILED,
                    correlation_id=correlation_id,
                    payment_intent_id=getattr(refused, "payment_intent_id", None),
                    failure_code=refused.code,
                    failure_message=refused.message,
                    stripe_code=refused.stripe_code,
                    decline_code=refused.decline_code,
                )
            count("PaymentFailed")
            return
    if intent.status not in _KNOWN_OUTCOMES:
        _fail_unexpected(services, payment, intent, correlation_id=correlation_id)
        return
    _last_transaction(last)
    with db.transaction():
        lifecycle.apply_intent(
            db,
            payment,
            intent,
            correlation_id=correlation_id,
            attempt_failed=True,
            failed_code="STRIPE_CARD_ERROR",
        )
    count(
        {S.AUTHORIZED: "PaymentAuthorized", S.REQUIRES_ACTION: "PaymentRequiresAction"}.get(
            payment.status, "PaymentFailed"
        )
    )


def _last_transaction(lease: leases.Lease | None) -> None:
    if lease is not None:
        lease.give_back_with_next_transaction()


def _fail_unexpected(
    services: Services, payment: Payment, intent: IntentSnapshot, *, correlation_id: str | None
) -> None:
    """An outcome we cannot hold on to (processing, requires_confirmation, ...): cancel it so
    no hold is left behind, then fail the payment."""
    try:
        payment.payment_intent_id = payment.payment_intent_id or intent.id
        services.stripe.cancel(payment)
    except Rejection as exc:  # e.g. already canceled or not cancelable any more: say so, carry on
        logger.warning(
            "could not cancel unexpected PaymentIntent",
            extra={"order_id": payment.order_id, "reason": exc.message},
        )
    except TransientError:
        raise
    with services.db.transaction():
        lifecycle.change_status(
            services.db,
            payment,
            S.FAILED,
            correlation_id=correlation_id,
            payment_intent_id=intent.id,
            failure_code=STRIPE_UNEXPECTED_STATUS,
            failure_message=f"Stripe answered with status {intent.status}",
        )
    count("PaymentFailed")
