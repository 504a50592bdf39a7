"""The wire contract with the campusG saga, event side: the events we publish and their envelope.

Amounts travel in currency units as well as cents (the original service's field), converted
exactly; ``event_envelope`` is the one place an event's envelope is made.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Literal

from payments_core.domain.contracts import SOURCE, WireModel

ZERO_DECIMAL_CURRENCIES = frozenset(
    {
        "bif",
        "clp",
        "djf",
        "gnf",
        "jpy",
        "kmf",
        "krw",
        "mga",
        "pyg",
        "rwf",
        "ugx",
        "vnd",
        "vuv",
        "xaf",
        "xof",
        "xpf",
    }
)


def units_exact(amount_cents: int, currency: str) -> Decimal:
    """Currency units from integer minor units, exactly."""
    if currency.lower() in ZERO_DECIMAL_CURRENCIES:
        return Decimal(amount_cents)
    return Decimal(amount_cents) / Decimal(100)


def amount_in_units(amount_cents: int, currency: str) -> float:
    """Currency units from integer minor units, through Decimal so 1999 reads 19.99 exactly."""
    return float(units_exact(amount_cents, currency))


class PaymentAuthorized(WireModel):
    payment_id: str
    order_id: str
    payment_intent_id: str
    status: Literal["AUTHORIZED"] = "AUTHORIZED"
    amount_cents: int | None = None
    currency: str | None = None


class PaymentRequiresAction(WireModel):
    payment_id: str
    order_id: str
    payment_intent_id: str
    status: Literal["REQUIRES_ACTION"] = "REQUIRES_ACTION"
    next_action_url: str | None = None


class PaymentFailed(WireModel):
    order_id: str | None = None
    payment_id: str | None = None
    error: str
    message: str
    stripe_code: str | None = None
    decline_code: str | None = None
    status: str | None = None


class PaymentReleased(WireModel):
    payment_id: str | None = None  # None only when a revert named an order that has no payment
    order_id: str | None = None  # None only when a revert named a payment id that does not exist
    status: Literal["SUCCEEDED", "REVERTED"]
    runner_id: str | None = None
    amount: float | None = None
    amount_cents: int | None = None
    currency: str | None = None
    transfer_id: str | None = None
    message: str | None = None


EVENT_MODELS: dict[str, type[WireModel]] = {
    "payment.authorized": PaymentAuthorized,
    "payment.requires_action": PaymentRequiresAction,
    "payment.failed": PaymentFailed,
    "payment.released": PaymentReleased,
}


def utc_now_iso() -> str:
    return datetime.now(UTC).isoformat()


def event_envelope(
    event_type: str, payload: WireModel, *, event_id: str, correlation_id: str | None
) -> dict[str, Any]:
    return {
        "type": event_type,
        "event_id": event_id,
        "source": SOURCE,
        "correlation_id": correlation_id,
        "timestamp": utc_now_iso(),
        "payload": payload.model_dump(mode="json", exclude_none=True),
    }
