"""The outbox relay on the real local stack (issue 5, Done-when 5).

"The broker is down" is a publisher whose bootstrap is a closed port. The local stack's
scheduler runs its own relay every second against the live broker; so that the outage is the
whole world's while it lasts, each test holds the outbox's per-order lock for its orders in
its own database session (the session-level lock lets that session's relay in, since
PostgreSQL advisory locks are re-entrant per session, and keeps every other relay out). Once
released, the scheduler's relay runs alongside the test's: one more concurrent copy."""

from __future__ import annotations

import dataclasses
import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from conftest import authorize_command, command, msk_event
from payments_core.adapters.kafka.kafka_gateway import KafkaEventPublisher
from payments_core.adapters.postgres import outbox
from payments_core.adapters.services import Services
from payments_core.config import get_settings
from payments_core.domain.errors import TransientError
from payments_core.entrypoints.commands import handle_command_batch
from payments_core.usecases.relay import relay_outbox

pytestmark = pytest.mark.integration

NO_FAILURES = {"batchItemFailures": []}


@pytest.fixture
def dead_broker() -> Iterator[KafkaEventPublisher]:
    settings = dataclasses.replace(
        get_settings(), kafka_bootstrap_servers="127.0.0.1:1", kafka_send_timeout_seconds=1.0
    )
    publisher = KafkaEventPublisher(settings)
    yield publisher
    publisher.close()


class Unreachable:
    """A publisher that fails at once (the outage of the first test, without its timeouts)."""

    def publish(self, messages: list[Any]) -> list[Exception | None]:
        return [TransientError("kafka unreachable") for _ in messages]


class OutboxHeld:
    """Holds the outbox's per-order locks in one service's session (see the module docstring)."""

    def __init__(self, services: Services, order_ids: list[str]) -> None:
        self.services, self.order_ids = services, order_ids

    def __enter__(self) -> OutboxHeld:
        for order_id in self.order_ids:
            self.services.db.query(
                "SELECT pg_advisory_lock(hashtextextended('outbox:' || :o, 0))", o=order_id
            )
        return self

    def __exit__(self, *exc: object) -> None:
        for order_id in self.order_ids:
            self.services.db.query(
                "SELECT pg_advisory_unlock(hashtextextended('outbox:' || :o, 0))", o=order_id
            )


def _unsent(pg_connection: Any, order_ids: list[str]) -> list[dict[str, Any]]:
    rows = pg_connection.run(
        "SELECT order_id, attempts, last_error FROM outbox"
        " WHERE order_id = ANY(CAST(:o AS text[])) AND published_at IS NULL ORDER BY id",
        o=order_ids,
    )
    return [{"order_id": r[0], "attempts": r[1], "last_error": r[2]} for r in rows]


def _outbox_event_ids(pg_connection: Any, order_id: str) -> list[str]:
    rows = pg_connection.run("SELECT event_id::text FROM outbox WHERE order_id = :o ORDER BY id", o=order_id)
    return [r[0] for r in rows]


@pytest.fixture
def topic_reader(make_consumer: Callable[..., Any]) -> Callable[[list[str], int], dict[str, list[str]]]:
    """``read(order_ids, expected_total) -> {order_id: [event_id, ...]}`` in topic order, from
    payment_events, waiting for that many messages and then a moment more (to see duplicates)."""

    def read(order_ids: list[str], expected_total: int) -> dict[str, list[str]]:
        import time

        wanted = set(order_ids)
        found: dict[str, list[str]] = {o: [] for o in order_ids}
        consumer = make_consumer("payment_events", consumer_timeout_ms=500)
        deadline, settle_until = time.monotonic() + 20, None
        while time.monotonic() < (settle_until or deadline):
            for message in consumer:
                key = message.key.decode() if message.key else None
                if key in wanted:
                    found[key].append(json.loads(message.value)["event_id"])
            if settle_until is None and sum(map(len, found.values())) >= expected_total:
                settle_until = time.monotonic() + 1.5
        consumer.close()
        return found

    return read


