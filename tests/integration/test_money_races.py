"""Money paths under the failures of issue 12 that the fault drills do not reach: a writer that
lost its lock, Stripe objects made just before a crash, holds that appear after a payment is
final, and Stripe's real idempotency replay."""

from __future__ import annotations

import dataclasses
import json
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from conftest import RecordingStripe, authorized_payment, command, msk_event, wait_for
from payments_core.adapters.stripe_api.stripe_gateway import StripeApiGateway
from payments_core.config import get_settings
from payments_core.domain.payment import Payment
from payments_core.entrypoints.commands import handle_command_batch

pytestmark = pytest.mark.integration

NO_FAILURES = {"batchItemFailures": []}


def test_a_release_never_overwrites_a_status_that_changed_under_it(
    new_card, authorize_handler, payment_row, make_services, make_pg_connection, outbox_rows
):
    """Defect 1: the release read AUTHORIZED; while it was at Stripe, a revert that did not hold
    the order's lock (it had been lost with a dropped connection) completed. The release must
    not write SUCCEEDED over REVERTED."""
    row = authorized_payment(new_card, authorize_handler, payment_row)
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
    assert stored["status"] == "REVERTED" and stored["captured_amount_cents"] is None, "nothing overwritten"
    assert [r["event_type"] for r in outbox_rows(order_id)] == ["payment.authorized"], "nothing announced"
    # The redelivery re-reads and re-decides: the payment is final, the release is refused.
    again = handle_command_batch(msk_event(release, first_offset=1), None, make_services(stripe=stripe))
    assert again == NO_FAILURES
    assert payment_row(order_id)["status"] == "REVERTED"
    assert outbox_rows(order_id)[-1]["event_type"] == "payment.failed"


class TransferLedger:
    """Stripe's Transfers over HTTP, stateful (localstripe has none, stripe-mock forgets), so the
    real gateway's find-then-create runs: idempotency keys replayed, transfers listed by
    transfer_group, reversals recorded."""

    def __init__(self) -> None:
        self.transfers: dict[str, dict[str, Any]] = {}
        self.reversals: list[str] = []
        self.answers: dict[str, tuple[int, dict[str, Any]]] = {}
        ledger = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                url = urlsplit(self.path)
                if url.path == "/v1/transfers":
                    group = parse_qs(url.query).get("transfer_group", [""])[0]
                    found = [t for t in ledger.transfers.values() if t["transfer_group"] == group]
                    self._send(200, {"object": "list", "data": found, "has_more": False, "url": url.path})
                else:
                    self._send(200, ledger.transfers[url.path.rsplit("/", 1)[-1]])

            def do_POST(self) -> None:
                form = parse_qs(self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode())
                key = self.headers.get("Idempotency-Key") or uuid.uuid4().hex
                if key not in ledger.answers:
                    ledger.answers[key] = (200, ledger.act(self.path, form))
                self._send(*ledger.answers[key])

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        settings = dataclasses.replace(
            get_settings(),
            stripe_api_base=f"http://127.0.0.1:{self.server.server_port}",
            stripe_max_network_retries=0,
        )
        self.gateway = StripeApiGateway(settings, api_key="sk_test_ledger")

    def act(self, path: str, form: dict[str, list[str]]) -> dict[str, Any]:
        if path == "/v1/transfers":
            transfer_id = f"tr_ledger{len(self.transfers) + 1}{uuid.uuid4().hex[:8]}"
            self.transfers[transfer_id] = {
                "id": transfer_id,
                "object": "transfer",
                "amount": int(form["amount"][0]),
                "transfer_group": form["transfer_group"][0],
                "metadata": {
                    "order_id": form["metadata[order_id]"][0],
                    "payment_id": form["metadata[payment_id]"][0],
                },
                "reversed": False,
                "amount_reversed": 0,
                "reversals": {"object": "list", "data": [], "has_more": False, "url": ""},
            }
            return self.transfers[transfer_id]
        transfer_id = path.split("/")[3]
        reversal = {"id": f"trr_{transfer_id}", "object": "transfer_reversal", "transfer": transfer_id}
        transfer = self.transfers[transfer_id]
        transfer.update(reversed=True, amount_reversed=transfer["amount"])
        transfer["reversals"]["data"].append(reversal)
        self.reversals.append(transfer_id)
        return reversal

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def ledger() -> Iterator[TransferLedger]:
    made = TransferLedger()
    yield made
    made.close()


def _capture_seen_by_webhook(services: Any, row: dict[str, Any]) -> None:
    from payments_core.usecases import webhooks
    from webhook_helpers import payment_intent_event

    event = payment_intent_event(
        "captured", payment_intent_id=row["payment_intent_id"], order_id=row["order_id"], amount=1299
    )
    assert webhooks.apply_event(services, event).result == "applied"


