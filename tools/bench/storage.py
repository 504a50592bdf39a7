"""make bench (j): bytes stored per payment and table sizes, before and after retention.

make bench, section (j): bytes stored per payment, and the table sizes, before and after a
retention run (issue 19, bounded storage).

In a scratch database (created, migrated, dropped here, so no test's leftovers count): ``orders``
orders go through the service's own code, as in AWS: an authorize and a release per order
through the MSK batch handler (payments_core.entrypoints.commands, Stripe answered by the bench's zero-latency
double, events published to the local Kafka), and the webhooks Stripe sends for it recorded by
repository.record_stripe_event (``webhooks_per_order`` ids: payment_intent.amount_capturable_updated,
payment_intent.succeeded, charge.succeeded). Then every row is made 500 days old, the retention
job runs with the default periods, and the tables are rewritten (VACUUM FULL) so their size is
what the kept rows need: in service, autovacuum makes the space of deleted rows reusable rather
than giving it back, so a table stops growing instead of shrinking.

Sizes are pg_total_relation_size (heap, indexes, TOAST) per table; bytes per payment is their
sum divided by the orders."""

from __future__ import annotations

import uuid
from typing import Any

from tools.bench.harness import InstantStripe, authorize, run_batches
from tools.bench.report import Report, Row, say

# Everything a payment leaves behind, in the order shown.
TABLES = (
    "payments",
    "outbox",
    "stripe_events",
    "command_outcomes",
    "stripe_money_calls",
    "order_leases",
    "payments_archive",
    "user_payment_totals",
)
WEBHOOK_TYPES = ("payment_intent.amount_capturable_updated", "payment_intent.succeeded", "charge.succeeded")
_AGE_EVERYTHING = (
    "UPDATE payments SET created_at = created_at - interval '500 days', updated_at = updated_at - interval"
    " '500 days', audit_due_at = NULL",
    "UPDATE outbox SET created_at = created_at - interval '500 days', published_at = coalesce(published_at,"
    " now()) - interval '500 days'",
    "UPDATE stripe_events SET received_at = received_at - interval '500 days'",
    "UPDATE command_outcomes SET recorded_at = recorded_at - interval '500 days'",
    "UPDATE stripe_money_calls SET started_at = started_at - interval '500 days',"
    " finished_at = finished_at - interval '500 days'",
    "UPDATE order_leases SET expires_at = expires_at - interval '500 days'",
)


def table_sizes(db: Any) -> dict[str, dict[str, int]]:
    """Per table: rows, and bytes of heap, indexes, TOAST and their total."""
    found: dict[str, dict[str, int]] = {}
    for table in TABLES:
        row = db.query(
            "SELECT pg_total_relation_size(c.oid) AS total, pg_relation_size(c.oid) AS heap,"
            " pg_indexes_size(c.oid) AS indexes,"
            " coalesce(pg_total_relation_size(nullif(c.reltoastrelid, 0)), 0) AS toast"
            " FROM pg_class c WHERE c.oid = to_regclass(:t)",
            t=table,
        )[0]
        rows = db.query(f"SELECT count(*) AS n FROM {table}")[0]["n"]  # noqa: S608 - names from TABLES
        found[table] = {"rows": int(rows), **{k: int(v) for k, v in row.items()}}
    return found


def describe(sizes: dict[str, dict[str, int]]) -> str:
    """One line per table: rows and kB (heap + indexes + TOAST)."""
    return "; ".join(
        f"{t} {s['rows']} rows {s['total'] / 1024:.0f} kB"
        f" ({s['heap'] / 1024:.0f} heap + {s['indexes'] / 1024:.0f} idx + {s['toast'] / 1024:.0f} toast)"
        for t, s in sizes.items()
    )


