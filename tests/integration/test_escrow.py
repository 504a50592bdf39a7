"""release_payment and revert_payment on the real local stack (issue 5, Done-when 1 to 3).

PaymentIntents live in localstripe (stateful). localstripe has no Transfers, so the transfer
leg goes to stripe-mock, which validates every request as real Stripe does, through a small
recording proxy that shows the Idempotency-Key each request carried on the wire."""

from __future__ import annotations

import dataclasses
import http.client
import threading
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

import pytest
from conftest import (
    CARD_3DS,
    CARD_DECLINED_ON_CHARGE,
    RecordingStripe,
    TransfersElsewhere,
    authorize_command,
    authorized_payment,
    command,
    msk_event,
)
from payments_core.adapters.stripe_api.stripe_gateway import StripeApiGateway, idempotency_key
from payments_core.config import get_settings
from payments_core.domain.contracts import STRIPE_API_ERROR
from payments_core.domain.errors import Rejection
from payments_core.domain.payment import Payment, PaymentStatus
from payments_core.entrypoints.commands import handle_command_batch
from payments_core.usecases import webhooks

pytestmark = pytest.mark.integration

NO_FAILURES = {"batchItemFailures": []}


# --- doubles and helpers ---------------------------------------------------------------------


class RefusedTransfer(RecordingStripe):
    """Transfers refused for good (as Stripe does when the platform balance is insufficient)."""

    def transfer(self, payment: Payment, amount_cents: int, destination: str) -> str:
        self.calls["transfer"] += 1
        raise Rejection(
            STRIPE_API_ERROR,
            "You have insufficient available funds in your Stripe account.",
            stripe_code="balance_insufficient",
        )


@dataclasses.dataclass
class RecordingProxy:
    """A plain HTTP proxy on 127.0.0.1 in front of stripe-mock, recording each request."""

    base: str
    requests: list[dict[str, str]]

    def idempotency_keys(self, method: str, path_prefix: str) -> list[str]:
        return [
            r["idempotency_key"]
            for r in self.requests
            if r["method"] == method and r["path"].startswith(path_prefix)
        ]


