"""The wire contract with the campusG saga: command and event models, parsing, envelopes.

Commands are validated with pydantic. Parsing never raises anything but ``Rejection`` (a
specific, announced refusal) or ``Unattributable`` (no order to announce it to: dead letter).
Unknown keys are ignored, as the contract asks.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    ValidationError,
    field_validator,
    model_validator,
)

from payments_core.domain import return_urls
from payments_core.domain.errors import Rejection

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
REVERT_REASON_MAX_LENGTH = 1000

# Caps checked before parsing. The largest command the contract allows (an authorize with
# every bounded string at its limit, about 4,300 characters, each sent as a 12-byte escaped
# surrogate pair) is about 50 KiB, and commands nest 4 levels deep (envelope, payload,
# customer, userStripeCard); the saga's commands are under 1 KiB.
MAX_COMMAND_BYTES = 64 * 1024
MAX_COMMAND_DEPTH = 32
# Python refuses to convert longer digit strings (sys.int_max_str_digits): such a number is
# read as infinity, a value every field refuses (an amount is then INVALID_AMOUNT).
_MAX_INT_DIGITS = 4300


class Unattributable(Exception):
    """A record that names no order or payment: it can only go to the dead-letter destination."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


# ---- commands ---------------------------------------------------------------------------


class StripeCard(_Model):
    payment_method_id: NonEmpty


class Customer(_Model):
    clerk_user_id: str | None = Field(default=None, alias="clerkUserId", max_length=255)
    stripe_customer_id: NonEmpty = Field(alias="stripeCustomerId")
    user_stripe_card: StripeCard = Field(alias="userStripeCard")


class Order(_Model):
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


class AuthorizePayment(_Model):
    order_id: NonEmpty
    customer: Customer
    order: Order
    return_url: str | None = Field(
        default=None,
        max_length=2000,
        description="An http(s) URL on one of the configured origins (RETURN_URL_ORIGINS); refused otherwise",
    )


