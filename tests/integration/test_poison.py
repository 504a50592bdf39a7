"""Poison on payment_commands (issue 16, item 4): whatever bytes arrive, the record ends
processed, refused with an answer on payment_events (whenever an order or payment id can be
read), or dead-lettered with its bytes; never a retry that stalls its partition."""

from __future__ import annotations

import json
import uuid

import pytest
from conftest import command, msk_event
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from payments_core.domain.contracts import MAX_COMMAND_BYTES, command_references

pytestmark = pytest.mark.integration

NO_FAILURES = {"batchItemFailures": []}


def _raw(document: dict) -> bytes:
    # json.dumps writes a lone surrogate as the escape "\ud800", as any JSON producer may.
    return json.dumps(document).encode()


def _only_answer(published_events, key: str) -> dict:
    (event,) = published_events(key)
    return event


@pytest.mark.parametrize("field", ["order_id", "payment_id"])
def test_a_lone_surrogate_in_an_id_is_answered_under_its_escaped_form(
    field, authorize_handler, published_events
):
    marker = uuid.uuid4().hex
    cmd = command(
        "release_payment", runner_id="r", runner_connect_account_id="acct_1", **{field: f"{marker}\ud800"}
    )
    assert authorize_handler(msk_event(_raw(cmd))) == NO_FAILURES, "refused for good, not retried"
    escaped = f"{marker}\\ud800"  # six ASCII characters for the surrogate
    event = _only_answer(published_events, escaped)
    assert event["type"] == "payment.failed" and event["payload"]["error"] == "INVALID_PAYLOAD"
    assert event["payload"][field] == escaped and event["correlation_id"] == cmd["correlation_id"]


def test_a_nul_in_the_order_id_is_answered_under_its_escaped_form(authorize_handler, published_events):
    marker = uuid.uuid4().hex
    revert = command("revert_payment", order_id=f"{marker}\u0000", reason="x")
    assert authorize_handler(msk_event(revert)) == NO_FAILURES
    event = _only_answer(published_events, f"{marker}\\u0000")
    assert event["type"] == "payment.failed" and event["payload"]["error"] == "INVALID_PAYLOAD"
    assert event["payload"]["order_id"] == f"{marker}\\u0000" and "NUL" in event["payload"]["message"]


def _odd_forms(payment_id: str) -> list[str]:
    """Forms uuid.UUID accepts and PostgreSQL's uuid input refuses."""
    return [f"urn:uuid:{payment_id}", "{" + payment_id, payment_id[:7] + "-" + payment_id[7:]]


@pytest.mark.parametrize("form", range(3))
def test_a_payment_id_only_python_reads_as_a_uuid_is_not_found(form, authorize_handler, published_events):
    payment_id = _odd_forms(str(uuid.uuid4()))[form]
    release = command(
        "release_payment", payment_id=payment_id, runner_id="r", runner_connect_account_id="acct_1"
    )
    assert authorize_handler(msk_event(release)) == NO_FAILURES, "no CAST refused and retried"
    event = _only_answer(published_events, payment_id)
    assert event["type"] == "payment.failed" and event["payload"]["error"] == "PAYMENT_NOT_FOUND"


def test_a_revert_naming_an_odd_uuid_form_is_answered_reverted(authorize_handler, published_events):
    payment_id = _odd_forms(str(uuid.uuid4()))[0]
    assert authorize_handler(msk_event(command("revert_payment", payment_id=payment_id))) == NO_FAILURES
    event = _only_answer(published_events, payment_id)
    assert event["type"] == "payment.released" and event["payload"]["status"] == "REVERTED"


def test_an_amount_of_5000_digits_is_refused_with_an_answer(authorize_handler, published_events, payment_row):
    order_id = str(uuid.uuid4())
    cmd = command("authorize_payment", order_id=order_id, order={"amount": 0})
    raw = _raw(cmd).replace(b'"amount": 0', b'"amount": ' + b"9" * 5000)
    assert authorize_handler(msk_event(raw)) == NO_FAILURES
    event = _only_answer(published_events, order_id)
    assert event["type"] == "payment.failed" and event["payload"]["error"] == "INVALID_AMOUNT"
    assert payment_row(order_id) is None


