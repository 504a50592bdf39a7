"""Payment statuses and the one state machine that decides every status change, whichever
path (command, webhook, reconciler) proposes it."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any


class PaymentStatus(StrEnum):
    PENDING = "PENDING"  # row written, Stripe not (yet) answered
    REQUIRES_ACTION = "REQUIRES_ACTION"  # 3-D Secure: waiting for the customer
    AUTHORIZED = "AUTHORIZED"  # funds held (PaymentIntent requires_capture)
    SUCCEEDED = "SUCCEEDED"  # captured and released to the runner
    REVERTED = "REVERTED"  # hold canceled or capture refunded
    FAILED = "FAILED"  # never held

    @property
    def is_final(self) -> bool:
        return self in (PaymentStatus.REVERTED, PaymentStatus.FAILED)


S = PaymentStatus

# Forward moves only: a status, once left, is never re-entered, so each status is announced
# by exactly one event per payment (see event_id_for).
ALLOWED_TRANSITIONS: dict[PaymentStatus, frozenset[PaymentStatus]] = {
    S.PENDING: frozenset({S.REQUIRES_ACTION, S.AUTHORIZED, S.FAILED, S.REVERTED, S.SUCCEEDED}),
    S.REQUIRES_ACTION: frozenset({S.AUTHORIZED, S.FAILED, S.REVERTED, S.SUCCEEDED}),
    S.AUTHORIZED: frozenset({S.SUCCEEDED, S.REVERTED}),
    S.SUCCEEDED: frozenset({S.REVERTED}),
    S.REVERTED: frozenset(),
    S.FAILED: frozenset(),
}


def can_transition(current: PaymentStatus, target: PaymentStatus) -> bool:
    return target in ALLOWED_TRANSITIONS[current]


# What a PaymentIntent's own status means for us. requires_payment_method is a failure only
# after an attempt failed (it is also the status of a fresh, unconfirmed intent).
def status_from_payment_intent(pi_status: str, *, attempt_failed: bool) -> PaymentStatus | None:
    match pi_status:
        case "requires_capture":
            return S.AUTHORIZED
        case "succeeded":
            return S.SUCCEEDED
        case "canceled":
            return S.REVERTED
        case "requires_action":
            return S.REQUIRES_ACTION
        case "requires_payment_method":
            return S.FAILED if attempt_failed else None
        case _:
            return None  # processing, requires_confirmation: not a state of ours yet


_EVENT_NAMESPACE = uuid.UUID("5b1a8a4e-4b7e-4d0e-9d53-6c5f0c3c2a11")


def event_id_for(payment_id: str, announcement: str) -> str:
    """The same id every time the same state change (or answer) is announced, so consumers
    can drop duplicates and the outbox can re-queue instead of writing a second event."""
    return str(uuid.uuid5(_EVENT_NAMESPACE, f"{payment_id}:{announcement}"))


def event_id_for_rejection(raw_command: bytes, code: str) -> str:
    """A rejected command has no payment: its answer is keyed by the command's own bytes."""
    return str(uuid.uuid5(_EVENT_NAMESPACE, f"rejection:{code}:{raw_command.hex()}"))


@dataclass
class Payment:
    """A row of ``payments``."""

    payment_id: str
    order_id: str
    status: PaymentStatus
    amount_cents: int
    currency: str
    correlation_id: str | None = None
    clerk_user_id: str | None = None
    stripe_customer_id: str | None = None
    payment_method_id: str | None = None
    description: str | None = None
    return_url: str | None = None
    payment_intent_id: str | None = None
    stripe_create_attempts: int = 0
    next_action_url: str | None = None
    failure_code: str | None = None
    failure_message: str | None = None
    stripe_code: str | None = None
    decline_code: str | None = None
    runner_id: str | None = None
    runner_connect_account_id: str | None = None
    captured_amount_cents: int | None = None
    transfer_id: str | None = None
    transfer_failure: str | None = None
    refund_id: str | None = None
    transfer_reversal_id: str | None = None
    revert_reason: str | None = None
    reconciled_at: datetime | None = None
    stale_checked_at: datetime | None = None  # the reconciler's last look in this status (check_queue)
    transferred_at: datetime | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Payment:
        fields = {k: v for k, v in row.items() if k in cls.__dataclass_fields__}
        fields["payment_id"] = str(fields["payment_id"])
        fields["status"] = PaymentStatus(fields["status"])
        return cls(**fields)
