"""Payment-domain helpers for integration tests: cards in localstripe, commands in the
contract's shape, MSK events, and readers for rows, the outbox and payment_events."""

from __future__ import annotations

import base64
import dataclasses
import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from payments_core.adapters import services as services_module
from payments_core.adapters.kafka.kafka_gateway import KafkaEventPublisher
from payments_core.adapters.postgres import db as db_module
from payments_core.adapters.postgres.db import Database
from payments_core.adapters.services import Services
from payments_core.adapters.stripe_api.stripe_gateway import StripeApiGateway
from payments_core.config import get_settings
from payments_core.domain.errors import TransientError
from payments_core.domain.payment import Payment

CARD_OK = "4242424242424242"
CARD_3DS = "4000002760003184"  # localstripe: requires authentication
CARD_DECLINED_ON_CHARGE = "4000000000000341"  # localstripe: attaches, then declines


@dataclass(frozen=True)
class Card:
    customer_id: str
    payment_method_id: str


def msk_event(
    *values: Any, topic: str = "payment_commands", partition: int = 0, first_offset: int = 0
) -> dict:
    """An MSK event as the event source mapping delivers it; dict values are JSON-encoded."""
    records = []
    for i, value in enumerate(values):
        raw = value if isinstance(value, bytes) else json.dumps(value).encode()
        records.append(
            {
                "topic": topic,
                "partition": partition,
                "offset": first_offset + i,
                "timestamp": int(time.time() * 1000),
                "timestampType": "CREATE_TIME",
                "key": None,
                "value": base64.b64encode(raw).decode(),
                "headers": [],
            }
        )
    return {
        "eventSource": "aws:kafka",
        "eventSourceArn": "arn:aws:kafka:ap-southeast-1:111111111111:cluster/local/1",
        "bootstrapServers": "127.0.0.1:9092",
        "records": {f"{topic}-{partition}": records},
    }


def authorize_command(
    card: Card, order_id: str | None = None, amount: Any = 1299, correlation_id: str | None = None
) -> dict[str, Any]:
    """authorize_payment exactly as the create-order saga sends it."""
    order_id = order_id or str(uuid.uuid4())
    return {
        "type": "authorize_payment",
        "correlation_id": correlation_id or str(uuid.uuid4()),
        "timestamp": "2025-03-31T09:12:45.123456",
        "payload": {
            "order_id": order_id,
            "customer": {
                "clerkUserId": "user_2abc",
                "stripeCustomerId": card.customer_id,
                "userStripeCard": {
                    "payment_method_id": card.payment_method_id,
                    "card_type": "visa",
                    "last_four": "4242",
                },
            },
            "order": {"amount": amount, "description": f"Payment for order {order_id}"},
            "return_url": "https://localhost:5173/customer/history",
        },
    }


def authorized_payment(
    new_card: Callable[..., Card],
    authorize_handler: Callable[[dict], dict],
    payment_row: Callable[[str], dict[str, Any] | None],
    card_number: str = CARD_OK,
    expect: str = "AUTHORIZED",
) -> dict[str, Any]:
    """Authorize a 12.99 order for a fresh customer through the authorize function and return
    its row, checked to have the expected status."""
    cmd = authorize_command(new_card(card_number), amount=1299)
    assert authorize_handler(msk_event(cmd)) == {"batchItemFailures": []}
    row = payment_row(cmd["payload"]["order_id"])
    assert row is not None and row["status"] == expect, row
    return row


def named_database(settings: Any, port: int, application_name: str, **options: Any) -> Database:
    """A Database on the local PostgreSQL whose sessions carry ``application_name``, so a test
    can find them in pg_stat_activity (to watch or to kill them)."""
    from local.stack.settings import DB_NAME, DB_PASSWORD, DB_USER, HOST

    params = {"user": DB_USER, "password": DB_PASSWORD, "host": HOST, "port": port, "database": DB_NAME}
    return Database(settings, **params, application_name=application_name, **options)


