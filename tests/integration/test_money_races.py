"""Money paths under the failures of issue 12 that the fault drills do not reach: a writer that
lost its lock, Stripe objects made just before a crash, holds that appear after a payment is
final, and Stripe's real idempotency replay."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import RecordingStripe, authorize_command, command, msk_event
from payments_core.commands import handle_command_batch
from payments_core.config import get_settings
from payments_core.domain import Payment
from payments_core.stripe_gateway import StripeApiGateway

pytestmark = pytest.mark.integration

NO_FAILURES = {"batchItemFailures": []}


def _authorized(new_card, authorize_handler, payment_row) -> dict[str, Any]:
    cmd = authorize_command(new_card(), amount=1299)
    assert authorize_handler(msk_event(cmd)) == NO_FAILURES
    row = payment_row(cmd["payload"]["order_id"])
    assert row["status"] == "AUTHORIZED"
    return row


def test_a_release_never_overwrites_a_status_that_changed_under_it(
    new_card, authorize_handler, payment_row, make_services, make_pg_connection, outbox_rows
):
    """Defect 1: the release read AUTHORIZED; while it was at Stripe, a revert that did not hold
    the order's lock (it had been lost with a dropped connection) completed. The release must
    not write SUCCEEDED over REVERTED."""
    row = _authorized(new_card, authorize_handler, payment_row)
    order_id = row["order_id"]
    other = make_pg_connection()

    class RevertWhileCapturing(RecordingStripe):
        def capture(self, payment: Payment, amount_to_capture: int | None) -> Any:
            other.run(
                "UPDATE payments SET status = 'REVERTED', revert_reason = 'raced' WHERE order_id = :o",
                o=order_id,
            )
            return self.inner.capture(payment, amount_to_capture)

    stripe = RevertWhileCapturing(StripeApiGateway(get_settings()))
    release = command("release_payment", order_id=order_id, runner_id="user_runner")
    result = handle_command_batch(msk_event(release, first_offset=1), None, make_services(stripe=stripe))
    assert result["batchItemFailures"], "the lost race is transient: the release is re-delivered"
    stored = payment_row(order_id)
    assert stored["status"] == "REVERTED" and stored["runner_id"] is None, "nothing overwritten"
    assert [r["event_type"] for r in outbox_rows(order_id)] == ["payment.authorized"], "nothing announced"
    # The redelivery re-reads and re-decides: the payment is final, the release is refused.
    again = handle_command_batch(msk_event(release, first_offset=1), None, make_services(stripe=stripe))
    assert again == NO_FAILURES
    assert payment_row(order_id)["status"] == "REVERTED"
    assert outbox_rows(order_id)[-1]["event_type"] == "payment.failed"
