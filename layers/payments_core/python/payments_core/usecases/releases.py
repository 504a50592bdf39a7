"""release_payment: capture the hold, then pay the runner their share.

Runs holding the order's lease (``order_holds``), Stripe calls included. Each Stripe side effect
has its own idempotency key derived from the payment, and every step that an earlier attempt
may have taken (its intent is recorded before it is sent) first checks what Stripe already did,
so a redelivery or a retry after a crash between Stripe and the database converges on one
capture and one transfer; a first attempt goes straight to Stripe (a released order: create,
capture, transfer). What a dead holder's request did after its lease ran out is the
settlement audit's to find. Giving the money back instead is ``reverts``."""

from __future__ import annotations

from payments_core.adapters.postgres import archive, repository
from payments_core.adapters.postgres.db import Database
from payments_core.adapters.services import Services
from payments_core.adapters.stripe_api.stripe_gateway import IntentSnapshot
from payments_core.domain.contracts import (
    INVALID_AMOUNT,
    PAYMENT_NOT_CAPTURABLE,
    PAYMENT_NOT_FOUND,
    PAYMENT_PROCESSING,
    PAYMENT_REQUIRES_ACTION,
    Command,
    ReleasePayment,
)
from payments_core.domain.errors import Rejection
from payments_core.domain.events import PaymentFailed
from payments_core.domain.payment import Payment, PaymentStatus
from payments_core.observability import count, logger
from payments_core.usecases import lifecycle, order_holds, payouts

S = PaymentStatus


def release(services: Services, command: Command) -> str:
    body = command.body
    assert isinstance(body, ReleasePayment)
    order_id = _resolve_order(services, body.order_id, body.payment_id)
    with order_holds.hold_order(services, order_id) as services:
        db = services.db
        payment = repository.get_by_order_id(db, order_id)
        cid = command.correlation_id
        if payment is None:
            archived = archive.find(db, order_id=order_id)
            if archived is None:
                raise _not_found(body.order_id, body.payment_id, cid)
            with db.transaction():  # read-only: its outcome announced again, nothing moved
                if archived.status is S.SUCCEEDED:
                    count("DuplicateCommand")
                    lifecycle.announce(db, archived, correlation_id=cid)
                else:
                    _refuse_release(db, archived, cid, None)
            return order_id
        if payment.status is S.SUCCEEDED:
            _complete_release(services, payment, body, cid)
            return order_id
        if payment.status is not S.AUTHORIZED:
            with db.transaction():
                _refuse_release(db, payment, cid, None)
            return order_id

        if body.amount_to_capture is not None and body.amount_to_capture > payment.amount_cents:
            raise Rejection(
                INVALID_AMOUNT,
                f"amount_to_capture {body.amount_to_capture} exceeds the {payment.amount_cents} held",
                order_id=payment.order_id,
                payment_id=payment.payment_id,
                correlation_id=cid,
            )
        # Before anything is recorded or captured: a refused destination leaves the hold as it
        # is and the payment AUTHORIZED (a later release naming the right account can proceed).
        _verify_destination(services, payment, body, cid)
        _record_runner(db, payment, body)
        intent = _capture(services, payment, body.amount_to_capture, cid)
        if intent.status != "succeeded":
            # The hold is gone (lapsed or canceled in Stripe): record what Stripe says. A
            # PaymentIntent that is neither held nor final (processing, requires_action) is no
            # status change of ours: answer the release anyway, the saga must never hear nothing.
            with db.transaction():
                changed = lifecycle.apply_intent(
                    db, payment, intent, correlation_id=cid, canceled_code=PAYMENT_NOT_CAPTURABLE
                )
                if not changed:
                    _refuse_release(db, payment, cid, intent.status)
            return order_id
        captured = intent.amount_received or body.amount_to_capture or payment.amount_cents
        transfer_id, transfer_failure = _pay_runner(services, payment, captured)
        with db.transaction():
            lifecycle.change_status(
                db,
                payment,
                S.SUCCEEDED,
                correlation_id=cid,
                captured_amount_cents=captured,
                transfer_id=transfer_id,
                transfer_failure=transfer_failure,
            )
        count("PaymentReleased")
        if transfer_id:
            payouts.note_velocity(services, payment.runner_connect_account_id)
        return order_id


def _capture(services: Services, payment: Payment, amount: int | None, cid: str | None) -> IntentSnapshot:
    """Capture the hold, with no read first (an AUTHORIZED payment's hold is there but in rare
    cases; after a recorded earlier capture the gateway looks first). If Stripe refuses, what
    the PaymentIntent is now decides: a hold that is gone or not capturable (lapsed, canceled,
    captured already, processing) is the caller's to report; a refused capturable hold is final."""
    try:
        return services.stripe.capture(payment, amount)
    except Rejection as exc:
        intent = services.stripe.retrieve(payment.payment_intent_id or "")
        if intent.status == "requires_capture":
            raise _refused(exc, payment, cid, "capture refused by Stripe") from exc
        return intent


def _verify_destination(services: Services, payment: Payment, body: ReleasePayment, cid: str | None) -> None:
    """Check the destination this release would pay: the runner already recorded stands (see
    _record_runner), else the one the release names."""
    payouts.verify_destination(
        services,
        payment,
        payment.runner_id or body.runner_id,
        payment.runner_connect_account_id or body.runner_connect_account_id,
        cid,
    )