def test_a_huge_number_in_an_unknown_key_does_not_stop_the_command(authorize_handler, published_events):
    order_id = str(uuid.uuid4())
    raw = _raw(command("revert_payment", order_id=order_id, reason="x", extra=0)).replace(
        b'"extra": 0', b'"extra": -' + b"1" * 5000
    )
    assert authorize_handler(msk_event(raw)) == NO_FAILURES
    event = _only_answer(published_events, order_id)
    assert event["type"] == "payment.released" and event["payload"]["status"] == "REVERTED"


def test_a_record_nested_330_deep_is_refused_with_an_answer(authorize_handler, published_events):
    order_id = str(uuid.uuid4())
    raw = _raw(command("revert_payment", order_id=order_id, extra=0)).replace(
        b'"extra": 0', b'"extra": ' + b"[" * 330 + b"]" * 330
    )
    assert 700 < len(raw) < 1000
    assert authorize_handler(msk_event(raw)) == NO_FAILURES, "not a RecursionError retried for hours"
    event = _only_answer(published_events, order_id)
    assert event["type"] == "payment.failed" and event["payload"]["error"] == "INVALID_PAYLOAD"
    assert "nested deeper than 32" in event["payload"]["message"]


def test_a_record_over_the_size_cap_is_dead_lettered_whole(authorize_handler, dead_letters, outbox_rows):
    order_id = f"too-large-{uuid.uuid4().hex}"
    raw = _raw(command("revert_payment", order_id=order_id, reason="x" * MAX_COMMAND_BYTES))
    assert authorize_handler(msk_event(raw)) == NO_FAILURES
    (letter,) = dead_letters(lambda m: order_id.encode() in (m.value or b""))
    assert letter.value == raw
    assert dict(letter.headers)["dead_letter_reason"].startswith(b"PAYLOAD_TOO_LARGE")
    assert outbox_rows(order_id) == [], "not parsed, so not acted on"


# ---- any command, through the batch, the refusals and the database --------------------------

# Text with what breaks storage (NUL, lone surrogates) and escapes, besides anything else.
_char = st.one_of(st.characters(max_codepoint=0xFFFF), st.sampled_from(["\x00", "\ud800", "\udfff", "\\"]))
_odd_text = st.text(_char, max_size=300)
_ids = st.one_of(
    st.tuples(st.uuids(), _odd_text).map(lambda pair: pair[0].hex + pair[1]),  # unique per example
    st.uuids().map(str).flatmap(lambda u: st.sampled_from([u, u.upper(), *_odd_forms(u), "{" + u + "}"])),
    st.integers(),
    st.none(),
    st.lists(st.integers(), max_size=2),
)
_numbers = st.one_of(st.integers(), st.integers(min_value=-(10**400), max_value=10**400), st.floats())


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    command_type=st.sampled_from(["authorize_payment", "release_payment", "revert_payment", "refund"]),
    order_id=_ids,
    payment_id=_ids,
    amount=_numbers,
    reason=st.one_of(_odd_text, _numbers),
)
def test_any_command_ends_answered_or_dead_lettered(
    command_type, order_id, payment_id, amount, reason, authorize_handler, outbox_rows
):
    cmd = command(command_type, order_id=order_id, payment_id=payment_id, reason=reason)
    cmd["payload"]["order"] = {"amount": amount}
    cmd["payload"]["amount_to_capture"] = amount
    raw = json.dumps(cmd).encode()
    order_key, payment_key = command_references(raw)
    key = order_key or payment_key
    assert authorize_handler(msk_event(raw)) == NO_FAILURES, "nothing about the input is transient"
    if key is not None:  # answered, under the storable form of the id it names (ids are unique
        # per example; a replayed example is answered once: same event_id)
        answers = [json.loads(row["envelope"])["type"] for row in outbox_rows(key)]
        assert answers and set(answers) <= {"payment.failed", "payment.released"}, answers


def test_a_revert_whose_reason_holds_a_nul_or_a_lone_surrogate_is_carried_out(
    new_card, authorize_handler, payment_row
):
    """A compensation is never refused for its free text (the hold would stay on the card):
    the reason is kept with those characters escaped."""
    from conftest import authorized_payment

    row = authorized_payment(new_card, authorize_handler, payment_row)
    raw = json.dumps(
        command("revert_payment", order_id=row["order_id"], reason="bad\x00 \ud800 text")
    ).encode()
    assert authorize_handler(msk_event(raw, first_offset=7)) == {"batchItemFailures": []}
    after = payment_row(row["order_id"])
    assert after["status"] == "REVERTED"
    assert after["revert_reason"] == "bad\\u0000 \\ud800 text"