def _run_concurrently(relays: list[Services]) -> list[dict[str, int]]:
    results: list[dict[str, int]] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(relays))

    def run(services: Services) -> None:
        try:
            barrier.wait()
            results.append(relay_outbox(services))
        except BaseException as exc:  # surfaced below: a thread's exception is otherwise lost
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(s,)) for s in relays]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    return results


def test_events_wait_out_a_broker_outage_then_publish_once_in_order(
    new_card, make_services, dead_broker, pg_connection, topic_reader, payment_row
):
    services = make_services(publisher=dead_broker)
    order_ids = [str(uuid.uuid4()) for _ in range(4)]
    with OutboxHeld(services, order_ids):
        # the commands are handled and committed even though nothing can be published
        expected: dict[str, int] = {}
        for i, order_id in enumerate(order_ids):
            cmd = authorize_command(new_card(), order_id=order_id)
            follow = [
                [],
                [command("release_payment", order_id=order_id, runner_id="user_runner")],
                [command("revert_payment", order_id=order_id, reason="order cancelled")],
                [
                    command("release_payment", order_id=order_id, runner_id="user_runner"),
                    command("revert_payment", order_id=order_id, reason="refunded"),
                ],
            ][i]
            assert handle_command_batch(msk_event(cmd, *follow), None, services) == NO_FAILURES
            expected[order_id] = 1 + len(follow)
        assert [payment_row(o)["status"] for o in order_ids] == [
            "AUTHORIZED",
            "SUCCEEDED",
            "REVERTED",
            "REVERTED",
        ]

        report = outbox.relay(services.db, dead_broker)  # a scheduled pass during the outage
        assert report.failed >= sum(expected.values())
        waiting = _unsent(pg_connection, order_ids)
        assert Counter(r["order_id"] for r in waiting) == expected, "every event waits in the outbox"
        assert all(r["attempts"] >= 2 and r["last_error"] for r in waiting), "failures are recorded"
        assert outbox.backlog(services.db)[0] >= sum(expected.values())

    # the broker is back: two relays (plus the stack's own) run at once
    results = _run_concurrently([make_services(), make_services()])
    assert all(r["failed"] == 0 for r in results)
    assert _unsent(pg_connection, order_ids) == []

    published = topic_reader(order_ids, sum(expected.values()))
    for order_id in order_ids:
        assert published[order_id] == _outbox_event_ids(pg_connection, order_id), (
            "each outbox row exactly once, in the order's outbox order"
        )


def test_concurrent_relays_publish_no_row_twice(new_card, make_services, pg_connection, topic_reader):
    writer = make_services(publisher=Unreachable())
    order_ids = [str(uuid.uuid4()) for _ in range(8)]
    with OutboxHeld(writer, order_ids):
        for order_id in order_ids:
            cmd = authorize_command(new_card(), order_id=order_id)
            release = command("release_payment", order_id=order_id, runner_id="user_runner")
            assert handle_command_batch(msk_event(cmd, release), None, writer) == NO_FAILURES
        assert len(_unsent(pg_connection, order_ids)) == 2 * len(order_ids)
        relays = [make_services() for _ in range(3)]
        for relay in relays:  # connect first, so the race is on the outbox and not on start-up
            relay.db.query("SELECT 1")

    results = _run_concurrently(relays)
    assert _unsent(pg_connection, order_ids) == []
    assert sum(r["failed"] for r in results) == 0

    published = topic_reader(order_ids, 2 * len(order_ids))
    counts = Counter(event_id for ids in published.values() for event_id in ids)
    assert len(counts) == 2 * len(order_ids)
    assert set(counts.values()) == {1}, "no row published twice"
    for order_id in order_ids:
        assert published[order_id] == _outbox_event_ids(pg_connection, order_id)


