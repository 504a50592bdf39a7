"""The authorize function on the real local stack (issue 3's Done-when list)."""

from __future__ import annotations

import dataclasses
import json
import threading
import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from conftest import (
    CARD_3DS,
    CARD_DECLINED_ON_CHARGE,
    authorize_command,
    command,
    msk_event,
)
from payments_core.adapters.kafka.kafka_gateway import KafkaEventPublisher
from payments_core.adapters.postgres import outbox
from payments_core.adapters.postgres.db import Database
from payments_core.adapters.stripe_api.stripe_gateway import StripeApiGateway
from payments_core.config import get_settings
from payments_core.entrypoints.commands import handle_command_batch

pytestmark = pytest.mark.integration


def test_command_through_kafka_yields_payment_authorized(
    new_card, make_producer, published_events, payment_row, intents_for_order, local_stack
):
    """A command in the contract's exact shape, produced to payment_commands with no key (as the
    saga sends it), comes back as payment.authorized through the local event source mapping."""
    from local.stack import control as stack

    if not stack.is_running("event-source"):
        pytest.fail("the local event-source mapping is not running: run `make local-up`", pytrace=False)
    card = new_card()
    cmd = authorize_command(card)
    order_id = cmd["payload"]["order_id"]
    producer = make_producer()
    producer.send("payment_commands", value=json.dumps(cmd).encode()).get(timeout=10)

    events = published_events(order_id, at_least=1, timeout=30)
    assert [e["type"] for e in events] == ["payment.authorized"]
    event = events[0]
    assert event["correlation_id"] == cmd["correlation_id"]
    assert event["source"] == "payment-service"
    assert event["payload"]["order_id"] == order_id and event["payload"]["status"] == "AUTHORIZED"
    assert event["timestamp"].endswith("+00:00")
    row = payment_row(order_id)
    assert row["status"] == "AUTHORIZED" and row["amount_cents"] == 1299 and row["currency"] == "sgd"
    assert event["payload"]["payment_id"] == str(row["payment_id"])
    (intent,) = intents_for_order(card, order_id)
    assert intent.status == "requires_capture" and intent.capture_method == "manual"
    assert intent.id == row["payment_intent_id"] == event["payload"]["payment_intent_id"]


