"""Commands PostgreSQL would refuse are refused before it, as a permanent payment.failed
(issue 12, defect 5): retried as transient, they stalled their partition for hours."""

from __future__ import annotations

import pytest
from conftest import authorize_command, msk_event

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
