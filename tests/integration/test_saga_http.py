"""The complete-order saga's and the frontend's HTTP calls (issue 10) on the real local stack:
release and revert over HTTP, payment history, and the answers the saga acts on.

End-to-end tests go through the local API Gateway, payment_commands, the local event source
mapping and payment_events, exactly as campusG's unsigned ``requests`` calls would. The
concurrency test runs the API and the command handler in-process (real Kafka, PostgreSQL,
localstripe, and stripe-mock for transfers) so it can count what reached Stripe."""

from __future__ import annotations

import dataclasses
import json
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests
from conftest import (
    CARD_DECLINED_ON_CHARGE,
    TransfersElsewhere,
    authorize_command,
    authorized_payment,
    command,
    msk_event,
    wait_for,
)
from payments_core.adapters.services import Services, set_services
from payments_core.adapters.stripe_api.stripe_gateway import StripeApiGateway
from payments_core.config import get_settings
from payments_core.domain.contracts import STRIPE_API_ERROR
from payments_core.domain.errors import Rejection
from payments_core.entrypoints import api
from payments_core.entrypoints.commands import handle_command_batch

from local.stack.api_events import ROUTES, build_event, compile_routes

pytestmark = pytest.mark.integration

NO_FAILURES = {"batchItemFailures": []}
RUNNER = {"runner_id": "user_runner_http", "runner_connect_account_id": "acct_1QrunnerHttp"}
QUEUED_KEYS = {"success", "message", "correlation_id", "status", "queued"}
_ROUTES = compile_routes(ROUTES)


@pytest.fixture
def over_http(local_settings: Any) -> Callable[..., tuple[int, dict[str, Any]]]:
    """A plain, unsigned request to the local API Gateway, as campusG's services make."""
    base = f"http://127.0.0.1:{local_settings.api_port}"

    def call(method: str, path: str, body: Any = None, raw: str | None = None) -> tuple[int, dict[str, Any]]:
        response = requests.request(
            method,
            base + path,
            json=body if raw is None else None,
            data=raw,
            headers={"Content-Type": "application/json"} if raw is not None else None,
            timeout=15,
        )
        return response.status_code, response.json()

    return call


def call_in_process(
    services: Services, method: str, path: str, body: Any = None
) -> tuple[int, dict[str, Any]]:
    """The API function's resolver with the given gateways, fed the local gateway's own event."""
    raw = json.dumps(body).encode() if body is not None else b""
    event = build_event(
        method=method,
        raw_path=path,
        header_items=[("Content-Type", "application/json")],
        body=raw,
        source_ip="127.0.0.1",
        routes=_ROUTES,
    )
    set_services(services)
    try:
        response = api.app.resolve(event, None)  # type: ignore[arg-type]
    finally:
        set_services(None)
    return response["statusCode"], json.loads(response["body"])


def _wait_event(published_events: Callable, order_id: str, predicate: Callable[[dict], bool]) -> list[dict]:
    return wait_for(lambda: [e for e in published_events(order_id, settle=0.3) if predicate(e)], timeout=40)


# --- Done-when 1 and 2: release and revert over HTTP, end to end -----------------------------


