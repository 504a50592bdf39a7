"""One Kafka record read into a ``Command``, or refused with the reason the saga is told.

Parsing never raises anything but ``Rejection`` (a specific, announced refusal) or
``Unattributable`` (no order to announce it to: dead letter). Size and depth are capped on the
text before JSON parses it, so a hostile record costs no more than a large valid one.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import ValidationError

from payments_core.domain import return_urls
from payments_core.domain.contracts import (
    COMMAND_MODELS,
    INVALID_AMOUNT,
    INVALID_PAYLOAD,
    PAYLOAD_TOO_LARGE,
    RETURN_URL_NOT_ALLOWED,
    UNKNOWN_COMMAND,
    AuthorizePayment,
    Command,
    CommandEnvelope,
)
from payments_core.domain.errors import Rejection
from payments_core.domain.storable_text import (
    UNSTORABLE_TEXT_MESSAGE,
    escape_free_text,
    has_unstorable_text,
    storable,
)

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


def describe_errors(exc: ValidationError) -> str:
    return describe_error_list(exc.errors())


def describe_error_list(errors: Sequence[Mapping[str, Any]]) -> str:
    """``field is required`` / ``field: why``, for the first five of pydantic's errors."""
    parts = []
    for error in errors[:5]:
        where = ".".join(str(p) for p in error["loc"]) or "payload"
        parts.append(f"{where} is required" if error["type"] == "missing" else f"{where}: {error['msg']}")
    return "; ".join(parts)
