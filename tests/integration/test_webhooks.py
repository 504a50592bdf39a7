"""The Stripe webhook on the real local stack (issue 4's Done-when items 1-4 and 6)."""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Callable
from typing import Any

import pytest
import requests
from conftest import CARD_3DS, authorize_command, msk_event, wait_for
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from payments_core.adapters.kafka.kafka_gateway import OutgoingMessage
from payments_core.adapters.postgres.db import Database
from payments_core.adapters.services import Services, set_services
from payments_core.adapters.stripe_api.stripe_gateway import StripeApiGateway
from payments_core.config import get_settings
from payments_core.domain.payment import ALLOWED_TRANSITIONS, PaymentStatus
from webhook_helpers import encode, payment_intent_event, seed_payment, sign, webhook_request

pytestmark = pytest.mark.integration


def _require_api_gateway() -> None:
    from local.stack import control as stack

    if not stack.is_running("api-gateway"):
        pytest.fail("the local API Gateway is not running: run `make local-up`", pytrace=False)


@pytest.fixture
def payment_api(load_function: Callable[[str], Any], lambda_context: Callable[..., Any]) -> Callable:
    """The payment API function's handler, invoked in-process: ``(event) -> (status, body)``."""
    module = load_function("payment_api")
    context = lambda_context("payment_api")

    def invoke(event: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        response = module.lambda_handler(event, context)
        return response["statusCode"], json.loads(response["body"])

    return invoke


@pytest.fixture
def db(make_services: Callable[..., Services]) -> Database:
    return make_services().db


def _counts(pg_connection: Any, order_id: str, payment_intent_id: str) -> tuple[Any, ...]:
    """Everything a webhook could write for this payment."""
    (row,) = pg_connection.run(
        "SELECT status, updated_at, payment_intent_id, failure_code FROM payments WHERE order_id = :o",
        o=order_id,
    )
    ((outbox,),) = pg_connection.run("SELECT count(*) FROM outbox WHERE order_id = :o", o=order_id)
    ((seen,),) = pg_connection.run(
        "SELECT count(*) FROM stripe_events WHERE payment_intent_id = :pi", pi=payment_intent_id
    )
    return (*row, outbox, seen)


# ---- 1. 3-D Secure end to end --------------------------------------------------------------


def test_three_d_secure_completes_through_localstripes_own_webhook(
    new_card,
    authorize_handler,
    payment_row,
    published_events,
    localstripe_client,
    local_env,
    pg_connection,
):
    _require_api_gateway()
    card = new_card(CARD_3DS)
    cmd = authorize_command(card)
    order_id = cmd["payload"]["order_id"]
    assert authorize_handler(msk_event(cmd)) == {"batchItemFailures": []}
    row = payment_row(order_id)
    assert row["status"] == "REQUIRES_ACTION"
    intent = localstripe_client.v1.payment_intents.retrieve(row["payment_intent_id"])
    assert intent.status == "requires_action"

    # The customer completes 3-D Secure.
    answer = requests.post(
        f"{local_env['STRIPE_API_BASE']}/v1/payment_intents/{intent.id}/_authenticate",
        data={"client_secret": intent.client_secret, "success": "true"},
        headers={"Authorization": f"Bearer {local_env['STRIPE_SECRET_KEY']}"},
        timeout=10,
    )
    assert answer.status_code == 200, answer.text
    authorized_intent = localstripe_client.v1.payment_intents.retrieve(intent.id)
    assert authorized_intent.status == "requires_capture"

    # Stripe now sends payment_intent.amount_capturable_updated; localstripe does too (through
    # the local adapter), signed, to the local API Gateway. Nothing else moves this payment.
    assert wait_for(lambda: payment_row(order_id)["status"] == "AUTHORIZED", timeout=20)
    received = pg_connection.run(
        "SELECT event_type FROM stripe_events WHERE payment_intent_id = :pi", pi=intent.id
    )
    assert ["payment_intent.amount_capturable_updated"] in received, received
    events = published_events(order_id, at_least=2, timeout=20, settle=2.0)
    types = [e["type"] for e in events]
    assert types.count("payment.authorized") == 1, types
    assert types == ["payment.requires_action", "payment.authorized"]
    authorized_event = events[-1]
    assert authorized_event["correlation_id"] == cmd["correlation_id"]  # the one stored with the payment
    assert authorized_event["payload"]["payment_intent_id"] == intent.id


# ---- 2. signatures ---------------------------------------------------------------------------


def test_unverifiable_requests_are_400_and_change_nothing(
    payment_api, db, pg_connection, published_events, local_env
):
    payment = seed_payment(db, "REQUIRES_ACTION")
    pi = payment.payment_intent_id
    body = encode(payment_intent_event("authorized", payment_intent_id=pi, order_id=payment.order_id))
    secret = local_env["STRIPE_WEBHOOK_SECRET"]
    before = _counts(pg_connection, payment.order_id, pi)
    attempts = {
        "forged": "t={},v1={}".format(int(time.time()), "ab" * 32),
        "other secret": sign(body, "whsec_not_ours"),
        "stale": sign(body, secret, timestamp=int(time.time()) - 301),
        "missing": None,
        "tampered body": sign(body.replace(b"1999", b"1"), secret),
    }
    for name, signature in attempts.items():
        status, answer = payment_api(webhook_request(body, signature))
        assert status == 400, name
        assert answer["success"] is False
        assert answer["error"] == ("MISSING_SIGNATURE" if signature is None else "INVALID_SIGNATURE"), name
    assert _counts(pg_connection, payment.order_id, pi) == before
    assert before[0] == "REQUIRES_ACTION" and before[4] == 0
    assert published_events(payment.order_id, at_least=1, timeout=3) == []
    # the same request, properly signed, is accepted: the 400s were about the signature alone
    assert payment_api(webhook_request(body, sign(body, secret)))[0] == 200


# ---- 3. the same event twice -----------------------------------------------------------------


def test_the_same_event_twice_changes_once_and_announces_once(
    payment_api, db, pg_connection, published_events, local_env
):
    payment = seed_payment(db, "REQUIRES_ACTION")
    body = encode(
        payment_intent_event(
            "authorized", payment_intent_id=payment.payment_intent_id, order_id=payment.order_id
        )
    )
    secret = local_env["STRIPE_WEBHOOK_SECRET"]
    first = payment_api(webhook_request(body, sign(body, secret)))
    second = payment_api(webhook_request(body, sign(body, secret)))  # Stripe's redelivery, re-signed
    assert first == (200, {"received": True, "result": "applied"})
    assert second == (200, {"received": True, "result": "duplicate"})
    status, _, _, _, outbox, seen = _counts(pg_connection, payment.order_id, payment.payment_intent_id)
    assert (status, outbox, seen) == ("AUTHORIZED", 1, 1)
    events = published_events(payment.order_id, at_least=1, timeout=10, settle=2.0)
    assert [e["type"] for e in events] == ["payment.authorized"]


# ---- 4. permutations and repetitions ----------------------------------------------------------

# Forward only: the rank of every status (REVERTED and FAILED are both ends).
RANK = {
    PaymentStatus.PENDING: 0,
    PaymentStatus.REQUIRES_ACTION: 1,
    PaymentStatus.AUTHORIZED: 2,
    PaymentStatus.SUCCEEDED: 3,
    PaymentStatus.REVERTED: 4,
    PaymentStatus.FAILED: 4,
}


class RecordingPublisher:
    """Kafka replaced by a list: what would have been published, per order."""

    def __init__(self) -> None:
        self.sent: list[OutgoingMessage] = []

    def publish(self, messages: list[OutgoingMessage]) -> list[Exception | None]:
        self.sent.extend(messages)
        return [None for _ in messages]

    def for_order(self, order_id: str) -> list[dict[str, Any]]:
        return [json.loads(m.value) for m in self.sent if m.key == order_id]


@pytest.fixture
def recording_services() -> Any:
    settings = get_settings()
    services = Services(
        db=Database(settings),
        stripe=StripeApiGateway(settings),
        publisher=RecordingPublisher(),
        settings=settings,
    )
    set_services(services)
    yield services
    set_services(None)
    services.db.close()


KINDS = ("authorized", "captured", "canceled", "failed")


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    start=st.sampled_from(["PENDING", "REQUIRES_ACTION", "AUTHORIZED"]),
    deliveries=st.lists(
        st.tuples(st.sampled_from(KINDS), st.integers(min_value=0, max_value=2)), min_size=1, max_size=8
    ),
)
def test_any_order_and_repetition_of_events_only_moves_forward(
    recording_services, payment_api, pg_connection, local_env, start, deliveries
):
    """Each delivery is (kind, copy): copy 0 is a fresh Stripe event, 1 and 2 redeliver the
    earlier event of that kind, if any, byte for byte (as Stripe retries do)."""
    db = recording_services.db
    publisher: RecordingPublisher = recording_services.publisher
    payment = seed_payment(db, start)
    pi = payment.payment_intent_id or f"pi_{payment.payment_id.replace('-', '')[:24]}"
    secret = local_env["STRIPE_WEBHOOK_SECRET"]
    sent_bodies: dict[str, bytes] = {}
    history = [PaymentStatus(start)]
    for kind, copy in deliveries:
        body = sent_bodies.get(kind) if copy else None
        if body is None:
            body = encode(payment_intent_event(kind, payment_intent_id=pi, order_id=payment.order_id))
            sent_bodies[kind] = body
        status, answer = payment_api(webhook_request(body, sign(body, secret)))
        assert status == 200, answer
        ((now,),) = pg_connection.run("SELECT status FROM payments WHERE order_id = :o", o=payment.order_id)
        now_status = PaymentStatus(now)
        if now_status != history[-1]:
            assert now_status in ALLOWED_TRANSITIONS[history[-1]], (history, now_status)
            assert RANK[now_status] > RANK[history[-1]], (history, now_status)
            history.append(now_status)
    changes = len(history) - 1
    published = publisher.for_order(payment.order_id)
    ((outbox,),) = pg_connection.run("SELECT count(*) FROM outbox WHERE order_id = :o", o=payment.order_id)
    assert len(published) == outbox == changes, (history, [e["type"] for e in published])
    assert len({e["event_id"] for e in published}) == changes