def test_release_over_http_is_queued_and_announced_then_revert_gives_it_back(
    new_card, authorize_handler, payment_row, published_events, localstripe_client, over_http
):
    row = authorized_payment(new_card, authorize_handler, payment_row)
    order_id, payment_id = row["order_id"], str(row["payment_id"])

    code, answer = over_http("POST", f"/payment/{payment_id}/release", RUNNER)
    assert code == 202, answer
    assert set(answer) == QUEUED_KEYS and answer["success"] is True and answer["queued"] is True
    assert str(uuid.UUID(answer["correlation_id"])) == answer["correlation_id"]

    released = _wait_event(
        published_events,
        order_id,
        lambda e: e["type"] == "payment.released" and e["payload"]["status"] == "SUCCEEDED",
    )
    assert released, "payment.released SUCCEEDED follows the 202"
    assert released[0]["correlation_id"] == answer["correlation_id"]
    assert released[0]["payload"]["runner_id"] == RUNNER["runner_id"]
    assert released[0]["payload"]["amount"] == 12.99
    intent = localstripe_client.v1.payment_intents.retrieve(row["payment_intent_id"])
    assert intent.status == "succeeded"
    charge = intent.latest_charge
    assert charge["captured"] is True and charge["amount"] == 1299 and charge["amount_refunded"] == 0
    assert payment_row(order_id)["status"] == "SUCCEEDED"

    # A repeated release of a released payment changes nothing and queues nothing.
    code, again = over_http("POST", f"/payment/{payment_id}/release", RUNNER)
    assert code == 200 and again["queued"] is False and again["status"] == "SUCCEEDED"

    code, answer = over_http("POST", f"/payment/{payment_id}/revert", {"reason": "customer complaint"})
    assert code == 202 and set(answer) == QUEUED_KEYS
    reverted = _wait_event(
        published_events,
        order_id,
        lambda e: e["type"] == "payment.released" and e["payload"]["status"] == "REVERTED",
    )
    assert reverted and reverted[0]["correlation_id"] == answer["correlation_id"]
    assert reverted[0]["payload"]["message"] == "customer complaint"
    charge = localstripe_client.v1.payment_intents.retrieve(row["payment_intent_id"]).latest_charge
    assert charge["amount_refunded"] == 1299, "the capture was refunded in full"

    code, again = over_http("POST", f"/payment/{payment_id}/revert")
    assert code == 200 and again["queued"] is False and again["status"] == "REVERTED"
    code, refused = over_http("POST", f"/payment/{payment_id}/release", RUNNER)
    assert code == 409 and refused["error"] == "PAYMENT_NOT_RELEASABLE" and refused["status"] == "REVERTED"


def test_revert_over_http_of_an_authorized_payment_cancels_the_hold(
    new_card, authorize_handler, payment_row, published_events, localstripe_client, over_http
):
    row = authorized_payment(new_card, authorize_handler, payment_row)
    order_id = row["order_id"]
    code, answer = over_http("POST", f"/payment/{row['payment_id']}/revert")  # no body: allowed
    assert code == 202, answer
    reverted = _wait_event(
        published_events,
        order_id,
        lambda e: e["type"] == "payment.released" and e["payload"]["status"] == "REVERTED",
    )
    assert reverted and reverted[0]["correlation_id"] == answer["correlation_id"]
    assert localstripe_client.v1.payment_intents.retrieve(row["payment_intent_id"]).status == "canceled"


# --- Done-when 3: three HTTP and two Kafka copies of one release, concurrently --------------


def test_release_three_times_over_http_and_twice_over_kafka_moves_money_once(
    new_card,
    authorize_handler,
    payment_row,
    make_services,
    make_topic,
    make_consumer,
    published_events,
    stripe_mock_gateway,
    local_env,
):
    row = authorized_payment(new_card, authorize_handler, payment_row)
    order_id, payment_id = row["order_id"], str(row["payment_id"])
    topic = make_topic(partitions=1, prefix="http-commands")
    settings = dataclasses.replace(get_settings(), payment_commands_topic=topic)

    def api_services() -> Services:
        services = make_services()
        return dataclasses.replace(services, settings=settings)

    # Three concurrent HTTP requests, each in its own "container".
    api_lock = threading.Lock()  # the resolver's current event is process-wide: one at a time here

    def post_release(_: int) -> tuple[int, dict[str, Any]]:
        services = api_services()
        with api_lock:
            return call_in_process(services, "POST", f"/payment/{payment_id}/release", RUNNER)

    with ThreadPoolExecutor(3) as pool:
        answers = list(pool.map(post_release, range(3)))
    assert [code for code, _ in answers] == [202, 202, 202]

    consumer = make_consumer(topic, consumer_timeout_ms=2000)
    queued = wait_for(lambda: [m for m in consumer], timeout=15)
    assert len(queued) == 3
    assert all(m.key.decode() == order_id for m in queued), "keyed by the order"
    http_commands = [json.loads(m.value) for m in queued]
    assert all(c["source"] == "payment-api" and c["type"] == "release_payment" for c in http_commands)
    assert {c["correlation_id"] for c in http_commands} == {a["correlation_id"] for _, a in answers}
    kafka_command = command("release_payment", payment_id=payment_id, **RUNNER)

    # Five deliveries at once, each batch on its own connection and gateway (five containers).
    stripe = TransfersElsewhere(
        StripeApiGateway(get_settings()), stripe_mock_gateway(local_env["STRIPE_MOCK_API_BASE"])
    )
    deliveries = [*http_commands, kafka_command, kafka_command]
    barrier = threading.Barrier(len(deliveries))

    def deliver(index: int) -> dict:
        services = make_services(stripe=stripe)
        barrier.wait()
        return handle_command_batch(msk_event(deliveries[index], first_offset=index), None, services)

    with ThreadPoolExecutor(len(deliveries)) as pool:
        results = list(pool.map(deliver, range(len(deliveries))))
    assert results == [NO_FAILURES] * len(deliveries)

    assert stripe.calls["capture"] == 1, f"one capture for five deliveries: {stripe.calls}"
    assert stripe.calls["transfer"] == 1, f"one transfer request: {stripe.calls}"
    stored = payment_row(order_id)
    assert stored["status"] == "SUCCEEDED" and stored["transfer_id"]
    released = [
        e
        for e in published_events(order_id, at_least=2)
        if e["type"] == "payment.released" and e["payload"]["status"] == "SUCCEEDED"
    ]
    assert released and len({e["event_id"] for e in released}) == 1, "one SUCCEEDED event id"


