"""The retention job against the local database: rows past their retention go, newer rows and
rows something still reads (the audit, a re-delivered command) stay.

Each test writes its own rows (unique order ids), backdated with SQL, and asserts on those rows
only: the job runs on whole tables, which other tests share."""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace

import pytest
from payments_core.adapters.postgres import command_outcomes
from payments_core.adapters.postgres.command_outcomes import CommandIdentity
from payments_core.adapters.postgres.db import Database
from payments_core.config import get_settings
from payments_core.usecases import retention

from local.stack.lambda_runtime import FakeLambdaContext, load_handler
from local.stack.scheduler import scheduled_event

pytestmark = pytest.mark.integration


@pytest.fixture
def db() -> Iterator[Database]:
    database = Database(get_settings())
    yield database
    database.close()


def _payment(
    db: Database, order_id: str, status: str, *, updated_days_ago: int, audit_due: bool = False
) -> None:
    # The reconciler runs every few seconds on the local stack: an audit-due time a day ahead and
    # no stale non-final payment keep it away from these rows while the test runs.
    db.execute(
        """
        INSERT INTO payments (payment_id, order_id, amount_cents, currency, status, updated_at, audit_due_at)
        VALUES (CAST(:p AS uuid), :o, 100, 'sgd', :s, now() - make_interval(days => :d),
                CASE WHEN :due THEN now() + interval '1 day' END)
        """,
        p=str(uuid.uuid4()),
        o=order_id,
        s=status,
        d=int(updated_days_ago),
        due=audit_due,
    )


def _lease(db: Database, order_id: str, *, expired_days_ago: int) -> None:
    db.execute(
        "INSERT INTO order_leases (order_id, holder, token, expires_at, acquired_at)"
        " VALUES (:o, NULL, 3, now() - make_interval(days => :d), now() - make_interval(days => :d))",
        o=order_id,
        d=int(expired_days_ago),
    )


def _money_call(db: Database, order_id: str, action: str, outcome: str, *, days_ago: int) -> int:
    rows = db.query(
        "INSERT INTO stripe_money_calls (order_id, action, lease_token, started_at, finished_at, outcome)"
        " VALUES (:o, :a, 1, now() - make_interval(days => :d), now() - make_interval(days => :d), :outcome)"
        " RETURNING id",
        o=order_id,
        a=action,
        outcome=outcome,
        d=int(days_ago),
    )
    return int(rows[0]["id"])


def _stripe_event(db: Database, event_id: str, *, days_ago: int) -> None:
    db.execute(
        "INSERT INTO stripe_events (stripe_event_id, event_type, received_at)"
        " VALUES (:e, 'payment_intent.succeeded', now() - make_interval(days => :d))",
        e=event_id,
        d=int(days_ago),
    )


def _published(db: Database, order_id: str, *, days_ago: int) -> str:
    """A published outbox row (never an unpublished one: the relay would publish it)."""
    event_id = str(uuid.uuid4())
    db.execute(
        "INSERT INTO outbox (event_id, order_id, event_type, envelope, created_at, published_at)"
        " VALUES (CAST(:e AS uuid), :o, 'payment.authorized', '{}',"
        "         now() - make_interval(days => :d), now() - make_interval(days => :d))",
        e=event_id,
        o=order_id,
        d=int(days_ago),
    )
    return event_id


def _outcome(db: Database, topic: str, offset: int, event_id: str, *, days_ago: int) -> CommandIdentity:
    identity = CommandIdentity(topic, 0, offset, hashlib.sha256(f"{topic}:{offset}".encode()).digest())
    db.execute(
        "INSERT INTO command_outcomes (topic, kafka_partition, kafka_offset, value_digest, event_id, recorded_at)"
        " VALUES (:t, 0, :o, :digest, CAST(:e AS uuid), now() - make_interval(days => :d))",
        t=topic,
        o=offset,
        digest=identity.value_digest,
        e=event_id,
        d=int(days_ago),
    )
    return identity


def _exists(db: Database, table: str, where: str, **params: object) -> bool:
    return bool(db.query(f"SELECT 1 FROM {table} WHERE {where}", **params))  # noqa: S608 - test's own SQL


@dataclass
class Rows:
    u: str
    topic: str
    answered_recently: CommandIdentity  # its answer (outbox row A) must survive
    answered_long_ago: CommandIdentity  # past Kafka's retention: the outcome and its row go
    outbox: dict[str, str]  # name -> event_id
    calls: dict[str, int]  # name -> money call id