def test_duplicates_in_one_batch_later_batches_and_concurrent_invocations_hold_once(
    new_card,
    authorize_handler,
    make_services,
    payment_row,
    intents_for_order,
    published_events,
    pg_connection,
):
    card = new_card()
    cmd = authorize_command(card)
    order_id = cmd["payload"]["order_id"]

    # three copies in one batch, then again in a later batch
    assert authorize_handler(msk_event(cmd, cmd, cmd, first_offset=10)) == {"batchItemFailures": []}
    assert authorize_handler(msk_event(cmd, first_offset=20)) == {"batchItemFailures": []}

    # two concurrent invocations (separate containers: separate connections) of a second order
    cmd2 = authorize_command(card)
    order2 = cmd2["payload"]["order_id"]
    results: list[Any] = []
    barrier = threading.Barrier(2)

    def invoke() -> None:
        services = make_services()
        barrier.wait()
        results.append(handle_command_batch(msk_event(cmd2, first_offset=30), None, services))

    threads = [threading.Thread(target=invoke) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert results == [{"batchItemFailures": []}] * 2

    for oid in (order_id, order2):
        assert len(intents_for_order(card, oid)) == 1, "exactly one hold per order"
        assert pg_connection.run("SELECT count(*) FROM payments WHERE order_id = :o", o=oid) == [[1]]
        assert payment_row(oid)["status"] == "AUTHORIZED"
        events = published_events(oid, at_least=1)
        assert {e["type"] for e in events} == {"payment.authorized"}, "no contradicting events"
        assert len({e["event_id"] for e in events}) == 1, "re-announcements carry the same event_id"


def test_finished_payment_is_never_reset_by_a_redelivered_authorize(
    new_card, authorize_handler, payment_row, command_of
):
    card = new_card()
    cmd = authorize_command(card)
    order_id = cmd["payload"]["order_id"]
    authorize_handler(msk_event(cmd))
    authorize_handler(msk_event(command_of("revert_payment", order_id=order_id, reason="order cancelled")))
    assert payment_row(order_id)["status"] == "REVERTED"
    authorize_handler(msk_event(cmd))
    assert payment_row(order_id)["status"] == "REVERTED"


@pytest.fixture
def command_of() -> Callable[..., dict]:
    return command


def test_declined_card_fails_with_order_id_and_codes(
    new_card, authorize_handler, published_events, payment_row
):
    card = new_card(CARD_DECLINED_ON_CHARGE)
    cmd = authorize_command(card)
    order_id = cmd["payload"]["order_id"]
    assert authorize_handler(msk_event(cmd)) == {"batchItemFailures": []}
    (event,) = published_events(order_id)
    assert event["type"] == "payment.failed"
    assert event["payload"]["order_id"] == order_id
    assert event["payload"]["error"] == "STRIPE_CARD_ERROR"
    assert event["payload"]["stripe_code"] == "card_declined"
    assert event["correlation_id"] == cmd["correlation_id"]
    assert payment_row(order_id)["status"] == "FAILED"


def test_three_d_secure_card_requires_action(
    new_card, authorize_handler, published_events, payment_row, intents_for_order
):
    card = new_card(CARD_3DS)
    cmd = authorize_command(card)
    order_id = cmd["payload"]["order_id"]
    assert authorize_handler(msk_event(cmd)) == {"batchItemFailures": []}
    (event,) = published_events(order_id)
    assert event["type"] == "payment.requires_action"
    assert payment_row(order_id)["status"] == "REQUIRES_ACTION"
    (intent,) = intents_for_order(card, order_id)
    assert intent.status == "requires_action"


def test_bad_records_are_answered_or_dead_lettered_and_valid_ones_processed(
    new_card, authorize_handler, published_events, payment_row, dead_letters
):
    card = new_card()
    valid = authorize_command(card)
    marker = uuid.uuid4().hex
    not_json = f"not json {marker}".encode()
    unknown = command("refund_everything", order_id=str(uuid.uuid4()))
    low_amount = authorize_command(card, amount=49)
    float_amount = authorize_command(card, amount=12.99)
    missing_customer = authorize_command(card)
    del missing_customer["payload"]["customer"]
    no_order = command("authorize_payment", note=marker)

    response = authorize_handler(
        msk_event(
            not_json, unknown, valid, low_amount, float_amount, missing_customer, no_order, first_offset=40
        )
    )
    assert response == {"batchItemFailures": []}

    assert payment_row(valid["payload"]["order_id"])["status"] == "AUTHORIZED"
    expectations = [
        (unknown, "UNKNOWN_COMMAND"),
        (low_amount, "INVALID_AMOUNT"),
        (float_amount, "INVALID_AMOUNT"),
        (missing_customer, "INVALID_PAYLOAD"),
    ]
    for bad, code in expectations:
        order_id = bad["payload"]["order_id"]
        (event,) = published_events(order_id, settle=0.2)
        assert event["type"] == "payment.failed"
        assert event["payload"] == {**event["payload"], "order_id": order_id, "error": code}
        assert payment_row(order_id) is None, "a rejected command stores nothing"
    lettered = dead_letters(lambda m: marker.encode() in (m.value or b""))
    assert len(lettered) == 2, "both unattributable records are in the dead-letter topic"
    reasons = {dict(m.headers)["dead_letter_reason"].decode() for m in lettered}
    assert any("not JSON" in r for r in reasons) and any("INVALID_PAYLOAD" in r for r in reasons)


class _RecordingStripe:
    """The real gateway, counting the calls that would reach Stripe."""

    def __init__(self, inner: StripeApiGateway) -> None:
        self.inner = inner
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.inner, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls.append(name)
            return method(*args, **kwargs)

        return call


def test_database_down_fails_records_without_calling_stripe_then_recovers(
    new_card, make_services, payment_row, intents_for_order
):
    settings = get_settings()
    card = new_card()
    cmd = authorize_command(card)
    order_id = cmd["payload"]["order_id"]
    event = msk_event(authorize_command(new_card()), cmd, partition=2, first_offset=7)

    stripe = _RecordingStripe(StripeApiGateway(settings))
    unreachable = Database(
        settings, user="payments", password="x", host="127.0.0.1", port=1, database="payments"
    )
    down = make_services(db=unreachable, stripe=stripe)
    response = handle_command_batch(event, None, down)
    assert response == {
        "batchItemFailures": [
            {"itemIdentifier": {"partition": "payment_commands-2", "offset": 7}},
            {"itemIdentifier": {"partition": "payment_commands-2", "offset": 8}},
        ]
    }
    assert stripe.calls == [], "Stripe is not called while the database is unreachable"
    assert payment_row(order_id) is None

    up = make_services(stripe=stripe)
    assert handle_command_batch(event, None, up) == {"batchItemFailures": []}
    assert payment_row(order_id)["status"] == "AUTHORIZED"
    assert len(intents_for_order(card, order_id)) == 1


def test_kafka_down_after_commit_keeps_event_in_outbox_until_relayed(
    new_card, make_services, outbox_rows, published_events, payment_row, scheduler_paused
):
    settings = get_settings()
    card = new_card()
    cmd = authorize_command(card)
    order_id = cmd["payload"]["order_id"]
    dead_broker = KafkaEventPublisher(
        dataclasses.replace(settings, kafka_bootstrap_servers="127.0.0.1:1", kafka_send_timeout_seconds=1)
    )
    services = make_services(publisher=dead_broker)
    assert handle_command_batch(msk_event(cmd), None, services) == {"batchItemFailures": []}
    assert payment_row(order_id)["status"] == "AUTHORIZED"
    (row,) = outbox_rows(order_id)
    assert row["event_type"] == "payment.authorized"
    assert row["published_at"] is None, "the event waits in the outbox"
    assert row["attempts"] >= 1 and row["last_error"], "the failed publish is recorded"
    assert published_events(order_id, at_least=1, timeout=2, settle=0) == []

    live = make_services()
    outbox.relay(live.db, live.publisher)
    (row,) = outbox_rows(order_id)
    assert row["published_at"] is not None
    events = published_events(order_id)
    assert [e["event_id"] for e in events] == [row["event_id"]]


class _SavesFirstAnswerStripe(BaseHTTPRequestHandler):
    """A Stripe double as strict as Stripe about idempotency: the first answer for a key is
    saved and replayed, a 500 included. The first PaymentIntent create answers 500 (after
    which Stripe created nothing); the list endpoint shows what was created."""

    answers: dict[str, tuple[int, dict]] = {}
    keys_seen: list[str] = []
    fail_next = True

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:  # the lookup of an earlier attempt's PaymentIntent
        created = [body for status, body in type(self).answers.values() if status == 200]
        self._send(200, {"object": "list", "data": created, "has_more": False, "url": "/v1/payment_intents"})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        cls = type(self)
        key = self.headers.get("Idempotency-Key") or ""
        cls.keys_seen.append(key)
        if key not in cls.answers:
            if cls.fail_next:
                cls.fail_next = False
                cls.answers[key] = (500, {"error": {"type": "api_error", "message": "simulated outage"}})
            else:
                cls.answers[key] = (
                    200,
                    {
                        "id": f"pi_double_{uuid.uuid4().hex[:14]}",
                        "object": "payment_intent",
                        "status": "requires_capture",
                        "amount": 1299,
                        "amount_capturable": 1299,
                        "metadata": {},
                    },
                )
        self._send(*cls.answers[key])

    def _send(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def test_a_saved_stripe_500_is_looked_up_then_retried_with_the_next_key(make_services, payment_row):
    """Issue 12, defect 4: Stripe replays a 500 for its key for a day. The create looks up what
    the attempt did (nothing) and moves on to the next key; a redelivery replays the saved
    answers and finds the hold instead of making a second one."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _SavesFirstAnswerStripe)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        settings = dataclasses.replace(
            get_settings(),
            stripe_api_base=f"http://127.0.0.1:{server.server_port}",
            stripe_max_network_retries=0,
        )
        services = make_services(stripe=StripeApiGateway(settings, api_key="sk_test_double"))
        cmd = authorize_command(_card_placeholder())
        order_id = cmd["payload"]["order_id"]
        event = msk_event(cmd, first_offset=3)

        assert handle_command_batch(event, None, services) == {"batchItemFailures": []}
        assert payment_row(order_id)["status"] == "AUTHORIZED"
        creates = [k for k in _SavesFirstAnswerStripe.keys_seen if order_id in k]
        assert creates == [
            f"campusg-payments:authorize:{order_id}",
            f"campusg-payments:authorize:{order_id}:1",
        ]
        holds = [a for a in _SavesFirstAnswerStripe.answers.values() if a[0] == 200]
        assert len(holds) == 1, "one hold"
    finally:
        server.shutdown()


def _card_placeholder() -> Any:
    from conftest import Card

    return Card("cus_double", "pm_double")