# --- Done-when 4: bad requests are answered and change nothing -------------------------------


def test_bad_requests_get_a_reason_and_change_nothing(
    new_card, authorize_handler, payment_row, outbox_rows, over_http
):
    row = authorized_payment(new_card, authorize_handler, payment_row)
    payment_id, order_id = str(row["payment_id"]), row["order_id"]
    before = (payment_row(order_id), len(outbox_rows(order_id)))

    code, answer = over_http("POST", f"/payment/{payment_id}/release")
    assert code == 400 and answer["error"] == "BAD_REQUEST" and "runner_id" in answer["message"]
    code, answer = over_http("POST", f"/payment/{payment_id}/release", {"runner_id": "user_runner"})
    assert code == 400 and answer["success"] is False
    assert answer["message"] == "runner_connect_account_id is required"
    code, answer = over_http("POST", f"/payment/{payment_id}/release", raw="{not json")
    assert code == 400 and answer["message"].startswith("body is not JSON")
    code, answer = over_http("POST", f"/payment/{payment_id}/revert", {"reason": 42})
    assert code == 400 and answer["error"] == "BAD_REQUEST" and answer["message"].startswith("reason")
    code, answer = over_http("POST", f"/payment/{payment_id}/release", {**RUNNER, "runner_id": "a\u0000b"})
    assert code == 400 and "NUL" in answer["message"]

    code, answer = over_http("POST", f"/payment/{payment_id}/release", {**RUNNER, "amount_to_capture": True})
    assert code == 400 and answer["message"].startswith("amount_to_capture"), "no bool, string or float cents"
    code, answer = over_http(
        "POST", f"/payment/{payment_id}/release", {**RUNNER, "amount_to_capture": "1000"}
    )
    assert code == 400 and answer["error"] == "BAD_REQUEST"

    for route in ("release", "revert"):
        code, answer = over_http("POST", f"/payment/{uuid.uuid4()}/{route}", RUNNER)
        assert (code, answer) == (
            404,
            {"success": False, "error": "NOT_FOUND", "message": "Payment not found"},
        )
    assert (payment_row(order_id), len(outbox_rows(order_id))) == before, "nothing changed"


def test_release_of_a_failed_payment_is_a_conflict_and_revert_has_nothing_to_do(
    new_card, authorize_handler, payment_row, outbox_rows, over_http
):
    row = authorized_payment(
        new_card, authorize_handler, payment_row, CARD_DECLINED_ON_CHARGE, expect="FAILED"
    )
    before = (payment_row(row["order_id"]), len(outbox_rows(row["order_id"])))
    code, answer = over_http("POST", f"/payment/{row['payment_id']}/release", RUNNER)
    assert code == 409
    assert answer == {
        "success": False,
        "error": "PAYMENT_NOT_RELEASABLE",
        "message": "payment is FAILED: it can no longer be released",
        "status": "FAILED",
    }
    code, answer = over_http("POST", f"/payment/{row['payment_id']}/revert")
    assert code == 200 and answer["queued"] is False and answer["status"] == "FAILED"
    assert (payment_row(row["order_id"]), len(outbox_rows(row["order_id"]))) == before