def test_a_transfer_made_just_before_a_crash_is_found_not_repeated_and_reversed_on_revert(
    new_card, authorize_handler, payment_row, make_services, localstripe_client, ledger
):
    """Defect 2: the release transferred, then died before its commit; the webhook recorded the
    capture with no transfer. A redelivered release must not pay the runner twice, and a revert
    must take the transfer back, refunding what was captured."""
    from conftest import TransfersElsewhere

    row = authorized_payment(new_card, authorize_handler, payment_row)
    order_id = row["order_id"]
    dying = TransfersElsewhere(StripeApiGateway(get_settings()), ledger.gateway, lose_transfer_answers=1)
    release = command(
        "release_payment", order_id=order_id, runner_id="user_r", runner_connect_account_id="acct_1Qr"
    )
    assert handle_command_batch(msk_event(release, first_offset=1), None, make_services(stripe=dying))[
        "batchItemFailures"
    ], "the transfer's answer was lost: the release is re-delivered"
    assert len(ledger.transfers) == 1
    _capture_seen_by_webhook(make_services(), row)
    assert payment_row(order_id)["status"] == "SUCCEEDED" and payment_row(order_id)["transfer_id"] is None

    stripe = TransfersElsewhere(StripeApiGateway(get_settings()), ledger.gateway)
    assert (
        handle_command_batch(msk_event(release, first_offset=1), None, make_services(stripe=stripe))
        == NO_FAILURES
    )
    assert len(ledger.transfers) == 1, "the runner is paid once"
    (transfer_id,) = ledger.transfers
    assert payment_row(order_id)["transfer_id"] == transfer_id

    revert = command("revert_payment", order_id=order_id, reason="refund")
    assert (
        handle_command_batch(msk_event(revert, first_offset=2), None, make_services(stripe=stripe))
        == NO_FAILURES
    )
    assert ledger.reversals == [transfer_id], "the transfer is taken back"
    charge = localstripe_client.v1.payment_intents.retrieve(row["payment_intent_id"]).latest_charge
    assert charge["amount_refunded"] == 1299
    assert payment_row(order_id)["status"] == "REVERTED"


def test_a_crash_after_capture_before_any_row_names_the_runner_still_reverses_by_group(
    new_card, authorize_handler, payment_row, make_services, pg_connection, ledger
):
    """The transfer exists but the row lost the runner (an older release wrote it only with
    SUCCEEDED): a revert still finds the transfer by the order's transfer_group."""
    from conftest import TransfersElsewhere

    row = authorized_payment(new_card, authorize_handler, payment_row)
    order_id = row["order_id"]
    stripe = TransfersElsewhere(StripeApiGateway(get_settings()), ledger.gateway)
    release = command(
        "release_payment", order_id=order_id, runner_id="user_r", runner_connect_account_id="acct_1Qr"
    )
    assert (
        handle_command_batch(msk_event(release, first_offset=1), None, make_services(stripe=stripe))
        == NO_FAILURES
    )
    pg_connection.run("UPDATE payments SET transfer_id = NULL WHERE order_id = :o", o=order_id)
    revert = command("revert_payment", order_id=order_id, reason="refund")
    assert (
        handle_command_batch(msk_event(revert, first_offset=2), None, make_services(stripe=stripe))
        == NO_FAILURES
    )
    assert ledger.reversals == list(ledger.transfers)


def test_a_hold_that_appears_on_a_final_payment_is_canceled(
    new_card,
    authorize_handler,
    payment_row,
    make_services,
    localstripe_client,
    make_pg_connection,
    scheduler_paused,
):
    """Defect 3: the payment is already REVERTED (its revert raced a create still executing at
    Stripe) when Stripe reports the hold. The webhook cancels it instead of ignoring it. (The
    stack's scheduled audit is paused: a webhook that found the order busy during the authorize
    makes it due at once, and that audit would cancel the hold first.)"""
    from payments_core.usecases import webhooks
    from webhook_helpers import payment_intent_event

    row = authorized_payment(new_card, authorize_handler, payment_row)
    make_pg_connection().run(
        "UPDATE payments SET status = 'REVERTED', revert_reason = 'raced' WHERE order_id = :o",
        o=row["order_id"],
    )
    event = payment_intent_event(
        "authorized", payment_intent_id=row["payment_intent_id"], order_id=row["order_id"], amount=1299
    )
    webhooks.apply_event(make_services(), event)
    assert localstripe_client.v1.payment_intents.retrieve(row["payment_intent_id"]).status == "canceled"
    assert payment_row(row["order_id"])["status"] == "REVERTED"
    # Issue 16 item 6: the cancel was sent holding the order's lease (a money call is only
    # written under a live lease token), and the audit was told in the event's transaction.
    calls = make_pg_connection().run(
        "SELECT c.outcome, c.lease_token <= l.token, p.audit_due_at IS NOT NULL"
        " FROM stripe_money_calls c JOIN order_leases l USING (order_id) JOIN payments p USING (order_id)"
        " WHERE c.order_id = :o AND c.action = 'cancel'",
        o=row["order_id"],
    )
    assert calls == [["ok", True, True]], calls


def test_the_audit_cancels_holds_left_on_final_payments(
    new_card, authorize_handler, payment_row, make_services, localstripe_client, make_pg_connection
):
    """Defect 3, the sweep: no webhook came (or it was lost); the settlement audit looks at
    payments due for a check (one became final: it was scheduled then) and cancels any hold
    still on them."""
    from payments_core.usecases import reconciliation

    row = authorized_payment(new_card, authorize_handler, payment_row)
    make_pg_connection().run(
        "UPDATE payments SET status = 'FAILED', failure_code = 'STRIPE_UNEXPECTED_STATUS',"
        " audit_due_at = now() WHERE order_id = :o",
        o=row["order_id"],
    )
    services = make_services()

    def canceled() -> bool:
        # the stack's own scheduled audit may hold the order when ours looks (then it skips
        # it, and that one cancels it): either is the audit doing its job
        reconciliation.reconcile(services)
        return bool(
            localstripe_client.v1.payment_intents.retrieve(row["payment_intent_id"]).status == "canceled"
        )

    assert wait_for(canceled, timeout=30), "the hold on the FAILED payment is still on the card"
    assert payment_row(row["order_id"])["status"] == "FAILED"