@pytest.fixture
def rows(db: Database) -> Rows:
    u = uuid.uuid4().hex[:10]
    settled, audit, open_, recent = (f"ret-{u}-{n}" for n in ("settled", "audit", "open", "recent"))
    _payment(db, settled, "SUCCEEDED", updated_days_ago=40)
    _payment(db, audit, "REVERTED", updated_days_ago=40, audit_due=True)  # the audit still needs it
    _payment(db, open_, "AUTHORIZED", updated_days_ago=0)  # not over: its hold may be released
    _payment(db, recent, "FAILED", updated_days_ago=2)  # over, but only 2 days ago
    # every lease expired 10 days ago; only the settled payment has been over for that long
    for order_id in (settled, audit, open_, recent):
        _lease(db, order_id, expired_days_ago=10)
    calls = {
        "settled_old": _money_call(db, settled, "capture", "succeeded", days_ago=40),
        "settled_new": _money_call(db, settled, "transfer", "succeeded", days_ago=10),
        "audit_unknown": _money_call(db, audit, "refund", "unknown", days_ago=40),
        "audit_lost": _money_call(db, audit, "cancel", "lost", days_ago=40),
        "open_old": _money_call(db, open_, "create_hold", "succeeded", days_ago=40),
    }
    _stripe_event(db, f"evt_ret_{u}_old", days_ago=31)
    _stripe_event(db, f"evt_ret_{u}_new", days_ago=29)

    # One order's outbox, oldest first: A answered a command recorded recently (a re-delivery may
    # still ask for it), B nobody names, C answered a command recorded past Kafka's retention,
    # D the order's latest event. All published 10 days ago.
    order = f"ret-{u}-outbox"
    outbox = {name: _published(db, order, days_ago=10) for name in "ABCD"}
    # A second order: an old row followed by a recent one (kept: too new) that is its latest.
    other = f"ret-{u}-outbox2"
    outbox["E_recent"] = _published(db, other, days_ago=1)
    outbox["F_latest"] = _published(db, other, days_ago=1)
    outbox["G_alone"] = _published(db, f"ret-{u}-outbox3", days_ago=30)  # its order's only row
    topic = f"ret-{u}"
    return Rows(
        u=u,
        topic=topic,
        answered_recently=_outcome(db, topic, 1, outbox["A"], days_ago=1),
        answered_long_ago=_outcome(db, topic, 2, outbox["C"], days_ago=9),
        outbox=outbox,
        calls=calls,
    )


def _assert_exactly_the_old_rows_went(db: Database, r: Rows) -> None:
    u = r.u
    lease = lambda n: _exists(db, "order_leases", "order_id = :o", o=f"ret-{u}-{n}")  # noqa: E731
    assert not lease("settled"), "the lease of a settled payment over for 40 days stays"
    assert lease("audit"), "the lease of an audit-due payment went"
    assert lease("open"), "the lease of a payment not over went"
    assert lease("recent"), "the lease of a payment over for only 2 days went"

    call = lambda n: _exists(db, "stripe_money_calls", "id = :i", i=r.calls[n])  # noqa: E731
    assert not call("settled_old")
    assert call("settled_new"), "a money call younger than its 30 days went"
    assert call("audit_unknown") and call("audit_lost"), "an in-doubt call of an audit-due payment went"
    assert call("open_old"), "a money call of a payment not over went"

    assert not _exists(db, "stripe_events", "stripe_event_id = :e", e=f"evt_ret_{u}_old")
    assert _exists(db, "stripe_events", "stripe_event_id = :e", e=f"evt_ret_{u}_new")

    outcome = lambda i: _exists(  # noqa: E731
        db, "command_outcomes", "topic = :t AND kafka_offset = :o", t=r.topic, o=i.offset
    )
    assert outcome(r.answered_recently)
    assert not outcome(r.answered_long_ago)

    kept = {n for n, e in r.outbox.items() if _exists(db, "outbox", "event_id = CAST(:e AS uuid)", e=e)}
    # A: named by a kept outcome; D, F, G: their order's latest; E: too recent.
    # B: nobody's; C: its outcome went first, in the same run.
    assert kept == {"A", "D", "E_recent", "F_latest", "G_alone"}


def test_the_job_deletes_exactly_the_rows_past_their_retention(db: Database, rows: Rows) -> None:
    handler = load_handler("retain_data")
    answer = handler(scheduled_event("campusg-local-retain-data"), FakeLambdaContext("retain_data", 120))
    assert answer["complete"] is True
    deleted = answer["deleted"]
    # at least this test's own (the shared tables may hold other expired rows)
    assert deleted["order_leases"] >= 1 and deleted["stripe_money_calls"] >= 1
    assert deleted["stripe_events"] >= 1 and deleted["command_outcomes"] >= 1 and deleted["outbox"] >= 2
    _assert_exactly_the_old_rows_went(db, rows)

    # The redelivery of the recently answered command still gets its first answer back, and
    # does not re-queue it: the order's later events (D) are still there, so A is not the latest.
    again = command_outcomes.reannounce(db, rows.answered_recently)
    assert again is not None and again.event_id == rows.outbox["A"] and again.requeued is False
    # One answered past Kafka's retention can no longer be re-delivered; it is simply unknown.
    assert command_outcomes.reannounce(db, rows.answered_long_ago) is None

    # Nothing left to do: a second run deletes none of the rows kept.
    handler(scheduled_event("campusg-local-retain-data"), FakeLambdaContext("retain_data", 120))
    _assert_exactly_the_old_rows_went(db, rows)


def test_small_batches_delete_the_same_rows(db: Database, rows: Rows) -> None:
    settings = get_settings()
    small = replace(settings, retention=replace(settings.retention, batch_rows=1))
    report = retention.run(db, small)
    assert report.complete
    _assert_exactly_the_old_rows_went(db, rows)


def test_a_run_past_its_deadline_stops_before_deleting_and_says_so(db: Database, rows: Rows) -> None:
    report = retention.run(db, get_settings(), deadline=time.monotonic() - 1)
    assert report.complete is False
    assert sum(report.deleted.values()) == 0
    assert _exists(db, "order_leases", "order_id = :o", o=f"ret-{rows.u}-settled")
    assert _exists(db, "stripe_events", "stripe_event_id = :e", e=f"evt_ret_{rows.u}_old")
