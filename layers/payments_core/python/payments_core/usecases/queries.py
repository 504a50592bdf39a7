"""The read side of the HTTP API: the contract's JSON shapes for a stored payment.

The complete-order saga reads these answers, so the keys are the contract's, camelCase, and
``amount`` is in currency units computed from integer cents (1999 reads 19.99, never 19.98).
Extensions sit beside the contract's keys; the saga ignores what it does not know.
The models double as the OpenAPI document's response schemas."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from http import HTTPStatus
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from payments_core.adapters.postgres import archive, repository
from payments_core.adapters.postgres.db import Database
from payments_core.domain.contracts import amount_in_units, units_exact
from payments_core.domain.payment import Payment

NOT_FOUND = "NOT_FOUND"
INVALID_REQUEST = "INVALID_REQUEST"
SERVICE_UNAVAILABLE = "SERVICE_UNAVAILABLE"

# An order id in a URL: what the saga sends (UUIDs) and other sane identifiers, nothing that
# needs escaping. The command path accepts up to 255 characters, so the query path does too.
ORDER_ID_PATTERN = r"^[A-Za-z0-9_.:@-]{1,255}$"
ID_PATTERN = ORDER_ID_PATTERN  # payment and Clerk user ids in URLs: the same safe alphabet


class _CamelModel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)


class PaymentView(_CamelModel):
    """The contract's payment object, plus extensions (amountCents, currency, failure*)."""

    payment_id: str
    order_id: str
    customer_id: str | None = Field(description="The Clerk user id")
    runner_id: str | None
    amount: float = Field(description="Currency units, e.g. 12.99")
    status: str = Field(description="AUTHORIZED, SUCCEEDED, REVERTED, FAILED (or PENDING, REQUIRES_ACTION)")
    description: str | None
    payment_intent_id: str | None
    transfer_id: str | None
    created_at: str | None = Field(description="ISO-8601, UTC")
    updated_at: str | None = Field(description="ISO-8601, UTC")
    amount_cents: int = Field(description="Extension: the amount in minor units")
    currency: str = Field(description="Extension: ISO 4217, lower case")
    failure_code: str | None = Field(description="Extension: why the payment failed or was canceled")
    failure_message: str | None = Field(description="Extension")


class PaymentAnswer(BaseModel):
    success: bool = True
    payment: PaymentView


class CurrencyTotals(_CamelModel):
    currency: str
    spent_cents: int
    earned_cents: int
    spent_count: int
    earned_count: int


class HistoryAnswer(_CamelModel):
    """The contract's history object (the frontend's profile page), plus ``byCurrency``."""

    user_id: str
    total_spent: float = Field(description="Currency units, 2 decimals: AUTHORIZED or SUCCEEDED as customer")
    total_earned: float = Field(description="Currency units, 2 decimals: SUCCEEDED as runner")
    spent_count: int
    earned_count: int
    by_currency: list[CurrencyTotals] = Field(
        description="Extension: exact totals in minor units per currency (the totals above add them up)"
    )


class ErrorAnswer(BaseModel):
    success: bool = False
    error: str
    message: str


class WebhookAnswer(BaseModel):
    received: bool = True
    result: str = Field(
        description="applied, unchanged, duplicate, ignored, unknown_payment, audit_scheduled (a transfer or "
        "refund update: the order is checked against Stripe) or deferred (the order was busy: the "
        "settlement audit applies the event's effect)"
    )


class HealthAnswer(BaseModel):
    status: str
    database: str


def payment_view(payment: Payment) -> dict[str, Any]:
    p = payment
    view = PaymentView(
        payment_id=p.payment_id,
        order_id=p.order_id,
        customer_id=p.clerk_user_id,
        runner_id=p.runner_id,
        amount=amount_in_units(p.amount_cents, p.currency),
        status=p.status.value,
        description=p.description,
        payment_intent_id=p.payment_intent_id,
        transfer_id=p.transfer_id,
        created_at=_iso_utc(p.created_at),
        updated_at=_iso_utc(p.updated_at),
        amount_cents=p.amount_cents,
        currency=p.currency,
        failure_code=p.failure_code,
        failure_message=p.failure_message,
    )
    return view.model_dump(mode="json", by_alias=True)


def error(code: str, message: str) -> dict[str, Any]:
    return ErrorAnswer(error=code, message=message).model_dump(mode="json")


def _answer(payment: Payment | None) -> tuple[int, dict[str, Any]]:
    if payment is None:
        return HTTPStatus.NOT_FOUND, error(NOT_FOUND, "Payment not found")
    return HTTPStatus.OK, {"success": True, "payment": payment_view(payment)}


def status_by_order(db: Database, order_id: str) -> tuple[int, dict[str, Any]]:
    """``GET /payment/{order_id}/status``: (HTTP status, body)."""
    return _answer(repository.get_by_order_id(db, order_id) or archive.find(db, order_id=order_id))


def details_by_payment(db: Database, payment_id: str) -> tuple[int, dict[str, Any]]:
    """``GET /payment/{payment_id}/details``: (HTTP status, body). The id is already a UUID."""
    return _answer(repository.get_by_payment_id(db, payment_id) or archive.find(db, payment_id=payment_id))


def history(db: Database, user_id: str) -> tuple[int, dict[str, Any]]:
    """``GET /history/{user_id}``: totals from integer cents, summed as Decimal (no float drift);
    an unknown user has zeros."""
    rows = [
        CurrencyTotals(
            currency=r["currency"],
            spent_cents=int(r["spent_cents"]),
            earned_cents=int(r["earned_cents"]),
            spent_count=int(r["spent_count"]),
            earned_count=int(r["earned_count"]),
        )
        for r in repository.user_totals(db, user_id)
    ]
    answer = HistoryAnswer(
        user_id=user_id,
        total_spent=_units(sum((units_exact(r.spent_cents, r.currency) for r in rows), Decimal(0))),
        total_earned=_units(sum((units_exact(r.earned_cents, r.currency) for r in rows), Decimal(0))),
        spent_count=sum(r.spent_count for r in rows),
        earned_count=sum(r.earned_count for r in rows),
        by_currency=rows,
    )
    return HTTPStatus.OK, answer.model_dump(mode="json", by_alias=True)


def _units(total: Decimal) -> float:
    return float(total.quantize(Decimal("0.01")))


def health(db: Database) -> tuple[int, dict[str, Any]]:
    """``GET /health``: up only when the database answers (every route needs it)."""
    from payments_core.domain.errors import TransientError

    try:
        db.query("SELECT 1 AS ok")
    except TransientError:
        return HTTPStatus.SERVICE_UNAVAILABLE, {"status": "degraded", "database": "unreachable"}
    return HTTPStatus.OK, {"status": "ok", "database": "ok"}


def _iso_utc(value: datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:  # timestamptz always has a zone; a naive value here means UTC
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat()