# --- Done-when 5: history ------------------------------------------------------------------


def test_history_totals_a_customer_who_is_also_a_runner(make_services, over_http):
    services = make_services()
    user, other = f"user_{uuid.uuid4().hex[:10]}", f"user_{uuid.uuid4().hex[:10]}"
    # (customer, runner, status, amount_cents, captured_amount_cents)
    rows = [
        (user, None, "AUTHORIZED", 1999, None),  # spent
        (user, other, "SUCCEEDED", 1001, 1001),  # spent
        (user, None, "SUCCEEDED", 3000, 2505),  # spent: what was captured
        (user, None, "FAILED", 5000, None),  # not spent
        (user, None, "REVERTED", 700, None),  # not spent
        (other, user, "SUCCEEDED", 1099, 1099),  # earned
        (other, user, "SUCCEEDED", 1, 1),  # earned
        (other, user, "AUTHORIZED", 800, None),  # not earned yet
        (other, user, "REVERTED", 900, 900),  # given back: not earned
    ]
    for customer, runner, status, amount, captured in rows:
        services.db.execute(
            "INSERT INTO payments (payment_id, order_id, clerk_user_id, runner_id, status, amount_cents,"
            " captured_amount_cents, currency) VALUES (CAST(:p AS uuid), :o, :c, :r, :s, :a, :cap, 'sgd')",
            p=str(uuid.uuid4()),
            o=f"history-{uuid.uuid4()}",
            c=customer,
            r=runner,
            s=status,
            a=amount,
            cap=captured,
        )
    code, answer = over_http("GET", f"/history/{user}")
    assert code == 200
    assert answer == {
        "userId": user,
        "totalSpent": 55.05,  # 19.99 + 10.01 + 25.05: exact, from cents
        "totalEarned": 11.0,
        "spentCount": 3,
        "earnedCount": 2,
        "byCurrency": [
            {"currency": "sgd", "spentCents": 5505, "earnedCents": 1100, "spentCount": 3, "earnedCount": 2}
        ],
    }
    code, answer = over_http("GET", f"/history/user_{uuid.uuid4().hex}")
    assert code == 200
    assert (answer["totalSpent"], answer["totalEarned"], answer["spentCount"], answer["earnedCount"]) == (
        0,
        0,
        0,
        0,
    )
    code, answer = over_http("GET", "/history/" + "x" * 300)
    assert code == 400 and answer["message"].startswith("user_id must be")


def test_history_reads_the_index(make_services):
    services = make_services()
    services.db.execute("SET enable_seqscan = off")  # a small table would be scanned anyway
    plan = "\n".join(
        str(r["QUERY PLAN"])
        for r in services.db.query(
            "EXPLAIN SELECT currency, amount_cents FROM payments WHERE clerk_user_id = 'u' AND status IN ('AUTHORIZED', 'SUCCEEDED')"
        )
    )
    assert "payments_customer_history_idx" in plan, plan


# --- Done-when 6 and the answers the saga acts on --------------------------------------------


def test_revert_before_authorize_is_answered_reverted_and_the_late_authorize_holds_nothing(
    new_card, authorize_handler, payment_row, published_events, intents_for_order
):
    card = new_card()
    authorize = authorize_command(card)
    order_id = authorize["payload"]["order_id"]
    revert = command("revert_payment", order_id=order_id, reason="order cancelled before payment")
    assert authorize_handler(msk_event(revert)) == NO_FAILURES
    (answer,) = published_events(order_id)
    assert answer["type"] == "payment.released" and answer["correlation_id"] == revert["correlation_id"]
    assert answer["payload"] == {
        "order_id": order_id,
        "status": "REVERTED",
        "message": "order cancelled before payment",
    }

    assert authorize_handler(msk_event(authorize, first_offset=1)) == NO_FAILURES
    assert payment_row(order_id) is None
    assert intents_for_order(card, order_id) == [], "no hold for a reverted order"
    events = published_events(order_id, at_least=2)
    assert events[-1]["type"] == "payment.failed" and events[-1]["payload"]["error"] == "ORDER_REVERTED"


