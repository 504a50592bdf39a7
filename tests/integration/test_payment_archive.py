"""Issue 19, bounded storage: old payments move to the archive (payments_core.adapters.postgres.archive, run by the
retention job) on the real local PostgreSQL, and nothing the service answers changes: history
totals, the status routes, and a re-sent command of an archived order (a duplicate, never a new
hold, never a refund).

Each test writes its own rows (unique user and order ids) and asserts on those only: the job
runs on whole tables, which other tests share."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests
from conftest import Card, authorize_command, command, msk_event
from payments_core.adapters.postgres.db import Database
from payments_core.config import get_settings
from payments_core.domain.payment import event_id_for
from payments_core.usecases import queries, retention

from local.stack.settings import LocalSettings

pytestmark = pytest.mark.integration

OLD = 500  # days: past RETAIN_PAYMENTS_DAYS (400)


@pytest.fixture
def db() -> Iterator[Database]:
    database = Database(get_settings())
    yield database
    database.close()


def _payment(
    db: Database,
    order_id: str,
    status: str,
    *,
    days_ago: int,
    customer: str | None = None,
    runner: str | None = None,
    amount: int = 1000,
    captured: int | None = None,
    currency: str = "sgd",
    audit_due: bool = False,
) -> str:
    payment_id = str(uuid.uuid4())
    # An audit due a day ahead keeps the stack's reconciler away from the row while the test runs.
    db.execute(
        """
        INSERT INTO payments (payment_id, order_id, clerk_user_id, runner_id, amount_cents,
                              captured_amount_cents, currency, status, created_at, updated_at, audit_due_at)
        VALUES (CAST(:p AS uuid), :o, :c, :r, :a, :cap, :cur, :s,
                now() - make_interval(days => :d), now() - make_interval(days => :d),
                CASE WHEN :due THEN now() + interval '1 day' END)
        """,
        p=payment_id,
        o=order_id,
        c=customer,
        r=runner,
        a=amount,
        cap=captured,
        cur=currency,
        s=status,
        d=days_ago,
        due=audit_due,
    )
    return payment_id


def _count(db: Database, table: str, order_id: str) -> int:
    sql = f"SELECT count(*) AS n FROM {table} WHERE order_id = :o"  # noqa: S608 - the test's own names
    return int(db.query(sql, o=order_id)[0]["n"])


def _history(local_settings: LocalSettings, db: Database, user: str) -> dict[str, Any]:
    """The history as the saga's route answers it (the API function on the local stack), checked
    to equal what queries.history computes in this process."""
    response = requests.get(f"{local_settings.api_url}/history/{user}", timeout=10)
    assert response.status_code == 200, response.text
    assert response.json() == queries.history(db, user)[1]
    return dict(response.json())


def test_history_totals_are_the_same_before_and_after_archiving(
    db: Database, local_settings: LocalSettings, local_stack: LocalSettings, scheduler_paused: None
) -> None:
    """(The stack's relay is paused: it would publish the row left unsent on purpose.)"""
    u = uuid.uuid4().hex[:8]
    me, other = f"user_arc_{u}", f"user_arc_{u}_other"
    o = lambda n: f"arc-{u}-{n}"  # noqa: E731
    # Spent as customer: old SUCCEEDED (one partly captured), a live AUTHORIZED hold, in two
    # currencies; REVERTED and FAILED count nothing. Earned as runner: an old SUCCEEDED.
    _payment(db, o("s1"), "SUCCEEDED", days_ago=OLD, customer=me, runner=other, amount=1299)
    _payment(db, o("s2"), "SUCCEEDED", days_ago=OLD + 30, customer=me, amount=2000, captured=1500)
    _payment(db, o("usd"), "SUCCEEDED", days_ago=OLD, customer=me, amount=700, currency="usd")
    _payment(db, o("rev"), "REVERTED", days_ago=OLD, customer=me, amount=900)
    _payment(db, o("fail"), "FAILED", days_ago=OLD, customer=me, amount=800)
    _payment(db, o("held"), "AUTHORIZED", days_ago=1, customer=me, amount=450)
    _payment(db, o("new"), "SUCCEEDED", days_ago=3, customer=me, amount=333)  # over, but recent
    _payment(db, o("earned"), "SUCCEEDED", days_ago=OLD, customer=other, runner=me, amount=1100)
    # Old and over, but something still needs them live:
    _payment(db, o("audit"), "SUCCEEDED", days_ago=OLD, customer=me, amount=100, audit_due=True)
    _payment(db, o("call"), "SUCCEEDED", days_ago=OLD, customer=me, amount=200)
    db.execute(
        "INSERT INTO stripe_money_calls (order_id, action, lease_token, started_at)"
        " VALUES (:o, 'transfer', 1, now() - interval '500 days')",
        o=o("call"),
    )  # open: its outcome was never written
    _payment(db, o("unsent"), "SUCCEEDED", days_ago=OLD, customer=me, amount=300)
    db.execute(
        "INSERT INTO outbox (event_id, order_id, event_type, envelope) VALUES (CAST(:e AS uuid), :o, 'x', '{}')",
        e=str(uuid.uuid4()),
        o=o("unsent"),
    )  # not published yet
    _payment(db, o("leased"), "SUCCEEDED", days_ago=OLD, customer=me, amount=400)
    db.execute(
        "INSERT INTO order_leases (order_id, holder, token, expires_at)"
        " VALUES (:o, 'a-command', 7, now() + interval '1 minute')",
        o=o("leased"),
    )  # a command is working on it right now
    # Rows of an archived order that go with it: published events, a finished call, its lease.
    db.execute(
        "INSERT INTO outbox (event_id, order_id, event_type, envelope, published_at)"
        " VALUES (CAST(:e AS uuid), :o, 'payment.released', '{}', now() - interval '500 days')",
        e=str(uuid.uuid4()),
        o=o("s1"),
    )
    db.execute(
        "INSERT INTO stripe_money_calls (order_id, action, lease_token, started_at, finished_at, outcome)"
        " VALUES (:o, 'capture', 1, now() - interval '500 days', now() - interval '500 days', 'ok')",
        o=o("s1"),
    )
    db.execute(
        "INSERT INTO order_leases (order_id, holder, token, expires_at)"
        " VALUES (:o, NULL, 4, now() - interval '500 days')",
        o=o("s1"),
    )

    before = {user: _history(local_settings, db, user) for user in (me, other)}
    assert before[me]["byCurrency"] == [
        {"currency": "sgd", "spentCents": 1299 + 1500 + 450 + 333 + 100 + 200 + 300 + 400, "earnedCents": 1100,
         "spentCount": 8, "earnedCount": 1},
        {"currency": "usd", "spentCents": 700, "earnedCents": 0, "spentCount": 1, "earnedCount": 0},
    ]  # fmt: skip

    report = retention.run(db, get_settings())
    assert report.complete and report.deleted["payments"] >= 6

    archived = {"s1", "s2", "usd", "rev", "fail", "earned"}
    kept = {"held", "new", "audit", "call", "unsent", "leased"}
    for name in archived:
        assert _count(db, "payments", o(name)) == 0, name
        assert _count(db, "payments_archive", o(name)) == 1, name
    for name in kept:
        assert _count(db, "payments", o(name)) == 1, name
        assert _count(db, "payments_archive", o(name)) == 0, name
    for table in ("outbox", "stripe_money_calls", "order_leases"):
        assert _count(db, table, o("s1")) == 0, table
    assert _count(db, "order_leases", o("leased")) == 1  # the command's lease is untouched
    assert _count(db, "outbox", o("unsent")) == 1 and _count(db, "stripe_money_calls", o("call")) == 1

    after = {user: _history(local_settings, db, user) for user in (me, other)}
    assert after == before
    rolled = db.query(
        "SELECT role, currency, status, payment_count, amount_cents FROM user_payment_totals"
        " WHERE user_id = :u ORDER BY role, currency, status",
        u=me,
    )
    assert [tuple(r.values()) for r in rolled] == [
        ("customer", "sgd", "FAILED", 1, 800),
        ("customer", "sgd", "REVERTED", 1, 900),
        ("customer", "sgd", "SUCCEEDED", 2, 1299 + 1500),
        ("customer", "usd", "SUCCEEDED", 1, 700),
        ("runner", "sgd", "SUCCEEDED", 1, 1100),
    ]

    # A second run archives none of the kept ones and counts nothing twice.
    retention.run(db, get_settings())
    assert {user: _history(local_settings, db, user) for user in (me, other)} == before


@pytest.fixture
def archived_order(
    db: Database,
    new_card: Callable[..., Card],
    authorize_handler: Callable[[dict], dict],
    intents_for_order: Callable[[Card, str], list[Any]],
) -> Iterator[tuple[dict[str, Any], Card, dict[str, Any]]]:
    """A real authorize (a hold at localstripe), made an old, settled SUCCEEDED payment whose
    events were published, then archived: (its authorize command, its card, its archive row)."""
    card = new_card()
    cmd = authorize_command(card)
    order_id = cmd["payload"]["order_id"]
    assert authorize_handler(msk_event(cmd, first_offset=1)) == {"batchItemFailures": []}
    db.execute(
        "UPDATE payments SET status = 'SUCCEEDED', captured_amount_cents = amount_cents, runner_id = 'user_arc_runner',"
        " audit_due_at = NULL, updated_at = now() - interval '500 days' WHERE order_id = :o",
        o=order_id,
    )
    db.execute("UPDATE outbox SET published_at = now() WHERE order_id = :o", o=order_id)
    retention.run(db, get_settings())
    rows = db.query("SELECT * FROM payments_archive WHERE order_id = :o", o=order_id)
    assert len(rows) == 1 and _count(db, "payments", order_id) == 0 and _count(db, "outbox", order_id) == 0
    assert len(intents_for_order(card, order_id)) == 1
    yield cmd, card, rows[0]


def test_an_archived_order_sent_again_is_a_duplicate_not_a_new_hold(
    db: Database,
    archived_order: tuple[dict[str, Any], Card, dict[str, Any]],
    authorize_handler: Callable[[dict], dict],
    intents_for_order: Callable[[Card, str], list[Any]],
    outbox_rows: Callable[[str], list[dict[str, Any]]],
) -> None:
    cmd, card, row = archived_order
    order_id = cmd["payload"]["order_id"]
    again = {**cmd, "correlation_id": str(uuid.uuid4())}  # the saga sends it once more
    assert authorize_handler(msk_event(again, first_offset=2)) == {"batchItemFailures": []}

    assert _count(db, "payments", order_id) == 0, "a new payment row was written"
    assert len(intents_for_order(card, order_id)) == 1, "a second hold was placed"
    # Answered with the payment's own outcome, under the id it was first announced with.
    (event,) = outbox_rows(order_id)
    assert event["event_type"] == "payment.released"
    assert event["event_id"] == event_id_for(str(row["payment_id"]), "SUCCEEDED")
    assert '"status":"SUCCEEDED"' in event["envelope"]


def test_release_and_revert_of_an_archived_payment_move_no_money(
    db: Database,
    archived_order: tuple[dict[str, Any], Card, dict[str, Any]],
    authorize_handler: Callable[[dict], dict],
    outbox_rows: Callable[[str], list[dict[str, Any]]],
    local_settings: LocalSettings,
) -> None:
    cmd, _card, row = archived_order
    order_id, payment_id = cmd["payload"]["order_id"], str(row["payment_id"])
    # The status routes still find it.
    status = requests.get(f"{local_settings.api_url}/payment/{order_id}/status", timeout=10)
    assert status.status_code == 200 and status.json()["payment"]["status"] == "SUCCEEDED"
    details = requests.get(f"{local_settings.api_url}/payment/{payment_id}/details", timeout=10)
    assert details.status_code == 200 and details.json()["payment"]["orderId"] == order_id

    release = command("release_payment", payment_id=payment_id, runner_id="user_arc_runner")
    revert = command("revert_payment", payment_id=payment_id, reason="too late")
    assert authorize_handler(msk_event(release, revert, first_offset=3)) == {"batchItemFailures": []}
    events = {e["event_type"]: e["envelope"] for e in outbox_rows(order_id)}
    assert set(events) == {"payment.released", "payment.failed"}, events
    assert '"status":"SUCCEEDED"' in events["payment.released"]  # the release: announced again
    assert (
        '"error":"REVERT_FAILED"' in events["payment.failed"]
        and "Stripe Dashboard" in events["payment.failed"]
    )
    archived = db.query("SELECT status, refund_id FROM payments_archive WHERE order_id = :o", o=order_id)
    assert archived == [{"status": "SUCCEEDED", "refund_id": None}]
    assert _count(db, "payments", order_id) == 0


def test_archived_payments_go_after_their_own_period_and_their_totals_stay(
    db: Database, local_settings: LocalSettings, local_stack: LocalSettings
) -> None:
    u = uuid.uuid4().hex[:8]
    me = f"user_arc_{u}"
    expired, kept = f"arc-{u}-7y", f"arc-{u}-6y"
    _payment(db, expired, "SUCCEEDED", days_ago=2600, customer=me, amount=1200)  # past 2557 days
    _payment(db, kept, "SUCCEEDED", days_ago=2000, customer=me, amount=800)
    retention.run(db, get_settings())  # archived in this run (past 400 days) ...
    assert _count(db, "payments", expired) == 0 and _count(db, "payments", kept) == 0
    totals = _history(local_settings, db, me)
    assert totals["byCurrency"][0]["spentCents"] == 2000 and totals["spentCount"] == 2
    # ... and the one past the archive's period deleted in the same run, or at the latest the next.
    retention.run(db, get_settings())
    assert _count(db, "payments_archive", expired) == 0, "an archived payment outlived its 7 years"
    assert _count(db, "payments_archive", kept) == 1
    assert _history(local_settings, db, me) == totals  # the roll-ups still count it


def test_an_authorize_racing_the_archiving_of_its_order_waits_and_is_a_duplicate(
    db: Database,
    new_card: Callable[..., Card],
    authorize_handler: Callable[[dict], dict],
    intents_for_order: Callable[[Card, str], list[Any]],
) -> None:
    """The archiving transaction holds the order's lease until it commits: an authorize of the
    same order arriving meanwhile waits for it, then finds the archive (without the lease, its
    INSERT would wait for the live row's DELETE only, then write a new payment and hold)."""
    import threading

    from payments_core.adapters.postgres import archive

    card = new_card()
    cmd = authorize_command(card)
    order_id = cmd["payload"]["order_id"]
    assert authorize_handler(msk_event(cmd, first_offset=1)) == {"batchItemFailures": []}
    db.execute(
        "UPDATE payments SET status = 'SUCCEEDED', captured_amount_cents = amount_cents, audit_due_at = NULL,"
        " updated_at = now() - interval '500 days' WHERE order_id = :o",
        o=order_id,
    )
    db.execute("UPDATE outbox SET published_at = now() WHERE order_id = :o", o=order_id)
    # Its lease row went long ago (RETAIN_ORDER_LEASES_DAYS): nothing to wait on but the claim.
    db.execute("DELETE FROM order_leases WHERE order_id = :o", o=order_id)

    answers: list[dict] = []
    again = threading.Thread(
        target=lambda: answers.append(authorize_handler(msk_event(cmd, first_offset=2))), daemon=True
    )
    with db.transaction():  # archive_batch's statements, held open while the authorize arrives
        claimed = [
            str(r["order_id"])
            for r in db.query(archive._CLAIM_SQL, final=list(archive.FINAL), days=400, n=1000)
        ]
        assert order_id in claimed
        db.query(archive._MOVE_SQL, orders=claimed)
        for sql in archive._LEFTOVERS_SQL:
            db.execute(sql, orders=claimed)
        again.start()
        again.join(timeout=1.5)
        assert again.is_alive(), "the authorize did not wait for the archiving transaction"
    again.join(timeout=30)
    assert answers == [{"batchItemFailures": []}]
    assert _count(db, "payments", order_id) == 0, "a new payment row was written"
    assert _count(db, "payments_archive", order_id) == 1
    assert len(intents_for_order(card, order_id)) == 1, "a second hold was placed"
