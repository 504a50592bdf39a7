"""The outbox: events are rows written in the same transaction as the change they announce,
then published to Kafka and marked sent. A row is never lost: if publishing fails it stays
unsent and the relay publishes it later. Per order, rows are published oldest first, and only
by one publisher at a time (an advisory lock per order), so an order's events keep their order.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from payments_core.adapters.kafka.kafka_gateway import EventPublisher, event_message
from payments_core.adapters.postgres import command_outcomes
from payments_core.adapters.postgres.db import Database
from payments_core.config import get_settings

# The two reads every publish makes; each has its partial index (WHERE published_at IS NULL),
# so their cost follows the batch, not the backlog (tests/integration/test_outbox_relay.py
# checks the plans).
# - The relay's batch: the orders of the oldest unsent rows (outbox_unpublished_idx, in id
#   order). Only the oldest rows are read, not every unsent row: grouping the whole backlog
#   made each batch cost a scan of it after an outage. The first :limit distinct orders by id
#   are the orders whose oldest unsent row is oldest; when orders have many rows the batch
#   simply holds fewer orders.
ORDERS_OF_OLDEST_UNSENT = """
    SELECT order_id FROM (
        SELECT order_id, id FROM outbox WHERE published_at IS NULL ORDER BY id LIMIT :rows
    ) AS oldest
    GROUP BY order_id ORDER BY min(id) LIMIT :limit
"""
# - The unsent rows of given orders, oldest first (outbox_unsent_by_order_idx, 0010; before it,
#   outbox_order_idx, which also walks the orders' published rows). Orders another
#   publisher holds are skipped: it publishes them in order, and we must not interleave. The
#   CTE takes each order's lock exactly once (a CTE with a volatile function is materialized),
#   so an order's rows are either all ours or all skipped.
UNSENT_OF_ORDERS = """
    WITH locked AS MATERIALIZED (
        SELECT o.order_id FROM unnest(CAST(:orders AS text[])) AS o(order_id)
        WHERE pg_try_advisory_xact_lock(hashtextextended('outbox:' || o.order_id, 0))
    )
    SELECT id, order_id, envelope FROM outbox
    WHERE published_at IS NULL AND order_id IN (SELECT order_id FROM locked)
    ORDER BY id
"""


_ENQUEUE_SQL = """
    INSERT INTO outbox (event_id, order_id, payment_id, event_type, envelope)
    VALUES (CAST(:event_id AS uuid), :order_id, CAST(:payment_id AS uuid), :event_type, :envelope)
    ON CONFLICT (event_id) DO UPDATE SET published_at = NULL
    RETURNING 1
"""


@dataclass(frozen=True)
class PublishReport:
    published: int
    failed: int


def enqueue(db: Database, envelope: dict, *, order_id: str, payment_id: str | None) -> None:
    """Write an event row, or re-queue the existing row with the same event_id (a
    re-announcement keeps the first envelope, so consumers see one id and one timestamp).
    Inside a command, the first event it enqueues is also recorded as its answer, in this same
    transaction (see command_outcomes)."""
    answer = command_outcomes.answer_params()
    db.execute(
        _ENQUEUE_SQL
        if answer is None
        else f"WITH queued AS ({_ENQUEUE_SQL}) {command_outcomes.RECORD_ANSWER_SQL}",
        event_id=envelope["event_id"],
        order_id=order_id,
        payment_id=payment_id,
        event_type=envelope["type"],
        envelope=json.dumps(envelope, separators=(",", ":")),
        **(answer or {}),
    )


def publish_orders(db: Database, publisher: EventPublisher, order_ids: list[str]) -> PublishReport:
    """Publish the unsent events of these orders (right after their transaction committed)."""
    if not order_ids:
        return PublishReport(0, 0)
    return _publish(db, publisher, sorted(set(order_ids)))


def publish_best_effort(db: Database, publisher: EventPublisher, order_ids: list[str]) -> None:
    """Publish right after commit; anything that fails stays in the outbox for the relay, so a
    broker outage never fails a command or a webhook whose change is already committed."""
    from payments_core.domain.errors import TransientError
    from payments_core.observability import logger

    try:
        report = publish_orders(db, publisher, order_ids)
    except TransientError as exc:
        logger.warning("events left in the outbox for the relay", extra={"reason": str(exc)})
        return
    if report.failed:
        logger.warning("events left in the outbox for the relay", extra={"failed": report.failed})


def relay(db: Database, publisher: EventPublisher, *, max_orders: int = 200) -> PublishReport:
    """Publish one batch of what is waiting: the orders of the oldest unsent rows, each order's
    rows all, oldest first."""
    rows = db.query(
        ORDERS_OF_OLDEST_UNSENT,
        rows=max_orders * 4,
        limit=max_orders,
    )
    return _publish(db, publisher, [str(r["order_id"]) for r in rows])


def backlog(db: Database) -> tuple[int, float]:
    """Unsent events and the age in seconds of the oldest, for the backlog metric."""
    rows = db.query(
        "SELECT count(*) AS n, coalesce(extract(epoch FROM now() - min(created_at)), 0) AS age"
        " FROM outbox WHERE published_at IS NULL"
    )
    return int(rows[0]["n"]), float(rows[0]["age"])


def _publish(db: Database, publisher: EventPublisher, order_ids: list[str]) -> PublishReport:
    if not order_ids:
        return PublishReport(0, 0)
    topic = get_settings().payment_events_topic
    with db.transaction():
        rows = db.query(
            UNSENT_OF_ORDERS,
            orders=order_ids,
        )
        if not rows:
            return PublishReport(0, 0)
        results = publisher.publish(
            [event_message(topic, str(r["order_id"]), str(r["envelope"])) for r in rows]
        )
        sent: list[int] = []
        failed: list[int] = []
        blocked_orders: set[str] = set()
        last_error = ""
        for row, error in zip(rows, results, strict=True):
            # After an order's first failure its later rows stay unsent too, so the relay
            # re-publishes them after the failed one, in order.
            if error is None and row["order_id"] not in blocked_orders:
                sent.append(int(row["id"]))
            else:
                blocked_orders.add(str(row["order_id"]))
                failed.append(int(row["id"]))
                last_error = last_error or str(error or "an earlier event of this order failed")[:500]
        if sent:
            db.execute(
                "UPDATE outbox SET published_at = now() WHERE id = ANY(CAST(:ids AS bigint[]))", ids=sent
            )
        if failed:
            db.execute(
                "UPDATE outbox SET attempts = attempts + 1, last_error = :err WHERE id = ANY(CAST(:ids AS bigint[]))",
                ids=failed,
                err=last_error,
            )
    return PublishReport(len(sent), len(failed))
