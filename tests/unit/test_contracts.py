"""Command parsing: every input gets a specific answer, and nothing escapes the parser."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from payments_core.domain.command_parsing import Unattributable, parse_command
from payments_core.domain.contracts import INVALID_AMOUNT, INVALID_PAYLOAD, UNKNOWN_COMMAND, AuthorizePayment
from payments_core.domain.errors import Rejection
from payments_core.domain.events import amount_in_units

VALID = {
    "type": "authorize_payment",
    "correlation_id": "6f1c2b7e-0d7e-4a53-9a57-2f0e3f1a9b10",
    "timestamp": "2025-03-31T09:12:45.123456",
    "payload": {
        "order_id": "3b0d6c1e-8a44-4b8f-9f63-2b7c9d1f0a55",
        "customer": {
            "clerkUserId": "user_2abc",
            "stripeCustomerId": "cus_S2oxjQYZK8Z1Qy",
            "userStripeCard": {"payment_method_id": "pm_1R8xyz", "card_type": "visa", "last_four": "4242"},
        },
        "order": {"amount": 1299, "description": "Payment for order 3b0d6c1e"},
        "return_url": "https://localhost:5173/customer/history",
    },
}


def _raw(document: object) -> bytes:
    return json.dumps(document).encode()


def _with(path: tuple[str, ...], value: object) -> dict:
    document = json.loads(json.dumps(VALID))
    target = document
    for key in path[:-1]:
        target = target[key]
    if value is _DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return document


_DELETE = object()


def test_contract_example_parses_with_unknown_keys_ignored():
    command = parse_command(_raw(VALID))
    assert isinstance(command.body, AuthorizePayment)
    assert command.correlation_id == VALID["correlation_id"]
    assert command.body.order.amount == 1299
    assert command.body.customer.user_stripe_card.payment_method_id == "pm_1R8xyz"
    assert command.body.order.currency is None


@pytest.mark.parametrize(
    ("path", "value", "code"),
    [
        (("payload", "order", "amount"), 49, INVALID_AMOUNT),
        (("payload", "order", "amount"), 12.99, INVALID_AMOUNT),
        (("payload", "order", "amount"), "1299", INVALID_AMOUNT),
        (("payload", "order", "amount"), True, INVALID_AMOUNT),
        (("payload", "customer"), _DELETE, INVALID_PAYLOAD),
        (("payload", "customer", "stripeCustomerId"), "", INVALID_PAYLOAD),
        (("payload", "order", "currency"), "SGD", INVALID_PAYLOAD),
        (("type",), "charge_twice", UNKNOWN_COMMAND),
    ],
)
def test_invalid_commands_are_rejected_with_the_order_and_a_code(path, value, code):
    with pytest.raises(Rejection) as caught:
        parse_command(_raw(_with(path, value)))
    assert caught.value.code == code
    assert caught.value.order_id == VALID["payload"]["order_id"]
    assert caught.value.correlation_id == VALID["correlation_id"]


@pytest.mark.parametrize(
    "raw",
    [None, b"", b"not json", b"\xff\xfe", b"[1, 2]", _raw({"type": "authorize_payment", "payload": {}})],
)
def test_records_without_an_order_are_unattributable(raw):
    with pytest.raises(Unattributable):
        parse_command(raw)


def test_release_needs_a_payment_or_order_reference():
    with pytest.raises(Rejection) as caught:
        parse_command(
            _raw({"type": "release_payment", "payload": {"payment_id": "p", "amount_to_capture": 0}})
        )
    assert caught.value.code == INVALID_PAYLOAD and caught.value.payment_id == "p"
    command = parse_command(_raw({"type": "revert_payment", "payload": {"order_id": "o-1"}}))
    assert command.order_id == "o-1"


def _answers_specifically(raw: bytes) -> None:
    """A command, a Rejection (announced) or Unattributable (dead letter): nothing else escapes."""
    with contextlib.suppress(Rejection, Unattributable):
        assert parse_command(raw).type in ("authorize_payment", "release_payment", "revert_payment")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_arbitrary_json_never_escapes_the_parser(document):
    _answers_specifically(_raw(document))


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(["authorize_payment", "release_payment", "revert_payment", "other"]),
    st.dictionaries(
        st.sampled_from(
            ["order_id", "payment_id", "customer", "order", "runner_id", "reason", "amount_to_capture"]
        ),
        json_values,
    ),
)
def test_arbitrary_payloads_of_known_types_never_escape_the_parser(command_type, payload):
    _answers_specifically(_raw({"type": command_type, "correlation_id": "c", "payload": payload}))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_escape_the_parser(raw):
    _answers_specifically(raw)


@pytest.mark.parametrize(
    ("cents", "currency", "units"),
    [(1999, "sgd", 19.99), (1299, "usd", 12.99), (1, "sgd", 0.01), (500, "jpy", 500)],
)
def test_amounts_in_units_have_no_float_error(cents, currency, units):
    assert amount_in_units(cents, currency) == units
    assert int(19.99 * 100) == 1998  # the original service's bug this avoids


@pytest.mark.parametrize("amount", [438, 438.0])
def test_a_whole_amount_to_capture_is_read_alike_on_kafka_and_http(amount):
    """JSON's 438.0 is the integer 438 (JSON Schema says so, and the HTTP route takes it): the
    Kafka command takes it too, as 438 cents."""
    command = parse_command(
        _raw({"type": "release_payment", "payload": {"order_id": "o-1", "amount_to_capture": amount}})
    )
    assert command.body.amount_to_capture == 438 and type(command.body.amount_to_capture) is int  # type: ignore[union-attr]


@pytest.mark.parametrize("amount", [438.5, "438", True])
def test_a_fractional_or_textual_amount_to_capture_is_refused(amount):
    with pytest.raises(Rejection) as caught:
        parse_command(
            _raw({"type": "release_payment", "payload": {"order_id": "o-1", "amount_to_capture": amount}})
        )
    assert caught.value.code == INVALID_PAYLOAD and caught.value.order_id == "o-1"