class _ByPaymentOrOrder(_Model):
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
    amount_to_capture: StrictInt | None = Field(
        default=None, gt=0, le=MAX_AMOUNT_CENTS, description="Extension: partial capture, cents"
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


COMMAND_MODELS: dict[str, type[_Model]] = {
    "authorize_payment": AuthorizePayment,
    "release_payment": ReleasePayment,
    "revert_payment": RevertPayment,
}


class CommandEnvelope(_Model):
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


def parse_command(raw: bytes | None) -> Command:
    """Parse one Kafka record value. Raises Rejection (announce) or Unattributable (dead letter)."""
    document, too_deep = _load(raw)
    payload = document.get("payload")
    order_id = _reference(payload, "order_id")
    payment_id = _reference(payload, "payment_id")
    raw_correlation_id = document.get("correlation_id")
    correlation_id = (
        storable(raw_correlation_id)
        if isinstance(raw_correlation_id, str) and len(raw_correlation_id) <= 255
        else None
    )

    def reject(code: str, message: str) -> Exception:
        if order_id is None and payment_id is None:
            return Unattributable(f"{code}: {message}")
        return Rejection(
            code, message, order_id=order_id, payment_id=payment_id, correlation_id=correlation_id
        )

    if too_deep:
        raise reject(INVALID_PAYLOAD, f"the command is nested deeper than {MAX_COMMAND_DEPTH} levels")
    escape_free_text(payload)
    if has_unstorable_text(document):
        raise reject(INVALID_PAYLOAD, UNSTORABLE_TEXT_MESSAGE)
    try:
        envelope = CommandEnvelope.model_validate(document)
    except ValidationError as exc:
        raise reject(INVALID_PAYLOAD, describe_errors(exc)) from None
    model = COMMAND_MODELS.get(envelope.type)
    if model is None:
        raise reject(UNKNOWN_COMMAND, f"unknown command type {envelope.type[:100]!r}")
    try:
        body = model.model_validate(envelope.payload)
    except ValidationError as exc:
        amount_errors = [e for e in exc.errors() if tuple(e["loc"][:2]) == ("order", "amount")]
        code = INVALID_AMOUNT if amount_errors else INVALID_PAYLOAD
        raise reject(code, describe_errors(exc)) from None
    if isinstance(body, AuthorizePayment) and body.order.amount < _minimum_amount():
        raise reject(INVALID_AMOUNT, f"order.amount must be an integer of at least {_minimum_amount()} cents")
    # Stripe appends the client secret to return_url: refused before any hold is placed. An
    # empty one is sent to Stripe as none, as before.
    if isinstance(body, AuthorizePayment) and body.return_url and not _return_url_allowed(body.return_url):
        raise reject(
            RETURN_URL_NOT_ALLOWED,
            "return_url must be an http(s) URL, without user info, on one of the allowed origins",
        )
    return Command(type=envelope.type, correlation_id=envelope.correlation_id, body=body, raw=raw)  # type: ignore[arg-type]


def command_references(raw: bytes | None) -> tuple[str | None, str | None]:
    """The (order id, payment id) a record names, in their storable form; never raises. The
    batch orders records by them before parsing each one."""
    try:
        document, _ = _load(raw)
    except Unattributable:
        return None, None
    payload = document.get("payload")
    return _reference(payload, "order_id"), _reference(payload, "payment_id")


def _minimum_amount() -> int:
    from payments_core.config import get_settings

    return get_settings().minimum_amount_cents


def _return_url_allowed(url: str) -> bool:
    from payments_core.config import get_settings

    return return_urls.is_allowed(url, get_settings().return_url_origins)


def _load(raw: bytes | None) -> tuple[dict[str, Any], bool]:
    """A record's JSON object, and whether it was nested deeper than MAX_COMMAND_DEPTH (its
    deeper parts then read as null, so the order it names can still be answered).
    Raises Unattributable. Size and depth are checked on the text, before json parses it: a
    parser (or a walk over its result) that recurses must never see more than the cap."""
    if raw is None:
        raise Unattributable("record has no value")
    if len(raw) > MAX_COMMAND_BYTES:
        raise Unattributable(f"{PAYLOAD_TOO_LARGE}: {len(raw)} bytes, more than {MAX_COMMAND_BYTES}")
    try:
        # As json.loads(bytes) would read it, surrogates encoded in the bytes included: they
        # are refused, with an answer, like the escaped ones.
        text = raw.decode(json.detect_encoding(raw), "surrogatepass")
        text, too_deep = _flatten_beyond(text, MAX_COMMAND_DEPTH)
        document = json.loads(text, parse_int=_bounded_int)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise Unattributable(f"value is not JSON: {str(exc)[:200]}") from exc
    if not isinstance(document, dict):
        raise Unattributable("value is not a JSON object")
    return document, too_deep


_STRUCTURE = re.compile(r'["\[\]{}]')
_STRING_REST = re.compile(r'(?:[^"\\]|\\.)*+"', re.DOTALL)


def _bounded_int(digits: str) -> int | float:
    if len(digits) <= _MAX_INT_DIGITS:
        return int(digits)
    return float("-inf") if digits.startswith("-") else float("inf")


def _flatten_beyond(text: str, max_depth: int) -> tuple[str, bool]:
    """``text`` with every array or object nested deeper than ``max_depth`` replaced by null,
    and whether there was one. Linear, not recursive; malformed text is left to json."""
    pieces: list[str] = []
    kept_from = 0
    depth = 0
    cut_at: int | None = None
    position = 0
    while match := _STRUCTURE.search(text, position):
        char, position = match.group(), match.end()
        if char == '"':
            string_end = _STRING_REST.match(text, position)
            if string_end is None:
                break  # unterminated string: not JSON
            position = string_end.end()
        elif char in "[{":
            depth += 1
            if depth == max_depth + 1 and cut_at is None:
                cut_at = match.start()
        else:
            if depth == max_depth + 1 and cut_at is not None:
                pieces += [text[kept_from:cut_at], "null"]
                kept_from, cut_at = position, None
            depth = max(depth - 1, 0)
    if not pieces:
        return text, False
    return "".join(pieces) + text[kept_from:], True


def _reference(payload: Any, key: str) -> str | None:
    """An order or payment id the refusal can be announced under (and stored with), in its
    storable form (see ``storable``)."""
    if isinstance(payload, dict):
        value = payload.get(key)
        if isinstance(value, str) and 0 < len(value) <= 255:
            return storable(value)
    return None


# What PostgreSQL text cannot hold (NUL) and what cannot be encoded as UTF-8 at all (a lone
# UTF-16 surrogate: JSON can carry "\ud800", and json.loads joins only paired ones).
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
UNSTORABLE_TEXT_MESSAGE = (
    "text must not contain NUL characters (\\u0000) or lone UTF-16 surrogates (\\ud800-\\udfff)"
)


def storable(text: str) -> str:
    """``text`` with each NUL and lone surrogate written as its JSON escape, six ASCII
    characters (``\\u0000``, ``\\ud800``): the one form in which a refused command's order id
    is stored, used as the Kafka key and answered. Other text is returned unchanged."""
    return _UNSTORABLE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


# Free text a compensation must never be refused for: escaped like an id instead (a revert
# refused for its reason would leave the hold on the card).
FREE_TEXT_FIELDS = ("reason",)


def escape_free_text(payload: Any) -> None:
    """Write the NULs and lone surrogates of the payload's free-text fields as escapes, in place."""
    if isinstance(payload, dict):
        for name in FREE_TEXT_FIELDS:
            if isinstance(payload.get(name), str):
                payload[name] = storable(payload[name])


def has_unstorable_text(value: Any) -> bool:
    """Whether any key or string in a parsed JSON value contains a NUL or a lone surrogate.
    Iterative: the value's depth is not this function's concern."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if _UNSTORABLE.search(item):
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def describe_errors(exc: ValidationError) -> str:
    return describe_error_list(exc.errors())


def describe_error_list(errors: Sequence[Mapping[str, Any]]) -> str:
    """``field is required`` / ``field: why``, for the first five of pydantic's errors."""
    parts = []
    for error in errors[:5]:
        where = ".".join(str(p) for p in error["loc"]) or "payload"
        parts.append(f"{where} is required" if error["type"] == "missing" else f"{where}: {error['msg']}")
    return "; ".join(parts)


# ---- events -----------------------------------------------------------------------------

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


class PaymentAuthorized(_Model):
    payment_id: str
    order_id: str
    payment_intent_id: str
    status: Literal["AUTHORIZED"] = "AUTHORIZED"
    amount_cents: int | None = None
    currency: str | None = None


class PaymentRequiresAction(_Model):
    payment_id: str
    order_id: str
    payment_intent_id: str
    status: Literal["REQUIRES_ACTION"] = "REQUIRES_ACTION"
    next_action_url: str | None = None


class PaymentFailed(_Model):
    order_id: str | None = None
    payment_id: str | None = None
    error: str
    message: str
    stripe_code: str | None = None
    decline_code: str | None = None
    status: str | None = None


class PaymentReleased(_Model):
    payment_id: str | None = None  # None only when a revert named an order that has no payment
    order_id: str | None = None  # None only when a revert named a payment id that does not exist
    status: Literal["SUCCEEDED", "REVERTED"]
    runner_id: str | None = None
    amount: float | None = None
    amount_cents: int | None = None
    currency: str | None = None
    transfer_id: str | None = None
    message: str | None = None


EVENT_MODELS: dict[str, type[_Model]] = {
    "payment.authorized": PaymentAuthorized,
    "payment.requires_action": PaymentRequiresAction,
    "payment.failed": PaymentFailed,
    "payment.released": PaymentReleased,
}


def utc_now_iso() -> str:
    return datetime.now(UTC).isoformat()


def event_envelope(
    event_type: str, payload: _Model, *, event_id: str, correlation_id: str | None
) -> dict[str, Any]:
    return {
        "type": event_type,
        "event_id": event_id,
        "source": SOURCE,
        "correlation_id": correlation_id,
        "timestamp": utc_now_iso(),
        "payload": payload.model_dump(mode="json", exclude_none=True),
    }