def test_revert_of_an_unknown_payment_id_is_answered_reverted(authorize_handler, published_events):
    payment_id = str(uuid.uuid4())
    revert = command("revert_payment", payment_id=payment_id)
    assert authorize_handler(msk_event(revert)) == NO_FAILURES
    (answer,) = published_events(payment_id)
    assert answer["type"] == "payment.released" and answer["payload"]["status"] == "REVERTED"
    assert (
        answer["payload"]["payment_id"] == payment_id and answer["correlation_id"] == revert["correlation_id"]
    )


def test_a_long_revert_reason_is_cut_not_refused(
    new_card, authorize_handler, payment_row, published_events, localstripe_client
):
    row = authorized_payment(new_card, authorize_handler, payment_row)
    revert = command("revert_payment", order_id=row["order_id"], reason="r" * 5000)
    assert authorize_handler(msk_event(revert, first_offset=1)) == NO_FAILURES
    assert payment_row(row["order_id"])["status"] == "REVERTED"
    assert localstripe_client.v1.payment_intents.retrieve(row["payment_intent_id"]).status == "canceled"
    event = published_events(row["order_id"], at_least=2)[-1]
    assert event["payload"]["status"] == "REVERTED" and event["payload"]["message"] == "r" * 1000


@pytest.mark.parametrize("stripe_status", ["processing", "requires_action"])
def test_release_of_an_intent_that_cannot_be_captured_yet_is_answered(
    stripe_status, new_card, authorize_handler, payment_row, make_services, published_events
):
    row = authorized_payment(new_card, authorize_handler, payment_row)

    class StripeSays(TransfersElsewhere):
        """Stripe's PaymentIntent is not capturable yet: it refuses the capture as Stripe does."""

        def capture(self, payment: Any, amount_to_capture: int | None) -> Any:
            self.calls["capture"] += 1
            raise Rejection(
                STRIPE_API_ERROR,
                f"This PaymentIntent could not be captured because it has a status of {stripe_status}.",
                stripe_code="payment_intent_unexpected_state",
            )

        def retrieve(self, payment_intent_id: str) -> Any:
            return dataclasses.replace(self.inner.retrieve(payment_intent_id), status=stripe_status)

    stripe = StripeSays(StripeApiGateway(get_settings()), None)
    release = command("release_payment", order_id=row["order_id"], **RUNNER)
    assert (
        handle_command_batch(msk_event(release, first_offset=1), None, make_services(stripe=stripe))
        == NO_FAILURES
    )
    # the capture is sent without a read first; its refusal makes the release read the intent
    assert stripe.calls["capture"] == 1 and payment_row(row["order_id"])["status"] == "AUTHORIZED"
    event = published_events(row["order_id"], at_least=2)[-1]
    expected = {"processing": "PAYMENT_PROCESSING", "requires_action": "PAYMENT_REQUIRES_ACTION"}[
        stripe_status
    ]
    assert event["type"] == "payment.failed" and event["payload"]["error"] == expected
    assert event["correlation_id"] == release["correlation_id"]


def test_a_body_declared_as_another_media_type_is_refused(over_http, local_settings):
    """The document declares application/json bodies only: another Content-Type (here one the
    gateway base64-encodes as binary) is a 400 naming the fix, before the payment is looked up.
    A base64-encoded JSON body is read: tests/unit/test_api_contract.py."""
    response = requests.post(
        f"http://127.0.0.1:{local_settings.api_port}/payment/{uuid.uuid4()}/release",
        data=json.dumps(RUNNER).encode(),
        headers={"Content-Type": "application/octet-stream"},
        timeout=15,
    )
    assert response.status_code == 400, response.text
    assert response.json() == {
        "success": False,
        "error": "BAD_REQUEST",
        "message": "Content-Type must be application/json, not application/octet-stream",
    }
