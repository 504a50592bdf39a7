"""Commands PostgreSQL would refuse are refused before it, as a permanent payment.failed
(issue 12, defect 5): retried as transient, they stalled their partition for hours."""

from __future__ import annotations

import pytest
from conftest import CARD_3DS, authorize_command, msk_event

pytestmark = pytest.mark.integration

NO_FAILURES = {"batchItemFailures": []}


def test_an_amount_beyond_stripe_and_bigint_is_refused_not_retried(
    new_card, authorize_handler, payment_row, published_events, intents_for_order
):
    card = new_card()
    cmd = authorize_command(card, amount=10**20)
    order_id = cmd["payload"]["order_id"]
    assert authorize_handler(msk_event(cmd)) == NO_FAILURES, "a permanent refusal, not a retry"
    (event,) = published_events(order_id)
    assert event["type"] == "payment.failed" and event["payload"]["error"] == "INVALID_AMOUNT"
    assert payment_row(order_id) is None and intents_for_order(card, order_id) == []


def test_a_nul_byte_is_refused_not_retried(new_card, authorize_handler, published_events):
    card = new_card()
    cmd = authorize_command(card)
    order_id = cmd["payload"]["order_id"]
    cmd["payload"]["order"]["description"] = "pizza\u0000"
    assert authorize_handler(msk_event(cmd)) == NO_FAILURES
    (event,) = published_events(order_id)
    assert event["type"] == "payment.failed" and event["payload"]["error"] == "INVALID_PAYLOAD"
    assert "NUL" in event["payload"]["message"]


@pytest.mark.parametrize(
    "return_url",
    ["https://localhost:5173@evil.example/customer/history", "https://evil.example/customer/history"],
    ids=["userinfo", "other-origin"],
)
def test_a_return_url_off_the_allowed_origins_is_refused_before_stripe(
    return_url, new_card, authorize_handler, payment_row, published_events, intents_for_order
):
    card = new_card(CARD_3DS)  # the card that would send the customer (and client secret) there
    cmd = authorize_command(card)
    order_id = cmd["payload"]["order_id"]
    cmd["payload"]["return_url"] = return_url
    assert authorize_handler(msk_event(cmd)) == NO_FAILURES, "a permanent refusal, not a retry"
    (event,) = published_events(order_id)
    assert event["type"] == "payment.failed" and event["payload"]["error"] == "RETURN_URL_NOT_ALLOWED"
    assert event["payload"]["order_id"] == order_id
    assert payment_row(order_id) is None and intents_for_order(card, order_id) == []  # nothing held


def test_the_sagas_own_return_url_still_reaches_three_d_secure(
    new_card, authorize_handler, payment_row, intents_for_order
):
    card = new_card(CARD_3DS)
    cmd = authorize_command(card)  # return_url https://localhost:5173/customer/history, as the saga sends
    assert authorize_handler(msk_event(cmd)) == NO_FAILURES
    order_id = cmd["payload"]["order_id"]
    assert payment_row(order_id)["status"] == "REQUIRES_ACTION"
    assert payment_row(order_id)["return_url"] == "https://localhost:5173/customer/history"
    assert len(intents_for_order(card, order_id)) == 1
