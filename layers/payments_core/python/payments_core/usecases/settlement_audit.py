"""The settlement audit of one order: Stripe's PaymentIntents, transfers and refunds of the
order against its row, what disagrees fixed where it safely can be, the rest reported.

An order is audited when something may have landed at Stripe that its row does not say: a money
call whose outcome was never recorded, a lease taken over, a payment that just became final, an
event we did not expect (``reconciliation`` picks them, under the order's lease). Holds are
canceled on payments that hold nothing, transfers reversed and refunds made or redone on
reverted ones; what cannot be fixed (a refund the card refused, money captured on a payment that
says nothing was taken) is counted as ``AuditUnresolved`` and looked at again later.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from payments_core.adapters.postgres import check_queue, repository
from payments_core.adapters.services import Services
from payments_core.adapters.stripe_api.stripe_gateway import IntentSnapshot
from payments_core.domain.errors import Rejection
from payments_core.domain.payment import Payment, PaymentStatus
from payments_core.observability import count, logger
from payments_core.usecases import lifecycle

S = PaymentStatus
# A PaymentIntent in one of these may still hold money by itself: a customer can still finish
# 3-D Secure, a payment can still be processing. One that requires a payment method or a
# confirmation moves no money unless we send one, which we never do after a failure.
_MAY_STILL_HOLD = frozenset({"requires_action", "processing"})
# What is canceled on a payment that holds nothing (processing cannot be canceled: waited for).
_CANCELED_WHEN_NOTHING_HELD = frozenset({"requires_capture", "requires_action"})
# Refund states that give (or will give) the money back.
_REFUND_LIVE = frozenset({"succeeded", "pending", "requires_action"})


@dataclass
class _Findings:
    fixed: list[str] = field(default_factory=list)
    unresolved: list[str] = field(default_factory=list)
    waiting: list[str] = field(default_factory=list)  # Stripe has not finished (a refund pending)


def audit(services: Services, order_id: str) -> str:
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
                payment.transfer_id = transfers[0]["id"]
                # The SUCCEEDED event already written named no transfer: the saga hears of it.
                lifecycle.announce_completed_release(
                    services.db, payment, correlation_id=payment.correlation_id
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
