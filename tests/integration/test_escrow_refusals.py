"""Refusals on the money paths: Stripe saying no, commands that cannot be honoured, and
commands arriving in an order the saga did not intend. None may announce an outcome the
payment does not have, and none may leave a hold behind."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import authorize_command, authorized_payment, command, msk_event
from payments_core.adapters.stripe_api.stripe_gateway import StripeApiGateway
from payments_core.config import get_settings
from payments_core.domain.contracts import STRIPE_API_ERROR
from payments_core.domain.errors import Rejection
from payments_core.entrypoints.commands import handle_command_batch
from test_escrow import NO_FAILURES, RecordingStripe

pytestmark = pytest.mark.integration


class RefusedRefund(RecordingStripe):
    def __init__(self, inner: Any, stripe_code: str) -> None:
        super().__init__(inner)
        self.stripe_code = stripe_code

    def refund(self, payment: Any, amount_cents: int | None = None) -> str:
        self.calls["refund"] += 1
        raise Rejection(STRIPE_API_ERROR, f"refund refused: {self.stripe_code}", stripe_code=self.stripe_code)


def _released(new_card, authorize_handler, payment_row) -> dict:
    row = authorized_payment(new_card, authorize_handler, payment_row)
    release = command("release_payment", order_id=row["order_id"], runner_id="user_runner")
    assert authorize_handler(msk_event(release)) == NO_FAILURES
    assert payment_row(row["order_id"])["status"] == "SUCCEEDED"
    return row


def test_refund_refused_by_stripe_is_announced_as_failed_never_as_reverted(
    new_card, authorize_handler, make_services, payment_row, published_events
):
    row = _released(new_card, authorize_handler, payment_row)
    order_id = row["order_id"]
    stripe = RefusedRefund(StripeApiGateway(get_settings()), "charge_disputed")
    revert = command("revert_payment", order_id=order_id, reason="order cancelled")
    assert handle_command_batch(msk_event(revert), None, make_services(stripe=stripe)) == NO_FAILURES

    assert stripe.calls["refund"] == 1
    assert payment_row(order_id)["status"] == "SUCCEEDED", "the money was not given back"
    events = published_events(order_id, at_least=2)
    assert [e["payload"].get("status") for e in events if e["type"] == "payment.released"] == ["SUCCEEDED"]
    (failed,) = [e for e in events if e["type"] == "payment.failed"]
    assert failed["payload"]["error"] == "REVERT_FAILED"
    assert failed["payload"]["stripe_code"] == "charge_disputed"
    assert failed["correlation_id"] == revert["correlation_id"]


def test_refund_already_made_counts_as_refunded(new_card, authorize_handler, make_services, payment_row):
    row = _released(new_card, authorize_handler, payment_row)
    stripe = RefusedRefund(StripeApiGateway(get_settings()), "charge_already_refunded")
    revert = command("revert_payment", order_id=row["order_id"], reason="order cancelled")
    assert handle_command_batch(msk_event(revert), None, make_services(stripe=stripe)) == NO_FAILURES
    assert payment_row(row["order_id"])["status"] == "REVERTED"


def test_partial_capture_above_the_hold_is_refused_before_stripe(
    new_card, authorize_handler, make_services, payment_row, published_events
):
    row = authorized_payment(new_card, authorize_handler, payment_row)
    order_id = row["order_id"]
    stripe = RecordingStripe(StripeApiGateway(get_settings()))
    release = command("release_payment", order_id=order_id, runner_id="user_runner", amount_to_capture=5000)
    assert handle_command_batch(msk_event(release), None, make_services(stripe=stripe)) == NO_FAILURES
    assert sum(stripe.calls.values()) == 0
    assert payment_row(order_id)["status"] == "AUTHORIZED"
    failed = [e for e in published_events(order_id, at_least=2) if e["type"] == "payment.failed"]
    assert [e["payload"]["error"] for e in failed] == ["INVALID_AMOUNT"]


# (a revert that overtakes its authorize: test_saga_http.test_revert_before_authorize_…)


def test_invalid_copy_of_a_command_does_not_contradict_the_payment(
    new_card, authorize_handler, payment_row, published_events
):
    row = authorized_payment(new_card, authorize_handler, payment_row)
    order_id = row["order_id"]
    broken = authorize_command(new_card(), order_id=order_id, amount=10)
    assert authorize_handler(msk_event(broken)) == NO_FAILURES
    assert payment_row(order_id)["status"] == "AUTHORIZED"
    events = published_events(order_id, at_least=2)
    assert {e["type"] for e in events} == {"payment.authorized"}
    assert len({e["event_id"] for e in events}) == 1