def release_is_complete(payment: Payment) -> bool:
    """Captured, and the runner paid (or refused for good, or nobody to pay)."""
    return payment.status is S.SUCCEEDED and (
        payment.transfer_id is not None
        or payment.transfer_failure is not None
        or (payment.runner_id is not None and not payment.runner_connect_account_id)
    )


def _record_runner(db: Database, payment: Payment, body: ReleasePayment) -> None:
    """Write who is to be paid before anything moves at Stripe, so whoever finds the payment
    captured later (a webhook, a redelivery after a crash) knows a transfer may exist and
    finishes or finds it. The first release's runner stands."""
    columns = {
        name: value
        for name, value in (
            ("runner_id", body.runner_id),
            ("runner_connect_account_id", body.runner_connect_account_id),
        )
        if value and getattr(payment, name) is None
    }
    if columns:
        with db.transaction():
            repository.update(db, payment.payment_id, expected_status=payment.status, **columns)
        for name, value in columns.items():
            setattr(payment, name, value)


def _complete_release(services: Services, payment: Payment, body: ReleasePayment, cid: str | None) -> None:
    """A release of a captured payment: a copy of a finished release re-announces it; a release
    that stopped after its capture (a crash, a lost transfer answer; the capture then recorded
    by the webhook or the reconciler) pays the runner now, finding an earlier transfer first."""
    db = services.db
    if not release_is_complete(payment) and (
        payment.runner_id
        or payment.runner_connect_account_id
        or body.runner_id
        or body.runner_connect_account_id
    ):
        _verify_destination(services, payment, body, cid)
        _record_runner(db, payment, body)
        captured = payment.captured_amount_cents or payment.amount_cents
        transfer_id, transfer_failure = _pay_runner(services, payment, captured)
        columns = {"transfer_id": transfer_id, "transfer_failure": transfer_failure}
        with db.transaction():
            repository.update(db, payment.payment_id, expected_status=S.SUCCEEDED, **columns)
            for name, value in columns.items():
                setattr(payment, name, value)
            # The SUCCEEDED event already written (by the webhook) names no runner or transfer.
            lifecycle.announce_completed_release(db, payment, correlation_id=cid)
        count("PaymentReleased")
        if transfer_id:
            payouts.note_velocity(services, payment.runner_connect_account_id)
        return
    count("DuplicateCommand")
    with db.transaction():
        lifecycle.announce(db, payment, correlation_id=cid)


def _refuse_release(db: Database, payment: Payment, cid: str | None, intent_status: str | None) -> None:
    """Answer a release that cannot capture now (nothing held, or Stripe's PaymentIntent in a
    state that cannot be captured), with a code the saga can act on."""
    status = intent_status or payment.status.value
    code = _RELEASE_REFUSALS.get(status, PAYMENT_NOT_CAPTURABLE)
    where = f"its PaymentIntent is {intent_status}" if intent_status else f"payment is {payment.status.value}"
    lifecycle.answer(
        db,
        payment,
        "payment.failed",
        PaymentFailed(
            order_id=payment.order_id,
            payment_id=payment.payment_id,
            error=code,
            message=f"{where}, not capturable: nothing was captured",
            status=payment.status.value,
        ),
        answer_key=f"release-refused:{status}",
        correlation_id=cid,
    )
    count("CommandRejected")


# What the saga is told when a release finds the money not (yet) capturable.
_RELEASE_REFUSALS = {
    "processing": PAYMENT_PROCESSING,
    "requires_action": PAYMENT_REQUIRES_ACTION,
    S.REQUIRES_ACTION.value: PAYMENT_REQUIRES_ACTION,
    S.PENDING.value: PAYMENT_PROCESSING,
}


def _pay_runner(services: Services, payment: Payment, captured: int) -> tuple[str | None, str | None]:
    """Transfer the runner's share when a connected account is recorded: (transfer_id, failure)."""
    if not payment.runner_connect_account_id:
        return None, None
    try:
        transfer_id = services.stripe.transfer(
            payment, _transferred(services, captured), payment.runner_connect_account_id
        )
    except Rejection as exc:
        # The customer's money is captured and stays with the platform: announce the
        # release, keep the reason, and alarm so an operator pays the runner.
        failure = f"{exc.stripe_code or exc.code}: {exc.message}"[:500]
        count("TransferFailed")
        logger.error("transfer to runner failed", extra={"order_id": payment.order_id, "reason": failure})
        return None, failure
    return transfer_id, None


def _transferred(services: Services, captured: int) -> int:
    return captured - captured * services.settings.platform_fee_bps // 10_000


def _refused(exc: Rejection, payment: Payment, cid: str | None, what: str) -> Rejection:
    return Rejection(
        exc.code,
        f"{what}: {exc.message}",
        order_id=payment.order_id,
        payment_id=payment.payment_id,
        correlation_id=cid,
        stripe_code=exc.stripe_code,
    )


def _resolve_order(services: Services, order_id: str | None, payment_id: str | None) -> str:
    resolved = repository.find_order_id(services.db, order_id=order_id, payment_id=payment_id)
    if resolved is None:
        raise Rejection(PAYMENT_NOT_FOUND, "no payment for this payment_id", payment_id=payment_id)
    return resolved


def _not_found(order_id: str | None, payment_id: str | None, correlation_id: str | None) -> Rejection:
    return Rejection(
        PAYMENT_NOT_FOUND,
        "no payment for this order",
        order_id=order_id,
        payment_id=payment_id,
        correlation_id=correlation_id,
    )
