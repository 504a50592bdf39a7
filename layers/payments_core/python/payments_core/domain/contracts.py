"""The wire contract with the campusG saga, command side: error codes, limits, command models.

What every message of the contract is made of, with nothing about reading a record
(``command_parsing``) or writing an event (``events``): the models here are the single source
the JSON schemas (tools/schemas.py) and the HTTP request bodies are generated from. Unknown keys
are ignored, as the contract asks.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictInt,
    field_validator,
    model_validator,
)

SOURCE = "payment-service"

# Error codes: the original service's, plus extensions.
PAYLOAD_PARSE_ERROR = "PAYLOAD_PARSE_ERROR"
PAYLOAD_TOO_LARGE = "PAYLOAD_TOO_LARGE"  # extension: a dead-letter reason, never announced
INVALID_PAYLOAD = "INVALID_PAYLOAD"
INVALID_AMOUNT = "INVALID_AMOUNT"
UNKNOWN_COMMAND = "UNKNOWN_COMMAND"  # extension
STRIPE_CARD_ERROR = "STRIPE_CARD_ERROR"
STRIPE_API_ERROR = "STRIPE_API_ERROR"
STRIPE_UNEXPECTED_STATUS = "STRIPE_UNEXPECTED_STATUS"
STRIPE_PAYMENT_FAILED = "STRIPE_PAYMENT_FAILED"
STRIPE_PAYMENT_CANCELED = "STRIPE_PAYMENT_CANCELED"
PAYMENT_NOT_FOUND = "PAYMENT_NOT_FOUND"  # extension
PAYMENT_NOT_CAPTURABLE = "PAYMENT_NOT_CAPTURABLE"  # extension
PAYMENT_PROCESSING = "PAYMENT_PROCESSING"  # extension: release before Stripe finished the authorization
PAYMENT_REQUIRES_ACTION = "PAYMENT_REQUIRES_ACTION"  # extension: release while 3-D Secure is pending
AUTHORIZATION_EXPIRED = "AUTHORIZATION_EXPIRED"  # extension
AUTHENTICATION_FAILED = "AUTHENTICATION_FAILED"  # extension: 3-D Secure never completed
REVERT_FAILED = "REVERT_FAILED"  # extension: Stripe refused the cancel or refund; money not yet given back
ORDER_REVERTED = "ORDER_REVERTED"  # extension: the order was reverted before it was authorized
RETURN_URL_NOT_ALLOWED = "RETURN_URL_NOT_ALLOWED"  # extension: return_url not on RETURN_URL_ORIGINS
# extension: the release names a payout destination campusG's records and Stripe do not confirm
PAYOUT_DESTINATION_REFUSED = "PAYOUT_DESTINATION_REFUSED"

NonEmpty = Annotated[str, Field(min_length=1, max_length=255)]

# What PostgreSQL (and Stripe) would refuse must be refused here, as a permanent answer: a
# value that passes validation and fails at the database would be retried as transient and
# stall its partition. bigint holds the cents; Stripe's own ceiling is far lower (8 digits).
MAX_AMOUNT_CENTS = 99_999_999


def whole_number(value: Any) -> Any:
    """438.0 is 438: JSON Schema's "integer" is any number with a zero fractional part, and the
    saga's JavaScript may write one. A bool, a string or 438.5 is still refused (StrictInt)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


# An amount in cents, on Kafka and over HTTP alike (the bounds sit before the validator, where
# pydantic writes them into the schema).
WholeCents = Annotated[StrictInt, Field(gt=0, le=MAX_AMOUNT_CENTS), BeforeValidator(whole_number)]
REVERT_REASON_MAX_LENGTH = 1000


# The base of every message, command or event: unknown keys ignored, fields by name or alias.
# (No docstring: pydantic would put it in the description of every schema without its own.)
class WireModel(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class StripeCard(WireModel):
    payment_method_id: NonEmpty


class Customer(WireModel):
    clerk_user_id: str | None = Field(default=None, alias="clerkUserId", max_length=255)
    stripe_customer_id: NonEmpty = Field(alias="stripeCustomerId")
    user_stripe_card: StripeCard = Field(alias="userStripeCard")


class Order(WireModel):
    amount: StrictInt = Field(
        le=MAX_AMOUNT_CENTS, description="Integer number of cents (at least 50, at most 99999999)"
    )
    description: str | None = Field(default=None, max_length=1000)
    currency: str | None = Field(default=None, description="Extension: ISO 4217 code, lower case")

    @field_validator("currency")
    @classmethod
    def _currency(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[a-z]{3}", value):
            raise ValueError("currency must be a lower-case ISO 4217 code such as 'sgd'")
        return value


class AuthorizePayment(WireModel):
    order_id: NonEmpty
    customer: Customer
    order: Order
    return_url: str | None = Field(
        default=None,
        max_length=2000,
        description="An http(s) URL on one of the configured origins (RETURN_URL_ORIGINS); refused otherwise",
    )


class _ByPaymentOrOrder(WireModel):
    payment_id: str | None = Field(default=None, max_length=255)
    order_id: str | None = Field(default=None, max_length=255, description="Extension: instead of payment_id")

    @model_validator(mode="after")
    def _one_reference(self) -> _ByPaymentOrOrder:
        if not self.payment_id and not self.order_id:
            raise ValueError("payment_id or order_id is required")
        return self


class ReleasePayment(_ByPaymentOrOrder):
    runner_id: str | None = Field(default=None, max_length=255)
    runner_connect_account_id: str | None = Field(default=None, max_length=255)
    amount_to_capture: WholeCents | None = Field(
        default=None, description="Extension: partial capture, cents"
    )


class RevertPayment(_ByPaymentOrOrder):
    reason: str | None = Field(
        default=None, description=f"Cut to {REVERT_REASON_MAX_LENGTH} characters, never refused"
    )

    @field_validator("reason", mode="before")
    @classmethod
    def _cut_reason(cls, value: Any) -> Any:
        # Refusing a compensation for a long reason would leave the hold on the card.
        if isinstance(value, str) and len(value) > REVERT_REASON_MAX_LENGTH:
            return value[:REVERT_REASON_MAX_LENGTH]
        return value


COMMAND_MODELS: dict[str, type[WireModel]] = {
    "authorize_payment": AuthorizePayment,
    "release_payment": ReleasePayment,
    "revert_payment": RevertPayment,
}


class CommandEnvelope(WireModel):
    type: NonEmpty
    correlation_id: str | None = Field(default=None, max_length=255)
    timestamp: str | None = None
    payload: dict[str, Any]


class Command(BaseModel):
    """A parsed, valid command."""

    type: str
    correlation_id: str | None
    body: AuthorizePayment | ReleasePayment | RevertPayment
    raw: bytes

    @property
    def order_id(self) -> str | None:
        return self.body.order_id