@pytest.fixture
def stripe_mock_proxy(local_env: dict[str, str]) -> Iterator[RecordingProxy]:
    upstream = urlsplit(local_env["STRIPE_MOCK_API_BASE"])
    assert upstream.hostname == "127.0.0.1"
    recorded: list[dict[str, str]] = []

    class Handler(BaseHTTPRequestHandler):
        def _forward(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            recorded.append(
                {
                    "method": self.command,
                    "path": self.path,
                    "idempotency_key": self.headers.get("Idempotency-Key") or "",
                }
            )
            conn = http.client.HTTPConnection(upstream.hostname or "", upstream.port, timeout=10)
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
            conn.request(self.command, self.path, body=body or None, headers=headers)
            answer = conn.getresponse()
            payload = answer.read()
            self.send_response(answer.status)
            for key, value in answer.getheaders():
                if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                    self.send_header(key, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            conn.close()

        do_GET = do_POST = do_DELETE = _forward

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield RecordingProxy(f"http://127.0.0.1:{server.server_address[1]}", recorded)
    server.shutdown()
    server.server_close()


def _events(published_events: Callable, order_id: str, event_type: str, at_least: int = 1) -> list[dict]:
    return [e for e in published_events(order_id, at_least=at_least) if e["type"] == event_type]


def _outbox_types(outbox_rows: Callable, order_id: str) -> list[str]:
    return [r["event_type"] for r in outbox_rows(order_id)]


# --- 1. release against localstripe ----------------------------------------------------------


def test_release_delivered_three_times_captures_once_and_announces_one_event(
    new_card, authorize_handler, make_services, payment_row, published_events, outbox_rows, localstripe_client
):
    row = authorized_payment(new_card, authorize_handler, payment_row)
    order_id, payment_id = row["order_id"], str(row["payment_id"])
    stripe = RecordingStripe(StripeApiGateway(get_settings()))
    services = make_services(stripe=stripe)
    release = command("release_payment", payment_id=payment_id, runner_id="user_runner")

    # twice in one batch, then once more in a later batch (and by order id, the extension)
    assert handle_command_batch(msk_event(release, release, first_offset=100), None, services) == NO_FAILURES
    by_order = command("release_payment", order_id=order_id, runner_id="user_runner")
    assert handle_command_batch(msk_event(by_order, first_offset=102), None, services) == NO_FAILURES

    assert stripe.calls["capture"] == 1, "one capture reached Stripe for three deliveries"
    assert stripe.calls["transfer"] == 0, "no connected account given: nothing to transfer"
    stored = payment_row(order_id)
    assert stored["status"] == "SUCCEEDED"
    assert stored["runner_id"] == "user_runner" and stored["captured_amount_cents"] == 1299
    intent = localstripe_client.v1.payment_intents.retrieve(row["payment_intent_id"])
    assert intent.status == "succeeded"
    charge = intent.latest_charge
    assert charge["captured"] is True and charge["amount"] == 1299 and charge["amount_refunded"] == 0

    released = _events(published_events, order_id, "payment.released", at_least=3)
    assert len(released) >= 2, "each later delivery re-announces"
    assert len({e["event_id"] for e in released}) == 1, "every announcement carries one event_id"
    payload = released[0]["payload"]
    assert payload["status"] == "SUCCEEDED" and payload["amount"] == 12.99
    assert payload["amount_cents"] == 1299 and payload["payment_id"] == payment_id
    assert payload["runner_id"] == "user_runner"
    assert released[0]["correlation_id"] == release["correlation_id"]
    assert _outbox_types(outbox_rows, order_id) == ["payment.authorized", "payment.released"]


def test_release_of_a_payment_that_holds_nothing_is_refused_and_changes_nothing(
    new_card, authorize_handler, make_services, payment_row, published_events
):
    card = new_card(CARD_DECLINED_ON_CHARGE)
    cmd = authorize_command(card)
    order_id = cmd["payload"]["order_id"]
    authorize_handler(msk_event(cmd))
    assert payment_row(order_id)["status"] == "FAILED"
    stripe = RecordingStripe(StripeApiGateway(get_settings()))
    release = command("release_payment", order_id=order_id, runner_id="user_runner")
    for offset in (0, 1):
        assert (
            handle_command_batch(msk_event(release, first_offset=offset), None, make_services(stripe=stripe))
            == NO_FAILURES
        )

    assert sum(stripe.calls.values()) == 0
    assert payment_row(order_id)["status"] == "FAILED"
    refusals = [
        e
        for e in _events(published_events, order_id, "payment.failed", at_least=3)
        if e["payload"]["error"] == "PAYMENT_NOT_CAPTURABLE"
    ]
    assert refusals and len({e["event_id"] for e in refusals}) == 1


def test_release_after_the_hold_lapsed_reports_it_and_a_revert_then_completes(
    new_card, authorize_handler, make_services, payment_row, published_events, localstripe_client
):
    row = authorized_payment(new_card, authorize_handler, payment_row)
    order_id = row["order_id"]
    localstripe_client.v1.payment_intents.cancel(row["payment_intent_id"])  # Stripe let the hold lapse
    stripe = RecordingStripe(StripeApiGateway(get_settings()))
    release = command("release_payment", order_id=order_id, runner_id="user_runner")
    assert handle_command_batch(msk_event(release), None, make_services(stripe=stripe)) == NO_FAILURES
    # The capture is sent without a read first; Stripe refuses it (the hold is gone) and the
    # PaymentIntent read after the refusal decides the answer. Nothing was captured.
    assert stripe.calls["capture"] == 1 and stripe.calls["retrieve"] == 1
    intent = localstripe_client.v1.payment_intents.retrieve(row["payment_intent_id"])
    assert intent.status == "canceled" and intent.latest_charge["captured"] is False
    lapsed = payment_row(order_id)
    assert lapsed["status"] == "REVERTED" and lapsed["failure_code"] == "PAYMENT_NOT_CAPTURABLE"

    revert = command("revert_payment", order_id=order_id, reason="order cancelled")
    assert (
        handle_command_batch(msk_event(revert, first_offset=1), None, make_services(stripe=stripe))
        == NO_FAILURES
    )
    assert stripe.calls["cancel"] == 0 and stripe.calls["refund"] == 0
    events = published_events(order_id, at_least=3)
    assert [(e["type"], e["payload"].get("error") or e["payload"]["status"]) for e in events] == [
        ("payment.authorized", "AUTHORIZED"),
        ("payment.failed", "PAYMENT_NOT_CAPTURABLE"),
        ("payment.released", "REVERTED"),
    ]


def test_revert_while_waiting_for_3d_secure_cancels_the_intent(
    new_card, authorize_handler, payment_row, published_events, localstripe_client
):
    cmd = authorize_command(new_card(CARD_3DS))
    order_id = cmd["payload"]["order_id"]
    assert authorize_handler(msk_event(cmd)) == NO_FAILURES
    row = payment_row(order_id)
    assert row["status"] == "REQUIRES_ACTION"
    revert = command("revert_payment", order_id=order_id, reason="customer gave up")
    assert authorize_handler(msk_event(revert)) == NO_FAILURES
    assert payment_row(order_id)["status"] == "REVERTED"
    assert localstripe_client.v1.payment_intents.retrieve(row["payment_intent_id"]).status == "canceled"
    events = published_events(order_id, at_least=2)
    assert events[-1]["type"] == "payment.released" and events[-1]["payload"]["status"] == "REVERTED"


def test_release_of_an_unknown_payment_answers_payment_not_found(authorize_handler, published_events):
    unknown = str(uuid.uuid4())
    release = command("release_payment", payment_id=unknown, runner_id="user_runner")
    assert authorize_handler(msk_event(release)) == NO_FAILURES
    (event,) = published_events(unknown)
    assert event["type"] == "payment.failed" and event["payload"]["error"] == "PAYMENT_NOT_FOUND"
    # (a revert of an unknown order is answered REVERTED: see test_saga_http)


# --- 2. the transfer leg: stripe-mock accepts the requests, the key is stable ----------------


def test_release_requests_accepted_by_stripe_mock(stripe_mock_proxy, stripe_mock_gateway):
    gateway = stripe_mock_gateway(stripe_mock_proxy.base)
    payment = Payment(
        payment_id=str(uuid.uuid4()),
        order_id=str(uuid.uuid4()),
        status=PaymentStatus.AUTHORIZED,
        amount_cents=1299,
        currency="sgd",
        payment_intent_id="pi_1QcampusgEscrowTest",
    )
    captured = gateway.capture(payment, None)
    assert captured.id
    assert gateway.capture(payment, 1000).id, "a partial capture is a valid request too"
    payment.transfer_id = gateway.transfer(payment, 1299, "acct_1QrunnerConnect")
    assert payment.transfer_id.startswith("tr_")
    assert gateway.refund(payment, 1299).startswith("re_")
    assert gateway.reverse_transfer(payment, 1299).startswith("trr_")
    assert gateway.cancel(payment).id

    posts = [r for r in stripe_mock_proxy.requests if r["method"] == "POST"]
    assert len(posts) == 6
    assert all(r["idempotency_key"] for r in posts), "every money-moving request carries a key"
    assert stripe_mock_proxy.idempotency_keys("POST", "/v1/transfers") == [
        idempotency_key("transfer", payment),
        idempotency_key("reverse-transfer", payment),
    ]
    assert len({r["idempotency_key"] for r in posts}) == 5, "one key per action (both captures share one)"


def test_transfer_redelivered_after_a_lost_answer_carries_the_same_idempotency_key(
    new_card,
    authorize_handler,
    make_services,
    payment_row,
    published_events,
    stripe_mock_proxy,
    stripe_mock_gateway,
    localstripe_client,
):
    row = authorized_payment(new_card, authorize_handler, payment_row)
    order_id, payment_id = row["order_id"], str(row["payment_id"])
    stripe = TransfersElsewhere(
        StripeApiGateway(get_settings()),
        stripe_mock_gateway(stripe_mock_proxy.base),
        lose_transfer_answers=1,
    )
    release = command(
        "release_payment",
        payment_id=payment_id,
        runner_id="user_runner",
        runner_connect_account_id="acct_runner1",
    )

    first = handle_command_batch(msk_event(release, first_offset=7), None, make_services(stripe=stripe))
    assert first["batchItemFailures"], "the lost answer makes the record redelivered"
    assert payment_row(order_id)["status"] == "AUTHORIZED"
    for offset in (7, 8):  # the redelivery, and one more copy after success
        assert (
            handle_command_batch(msk_event(release, first_offset=offset), None, make_services(stripe=stripe))
            == NO_FAILURES
        )

    keys = stripe_mock_proxy.idempotency_keys("POST", "/v1/transfers")
    assert len(keys) == 2, "sent once, re-sent once after the lost answer, never after success"
    assert keys[0] == keys[1] == f"campusg-payments:transfer:{payment_id}"
    # The redelivery calls capture again: its earlier capture is recorded, so the gateway reads
    # the PaymentIntent first, finds it captured and sends no capture (counted on the wire in
    # test_stripe_budget.py); localstripe would refuse a second capture anyway.
    assert stripe.calls["capture"] == 2
    assert localstripe_client.v1.payment_intents.retrieve(row["payment_intent_id"]).status == "succeeded"
    stored = payment_row(order_id)
    assert stored["status"] == "SUCCEEDED" and stored["transfer_id"].startswith("tr_")
    assert stored["runner_connect_account_id"] == "acct_runner1" and stored["transfer_failure"] is None
    (released,) = {e["event_id"]: e for e in _events(published_events, order_id, "payment.released")}.values()
    assert released["payload"]["transfer_id"] == stored["transfer_id"]


def test_runner_is_paid_when_the_webhook_records_the_capture_before_the_redelivery(
    new_card,
    authorize_handler,
    make_services,
    payment_row,
    stripe_mock_proxy,
    stripe_mock_gateway,
    localstripe_client,
):
    """The transfer's answer is lost after the capture; before the release is redelivered,
    payment_intent.succeeded (sent on capture) moves the row to SUCCEEDED. The redelivered
    release must still pay the runner, not just re-announce."""
    row = authorized_payment(new_card, authorize_handler, payment_row)
    order_id, payment_id = row["order_id"], str(row["payment_id"])
    stripe = TransfersElsewhere(
        StripeApiGateway(get_settings()), stripe_mock_gateway(stripe_mock_proxy.base), lose_transfer_answers=1
    )
    release = command(
        "release_payment",
        order_id=order_id,
        runner_id="user_runner",
        runner_connect_account_id="acct_runner1",
    )
    assert handle_command_batch(msk_event(release), None, make_services(stripe=stripe))["batchItemFailures"]
    intent = localstripe_client.v1.payment_intents.retrieve(row["payment_intent_id"]).to_dict()
    event = {"id": f"evt_{uuid.uuid4().hex}", "type": "payment_intent.succeeded", "data": {"object": intent}}
    assert webhooks.apply_event(make_services(stripe=stripe), event).result == "applied"
    assert payment_row(order_id)["status"] == "SUCCEEDED"

    for offset in (1, 2):
        assert (
            handle_command_batch(msk_event(release, first_offset=offset), None, make_services(stripe=stripe))
            == NO_FAILURES
        )
    stored = payment_row(order_id)
    assert stored["transfer_id"] and stored["transfer_id"].startswith("tr_"), "the runner was never paid"
    assert stored["runner_id"] == "user_runner" and stored["runner_connect_account_id"] == "acct_runner1"
    keys = stripe_mock_proxy.idempotency_keys("POST", "/v1/transfers")
    assert keys == [f"campusg-payments:transfer:{payment_id}"] * 2, (
        "re-sent once with the same key, then never"
    )
    assert stripe.calls["capture"] == 1


def test_transfer_refused_for_good_still_releases_and_keeps_the_reason(
    new_card, authorize_handler, make_services, payment_row, published_events
):
    row = authorized_payment(new_card, authorize_handler, payment_row)
    order_id = row["order_id"]
    stripe = RefusedTransfer(StripeApiGateway(get_settings()))
    release = command(
        "release_payment",
        order_id=order_id,
        runner_id="user_runner",
        runner_connect_account_id="acct_runner1",
    )
    assert handle_command_batch(msk_event(release), None, make_services(stripe=stripe)) == NO_FAILURES
    assert (
        handle_command_batch(msk_event(release, first_offset=1), None, make_services(stripe=stripe))
        == NO_FAILURES
    )

    assert stripe.calls["capture"] == 1 and stripe.calls["transfer"] == 1
    stored = payment_row(order_id)
    assert stored["status"] == "SUCCEEDED" and stored["transfer_id"] is None
    assert stored["transfer_failure"].startswith("balance_insufficient: ")
    released = _events(published_events, order_id, "payment.released")
    assert released and {e["payload"]["status"] for e in released} == {"SUCCEEDED"}
    assert all("transfer_id" not in e["payload"] for e in released)


# --- 3. revert ---------------------------------------------------------------------------------


def test_revert_of_an_authorized_payment_cancels_the_hold_once(
    new_card, authorize_handler, make_services, payment_row, published_events, localstripe_client
):
    row = authorized_payment(new_card, authorize_handler, payment_row)
    order_id = row["order_id"]
    stripe = RecordingStripe(StripeApiGateway(get_settings()))
    revert = command("revert_payment", payment_id=str(row["payment_id"]), reason="order cancelled")
    for offset in (0, 1):
        assert (
            handle_command_batch(msk_event(revert, first_offset=offset), None, make_services(stripe=stripe))
            == NO_FAILURES
        )

    assert stripe.calls["cancel"] == 1 and stripe.calls["refund"] == 0
    stored = payment_row(order_id)
    assert stored["status"] == "REVERTED" and stored["revert_reason"] == "order cancelled"
    assert stored["failure_code"] is None and stored["refund_id"] is None
    assert localstripe_client.v1.payment_intents.retrieve(row["payment_intent_id"]).status == "canceled"
    released = _events(published_events, order_id, "payment.released", at_least=3)
    assert len(released) == 2 and len({e["event_id"] for e in released}) == 1
    assert released[0]["payload"]["status"] == "REVERTED"
    assert released[0]["payload"]["message"] == "order cancelled"


def test_revert_of_a_captured_payment_refunds_it_once(
    new_card, authorize_handler, make_services, payment_row, published_events, localstripe_client
):
    row = authorized_payment(new_card, authorize_handler, payment_row)
    order_id = row["order_id"]
    release = command("release_payment", order_id=order_id, runner_id="user_runner")
    assert authorize_handler(msk_event(release)) == NO_FAILURES
    assert payment_row(order_id)["status"] == "SUCCEEDED"

    stripe = RecordingStripe(StripeApiGateway(get_settings()))
    revert = command("revert_payment", order_id=order_id, reason="customer complaint")
    assert handle_command_batch(msk_event(revert, revert), None, make_services(stripe=stripe)) == NO_FAILURES
    assert (
        handle_command_batch(msk_event(revert, first_offset=2), None, make_services(stripe=stripe))
        == NO_FAILURES
    )

    assert stripe.calls["refund"] == 1 and stripe.calls["cancel"] == 0
    stored = payment_row(order_id)
    assert stored["status"] == "REVERTED" and stored["refund_id"].startswith("re_")
    refunds = localstripe_client.v1.refunds.list(params={"payment_intent": row["payment_intent_id"]}).data
    assert [(r.id, r.amount) for r in refunds] == [(stored["refund_id"], 1299)]
    events = published_events(order_id, at_least=4)
    statuses = [e["payload"]["status"] for e in events if e["type"] == "payment.released"]
    assert statuses[0] == "SUCCEEDED" and set(statuses[1:]) == {"REVERTED"}
    assert len({e["event_id"] for e in events if e["payload"]["status"] == "REVERTED"}) == 1


def test_revert_after_a_transfer_reverses_it_then_refunds(
    new_card,
    authorize_handler,
    make_services,
    payment_row,
    stripe_mock_proxy,
    stripe_mock_gateway,
):
    row = authorized_payment(new_card, authorize_handler, payment_row)
    order_id, payment_id = row["order_id"], str(row["payment_id"])
    stripe = TransfersElsewhere(StripeApiGateway(get_settings()), stripe_mock_gateway(stripe_mock_proxy.base))
    release = command(
        "release_payment",
        order_id=order_id,
        runner_id="user_runner",
        runner_connect_account_id="acct_runner1",
    )
    revert = command("revert_payment", order_id=order_id, reason="order disputed")
    assert handle_command_batch(msk_event(release), None, make_services(stripe=stripe)) == NO_FAILURES
    for offset in (1, 2):
        assert (
            handle_command_batch(msk_event(revert, first_offset=offset), None, make_services(stripe=stripe))
            == NO_FAILURES
        )

    assert stripe.calls["reverse_transfer"] == 1 and stripe.calls["refund"] == 1
    stored = payment_row(order_id)
    assert stored["status"] == "REVERTED"
    assert stored["transfer_reversal_id"].startswith("trr_") and stored["refund_id"].startswith("re_")
    reversal_keys = stripe_mock_proxy.idempotency_keys(
        "POST", f"/v1/transfers/{stored['transfer_id']}/reversals"
    )
    assert reversal_keys == [f"campusg-payments:reverse-transfer:{payment_id}"]


def test_revert_of_a_failed_payment_answers_reverted_without_calling_stripe(
    new_card, make_services, payment_row, published_events
):
    card = new_card(CARD_DECLINED_ON_CHARGE)
    cmd = authorize_command(card)
    order_id = cmd["payload"]["order_id"]
    assert handle_command_batch(msk_event(cmd), None, make_services()) == NO_FAILURES
    assert payment_row(order_id)["status"] == "FAILED"

    stripe = RecordingStripe(StripeApiGateway(get_settings()))
    revert = command("revert_payment", order_id=order_id, reason="order cancelled")
    for offset in (1, 2):
        assert (
            handle_command_batch(msk_event(revert, first_offset=offset), None, make_services(stripe=stripe))
            == NO_FAILURES
        )

    assert sum(stripe.calls.values()) == 0, "nothing is held: Stripe is not called"
    assert payment_row(order_id)["status"] == "FAILED"
    released = _events(published_events, order_id, "payment.released", at_least=3)
    assert len(released) == 2 and len({e["event_id"] for e in released}) == 1
    assert released[0]["payload"]["status"] == "REVERTED"
    assert released[0]["correlation_id"] == revert["correlation_id"]