# --- issue 19: draining a backlog -------------------------------------------------------------


def test_unsent_rows_are_read_through_their_partial_indexes(pg_connection):
    """With a backlog the size of a peak outage (100k unsent rows, inserted in a transaction
    that is rolled back, so no relay ever sees them), both reads of a publish use an index
    instead of scanning the backlog."""
    pg_connection.run("START TRANSACTION")
    try:
        pg_connection.run(
            "INSERT INTO outbox (event_id, order_id, event_type, envelope)"
            " SELECT gen_random_uuid(), 'explain-' || (g % 20000), 'payment.authorized', '{}'"
            " FROM generate_series(1, 100000) AS g"
        )
        pg_connection.run("ANALYZE outbox")  # counts this transaction's rows; rolled back too

        def plan(sql: str, **params: Any) -> str:
            return "\n".join(r[0] for r in pg_connection.run("EXPLAIN " + sql, **params))

        oldest = plan(outbox.ORDERS_OF_OLDEST_UNSENT, rows=800, limit=200)
        assert "Index Scan using outbox_unpublished_idx" in oldest, oldest
        assert "Seq Scan" not in oldest, oldest
        of_orders = plan(outbox.UNSENT_OF_ORDERS, orders=[f"explain-{i}" for i in range(200)])
        assert "Index Scan using outbox_unsent_by_order_idx" in of_orders, of_orders
        assert "Seq Scan" not in of_orders, of_orders
    finally:
        pg_connection.run("ROLLBACK")


def _backlog_of(services: Services, new_card: Callable[..., Any], orders: int) -> list[str]:
    """``orders`` authorized-then-released orders whose events (two each) all wait in the outbox."""
    order_ids = [str(uuid.uuid4()) for _ in range(orders)]
    for order_id in order_ids:
        cmd = authorize_command(new_card(), order_id=order_id)
        release = command("release_payment", order_id=order_id, runner_id="user_runner")
        assert handle_command_batch(msk_event(cmd, release), None, services) == NO_FAILURES
    return order_ids


def test_relay_stops_at_its_deadline_and_when_nothing_moves(
    new_card, make_services, pg_connection, scheduler_paused
):
    writer = make_services(publisher=Unreachable())
    order_ids = _backlog_of(writer, new_card, 2)
    assert len(_unsent(pg_connection, order_ids)) == 4

    # the invocation's time is already up: no batch starts, the backlog is still reported
    timed_out = relay_outbox(make_services(), deadline=time.monotonic() - 1)
    assert timed_out["batches"] == 0 and timed_out["published"] == 0
    assert timed_out["backlog"] >= 4
    assert len(_unsent(pg_connection, order_ids)) == 4

    # the broker is down: one batch fails and the relay returns instead of retrying at once
    down = relay_outbox(writer)
    assert down["batches"] == 1 and down["published"] == 0 and down["failed"] >= 4
    assert len(_unsent(pg_connection, order_ids)) == 4


def test_relay_drains_a_backlog_batch_after_batch_in_order(
    new_card, make_services, pg_connection, topic_reader, scheduler_paused
):
    writer = make_services(publisher=Unreachable())
    order_ids = _backlog_of(writer, new_card, 5)
    assert len(_unsent(pg_connection, order_ids)) == 10

    result = relay_outbox(make_services(), deadline=time.monotonic() + 60, batch_orders=2)
    assert _unsent(pg_connection, order_ids) == [], "one invocation drains the whole backlog"
    assert result["batches"] >= 4, "in batches of two orders, until one publishes nothing"
    assert result["published"] >= 10 and result["failed"] == 0
    assert result["backlog"] == 0

    published = topic_reader(order_ids, 10)
    for order_id in order_ids:
        assert published[order_id] == _outbox_event_ids(pg_connection, order_id), (
            "each outbox row exactly once, in the order's outbox order"
        )