def bench_storage(report: Report, orders: int) -> None:
    """Section (j)."""
    from payments_core.adapters.kafka.kafka_gateway import KafkaEventPublisher
    from payments_core.adapters.postgres import migrate, repository
    from payments_core.adapters.postgres.db import Database
    from payments_core.adapters.services import Services
    from payments_core.config import get_settings
    from payments_core.usecases import retention

    from local.stack.settings import DB_NAME, DB_PASSWORD, DB_USER, HOST
    from local.stack.settings import load as load_local_settings

    local = load_local_settings()
    scratch = f"bench_storage_{uuid.uuid4().hex[:10]}"
    owner = dict(user=DB_USER, password=DB_PASSWORD, host=HOST, port=local.postgres_port)
    admin = Database(get_settings(), **owner, database=DB_NAME)
    admin.execute(f"CREATE DATABASE {scratch}")  # a constant prefix and hex digits
    settings = get_settings()
    db = Database(settings, **owner, database=scratch)
    try:
        say(f"(j) {orders} orders (authorize, release, webhooks) in a scratch database ...")
        migrate.apply_migrations(db)
        stripe: Any = InstantStripe()
        services = Services(db=db, stripe=stripe, publisher=KafkaEventPublisher(settings), settings=settings)
        order_ids = [f"bench-j-{uuid.uuid4()}" for _ in range(orders)]
        authorized = run_batches(services, [authorize(o, "cus_bench", "pm_bench") for o in order_ids], 50)
        released = run_batches(
            services,
            [_release(o) for o in order_ids],
            50,
        )
        for order_id in order_ids:
            payment = repository.get_by_order_id(db, order_id)
            for event_type in WEBHOOK_TYPES:
                repository.record_stripe_event(
                    db,
                    f"evt_{uuid.uuid4().hex[:24]}",
                    event_type,
                    payment.payment_intent_id if payment else None,
                )
        statuses = {
            r["status"]: int(r["n"])
            for r in db.query("SELECT status, count(*) AS n FROM payments GROUP BY 1")
        }
        before = table_sizes(db)
        for statement in _AGE_EVERYTHING:
            db.execute(statement)
        db.execute("ANALYZE")  # as autovacuum would have by then: a new database has no statistics
        r = retention.run(db, settings)
        db.execute("VACUUM FULL")  # outside a transaction: pg8000.native autocommits
        after = table_sizes(db)
    finally:
        db.close()
        admin.execute(f"DROP DATABASE IF EXISTS {scratch} WITH (FORCE)")
        admin.close()

    setup = (
        f"{orders} orders through the authorize function's batch handler (zero-latency Stripe double): "
        f"authorize + release each ({authorized.item_failures + released.item_failures} item failures; "
        f"payments {statuses}), {len(WEBHOOK_TYPES)} webhook ids each"
    )
    live = sum(s["total"] for s in before.values())
    kept = sum(s["total"] for s in after.values())
    report.add(
        Row(
            "storage_bytes_per_payment",
            "bytes stored per payment (live)",
            round(live / orders),
            "B",
            note=f"{setup}; tables: {describe(before)}",
            figures={"orders": orders, "tables": before},
        )
    )
    report.add(
        Row(
            "storage_bytes_per_payment_archived",
            "bytes stored per payment (after retention)",
            round(kept / orders),
            "B",
            note=(
                f"the same rows made 500 days old, the retention job run with its default periods "
                f"(deleted or archived: {r.deleted}; complete: {r.complete}), then VACUUM FULL; "
                f"tables: {describe(after)}"
            ),
            figures={"orders": orders, "retention": r.as_dict(), "tables": after},
        )
    )


def _release(order_id: str) -> dict[str, Any]:
    """release_payment as the saga sends it over Kafka; the runner has no Connect account here (no
    user service in the bench), so nothing is transferred."""
    return {
        "type": "release_payment",
        "correlation_id": str(uuid.uuid4()),
        "timestamp": "2025-03-31T09:30:00.000000",
        "payload": {"order_id": order_id, "runner_id": "user_bench_runner"},
    }