def wait_for(predicate: Callable[[], Any], timeout: float = 20.0) -> Any:
    """Poll until ``predicate()`` is truthy or the timeout passes; returns its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    return predicate()


def command(command_type: str, correlation_id: str | None = None, **payload: Any) -> dict[str, Any]:
    return {
        "type": command_type,
        "correlation_id": correlation_id or str(uuid.uuid4()),
        "timestamp": "2025-03-31T09:12:45",
        "payload": payload,
    }


@pytest.fixture(autouse=True)
def fresh_services() -> Iterator[None]:
    """Each test starts with the service's container-wide singletons unset (settings from the
    local env, a new database connection), as a new Lambda container would."""
    get_settings.cache_clear()
    services_module.set_services(None)
    db_module._database = None
    yield
    current = db_module._database
    if current is not None:
        current.close()
    services_module.set_services(None)
    db_module._database = None


@pytest.fixture
def make_services() -> Iterator[Callable[..., Services]]:
    """``make_services(stripe=None, publisher=None) -> Services`` with its own connection (one
    per simulated concurrent Lambda container); real gateways unless replaced."""
    made: list[Services] = []

    def factory(**overrides: Any) -> Services:
        settings = get_settings()
        services = Services(
            db=overrides.pop("db", None) or Database(settings),
            stripe=overrides.pop("stripe", None) or StripeApiGateway(settings),
            publisher=overrides.pop("publisher", None) or KafkaEventPublisher(settings),
            settings=settings,
        )
        made.append(services)
        return services

    yield factory
    for services in made:
        services.db.close()


@pytest.fixture
def new_card(localstripe_client: Any) -> Callable[[str], Card]:
    """``new_card(number) -> Card``: a fresh localstripe customer with that card attached."""

    def factory(number: str = CARD_OK) -> Card:
        customer = localstripe_client.v1.customers.create(
            params={"email": f"{uuid.uuid4().hex[:8]}@campus.test"}
        )
        method = localstripe_client.v1.payment_methods.create(
            params={
                "type": "card",
                "card": {"number": number, "exp_month": 12, "exp_year": 2034, "cvc": "123"},
            }
        )
        localstripe_client.v1.payment_methods.attach(method.id, params={"customer": customer.id})
        return Card(customer.id, method.id)

    return factory


@pytest.fixture
def intents_for_order(localstripe_client: Any) -> Callable[[Card, str], list[Any]]:
    """Every PaymentIntent localstripe holds for this customer and order."""

    def read(card: Card, order_id: str) -> list[Any]:
        page = localstripe_client.v1.payment_intents.list(params={"customer": card.customer_id, "limit": 100})
        return [pi for pi in page.data if (pi.to_dict().get("metadata") or {}).get("order_id") == order_id]

    return read


@pytest.fixture
def payment_row(pg_connection: Any) -> Callable[[str], dict[str, Any] | None]:
    def read(order_id: str) -> dict[str, Any] | None:
        rows = pg_connection.run("SELECT * FROM payments WHERE order_id = :o", o=order_id)
        if not rows:
            return None
        names = [c["name"] for c in pg_connection.columns]
        return dict(zip(names, rows[0], strict=True))

    return read


@pytest.fixture
def outbox_rows(pg_connection: Any) -> Callable[[str], list[dict[str, Any]]]:
    def read(order_key: str) -> list[dict[str, Any]]:
        rows = pg_connection.run(
            "SELECT event_id::text, event_type, envelope, published_at, attempts, last_error FROM outbox"
            " WHERE order_id = :o ORDER BY id",
            o=order_key,
        )
        names = [c["name"] for c in pg_connection.columns]
        return [dict(zip(names, row, strict=True)) for row in rows]

    return read


@pytest.fixture
def published_events(make_consumer: Callable[..., Any]) -> Callable[..., list[dict[str, Any]]]:
    """``published_events(order_key, at_least=1, timeout=15) -> [envelope, ...]`` read from
    payment_events (keyed by order), waiting until at least that many arrived, then a little
    longer so that extra (duplicate) events would be seen too."""

    def read(
        order_key: str, at_least: int = 1, timeout: float = 15.0, settle: float = 1.0
    ) -> list[dict[str, Any]]:
        consumer = make_consumer("payment_events", consumer_timeout_ms=500)
        found: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        settle_until: float | None = None
        while time.monotonic() < (settle_until or deadline):
            for message in consumer:
                if message.key is not None and message.key.decode() == order_key:
                    found.append(json.loads(message.value))
            if len(found) >= at_least and settle_until is None:
                settle_until = time.monotonic() + settle
        consumer.close()
        return found

    return read


@pytest.fixture
def dead_letters(make_consumer: Callable[..., Any]) -> Callable[..., list[Any]]:
    """``dead_letters(predicate, timeout=10) -> [ConsumerRecord]`` from the dead-letter topic."""

    def read(predicate: Callable[[Any], bool], timeout: float = 10.0) -> list[Any]:
        consumer = make_consumer(get_settings().dead_letter_topic, consumer_timeout_ms=500)
        found: list[Any] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not found:
            found.extend(m for m in consumer if predicate(m))
        return found

    return read


@pytest.fixture
def authorize_handler(
    load_function: Callable[[str], Any], lambda_context: Callable[..., Any]
) -> Callable[[dict], dict]:
    """Invoke the authorize function's handler in-process with an MSK event."""
    module = load_function("authorize_payment")
    context = lambda_context("authorize_payment")

    def invoke(event: dict) -> dict:
        return module.lambda_handler(event, context)

    return invoke