# ---- 6. the local API Gateway: binary bodies and multi-value headers --------------------------


def test_local_api_passes_binary_bodies_and_repeated_headers_through(
    local_settings, db, payment_row, local_env
):
    _require_api_gateway()
    secret = local_env["STRIPE_WEBHOOK_SECRET"]

    # A binary media type arrives base64-encoded; the signature covers the original bytes.
    binary = seed_payment(db, "REQUIRES_ACTION")
    event = payment_intent_event(
        "authorized", payment_intent_id=binary.payment_intent_id, order_id=binary.order_id
    )
    event["data"]["object"]["description"] = "Kopi \u2615 for caf\u00e9"
    body = json.dumps(event, ensure_ascii=False, indent=2).encode("utf-8")
    answer = requests.post(
        f"{local_settings.api_url}/api/stripe-webhook",
        data=body,
        headers={"Content-Type": "application/octet-stream", "Stripe-Signature": sign(body, secret)},
        timeout=10,
    )
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"received": True, "result": "applied"}
    assert payment_row(binary.order_id)["status"] == "AUTHORIZED"

    # A repeated header: API Gateway's single-value map keeps the last one.
    repeated = seed_payment(db, "REQUIRES_ACTION")
    event = payment_intent_event(
        "authorized", payment_intent_id=repeated.payment_intent_id, order_id=repeated.order_id
    )
    body = encode(event)
    for order, expected in (
        ((sign(body, "whsec_wrong"), sign(body, secret)), 200),
        ((sign(body, secret), "t=1,v1=00"), 400),
    ):
        conn = http.client.HTTPConnection(local_settings.api_url.split("//", 1)[1], timeout=10)
        conn.putrequest("POST", "/api/stripe-webhook")
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Content-Length", str(len(body)))
        for value in order:
            conn.putheader("Stripe-Signature", value)
        conn.endheaders(body)
        response = conn.getresponse()
        text = response.read().decode()
        conn.close()
        assert response.status == expected, text
    assert payment_row(repeated.order_id)["status"] == "AUTHORIZED"