@pytest.fixture
def scheduler_paused() -> Iterator[None]:
    """Stop the stack's scheduled outbox relay and reconciler for one test (restarted after),
    when the test must see what waits in the outbox before a relay runs."""
    from local.stack import control as stack

    was_running = stack.is_running("scheduler")
    if was_running:
        stack.down(["scheduler"])
    yield
    if was_running:
        stack.up(["scheduler"])


# --- Stripe doubles shared by the escrow and HTTP tests -------------------------------------


class RecordingStripe:
    """The real gateway, counting every call that was sent on to Stripe, by method."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls: Counter[str] = Counter()
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        target = getattr(self.inner, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                self.calls[name] += 1
            return target(*args, **kwargs)

        return call


class TransfersElsewhere(RecordingStripe):
    """PaymentIntents in localstripe, Transfers (and their reversals) in stripe-mock.
    ``lose_transfer_answers``: how many transfer answers to lose after Stripe acted (the
    function dies, or the connection resets, between the transfer and the database write)."""

    def __init__(self, inner: Any, transfers: Any, *, lose_transfer_answers: int = 0) -> None:
        super().__init__(inner)
        self.transfers = transfers
        self.lose_transfer_answers = lose_transfer_answers

    def transfer(self, payment: Payment, amount_cents: int, destination: str) -> str:
        self.calls["transfer"] += 1
        transfer_id = self.transfers.transfer(payment, amount_cents, destination)
        if self.lose_transfer_answers:
            self.lose_transfer_answers -= 1
            raise TransientError("connection reset after the transfer was sent")
        return transfer_id

    def find_transfer(self, payment: Payment) -> str | None:
        self.calls["find_transfer"] += 1
        return self.transfers.find_transfer(payment)

    def reverse_transfer(self, payment: Payment, amount_cents: int | None = None) -> str:
        self.calls["reverse_transfer"] += 1
        return self.transfers.reverse_transfer(payment, amount_cents)


@pytest.fixture
def stripe_mock_gateway(local_env: dict[str, str]) -> Callable[[str], StripeApiGateway]:
    """``stripe_mock_gateway(base) -> StripeApiGateway`` for stripe-mock (or the proxy before it).
    stripe-mock accepts only keys shaped like sk_test_<x>, so the local key is passed as is."""

    def factory(base: str) -> StripeApiGateway:
        settings = dataclasses.replace(get_settings(), stripe_api_base=base, stripe_max_network_retries=0)
        return StripeApiGateway(settings, api_key=local_env["STRIPE_SECRET_KEY"])

    return factory
