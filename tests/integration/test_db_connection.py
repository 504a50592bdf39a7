"""The service's database connection on the real local PostgreSQL (issue 12, defects 1 and 6).

A connection is killed the way a proxy or a database restart kills it: its backend is
terminated from another connection (``pg_terminate_backend``). Outside a transaction, a stale
connection is replaced once, transparently; an order's lease is a row and survives it."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from http import HTTPStatus
from typing import Any

import pytest
from conftest import authorize_command, command, msk_event, named_database
from payments_core.adapters.postgres.db import Database
from payments_core.adapters.stripe_api.stripe_gateway import StripeApiGateway
from payments_core.config import get_settings
from payments_core.domain.errors import TransientError
from payments_core.domain.payment import Payment
from payments_core.entrypoints.commands import handle_command_batch
from payments_core.usecases import queries, reconciliation

pytestmark = pytest.mark.integration

NO_FAILURES = {"batchItemFailures": []}


# --- helpers ---------------------------------------------------------------------------------


@pytest.fixture
def make_db(local_settings: Any) -> Iterator[Callable[..., Database]]:
    """``make_db(**options) -> Database`` on the local PostgreSQL, named by a unique
    application_name (so a test can see whether it opened another session); closed after."""
    made: list[Database] = []

    def factory(**options: Any) -> Database:
        name = options.pop("application_name", f"test-db-{uuid.uuid4().hex[:12]}")
        db = named_database(get_settings(), local_settings.postgres_port, name, **options)
        made.append(db)
        return db

    yield factory
    for db in made:
        db.close()


def backend_pid(db: Database) -> int:
    return int(db.query("SELECT pg_backend_pid() AS pid")[0]["pid"])


def terminate(admin: Any, pid: int) -> None:
    """Kill one session from the outside and wait until its backend is gone."""
    assert admin.run("SELECT pg_terminate_backend(:pid, 5000)", pid=pid) == [[True]]


def sessions_named(admin: Any, application_name: str) -> list[int]:
    rows = admin.run(
        "SELECT pid FROM pg_stat_activity WHERE application_name = :name AND pid <> pg_backend_pid()",
        name=application_name,
    )
    return [r[0] for r in rows]


def app_name(db: Database) -> str:
    return str(db._overrides["application_name"])


# --- defect 1: a lock lost with its connection is never "continued" on another ------------------


class KillsItsSessionAfterCapture:
    """The real gateway; after Stripe has captured, the database session that holds the
    order's lock is terminated (the proxy dropped it, the database restarted) before the
    release writes its outcome."""

    def __init__(self, inner: StripeApiGateway, db: Database, admin: Any) -> None:
        self.inner = inner
        self.db = db
        self.admin = admin
        self.captures = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def capture(self, payment: Payment, amount_cents: int | None = None) -> Any:
        self.captures += 1
        intent = self.inner.capture(payment, amount_cents)
        terminate(self.admin, backend_pid(self.db))
        return intent


def test_release_whose_connection_dies_after_capture_finishes_under_its_lease(
    new_card, authorize_handler, make_services, payment_row, make_pg_connection, localstripe_client
):
    """The lease is a row, not the session: a dropped connection loses nothing of it, so the
    release reconnects, its fenced transaction finds the lease still its own, and it finishes
    (issue 16: a session lock here died at once while Stripe was still acting)."""
    card = new_card()
    authorize = authorize_command(card, amount=1299)
    order_id = authorize["payload"]["order_id"]
    assert authorize_handler(msk_event(authorize)) == NO_FAILURES
    assert payment_row(order_id)["status"] == "AUTHORIZED"

    admin = make_pg_connection()
    services = make_services()
    killer = KillsItsSessionAfterCapture(StripeApiGateway(get_settings()), services.db, admin)
    services.stripe = killer  # type: ignore[assignment]  # a double with the gateway's methods
    release = command("release_payment", order_id=order_id, runner_id="user_runner")

    outcome = handle_command_batch(msk_event(release, first_offset=10), None, services)

    assert killer.captures == 1
    assert outcome == NO_FAILURES, outcome
    assert payment_row(order_id)["status"] == "SUCCEEDED"
    intent = localstripe_client.v1.payment_intents.retrieve(payment_row(order_id)["payment_intent_id"])
    assert intent.status == "succeeded" and intent.latest_charge["amount_refunded"] == 0
    lease = admin.run("SELECT holder FROM order_leases WHERE order_id = :o", o=order_id)
    assert lease == [[None]], "the lease was given back"


def test_a_stale_connection_outside_any_lock_is_replaced_transparently(make_db, make_pg_connection):
    db = make_db()
    admin = make_pg_connection()
    first = backend_pid(db)
    terminate(admin, first)  # as the proxy does after five idle minutes

    second = backend_pid(db)

    assert second != first
    assert sessions_named(admin, app_name(db)) == [second]
    terminate(admin, second)
    assert db.execute("SELECT 1") == 1, "execute is retried the same way"


def test_a_connection_dropped_inside_a_transaction_is_not_retried(make_db, make_pg_connection):
    db = make_db()
    admin = make_pg_connection()
    with pytest.raises(TransientError), db.transaction():
        pid = backend_pid(db)
        terminate(admin, pid)
        db.query("SELECT 1 AS one")
    assert sessions_named(admin, app_name(db)) == [], "the statement was not re-run elsewhere"
    assert backend_pid(db) != pid, "the next transaction starts on a new connection"


def test_the_first_command_and_get_after_a_quiet_spell_succeed(
    new_card, make_services, payment_row, make_pg_connection
):
    services = make_services()
    admin = make_pg_connection()
    terminate(admin, backend_pid(services.db))  # idle too long: the proxy dropped it
    authorize = authorize_command(new_card(), amount=1299)

    outcome = handle_command_batch(msk_event(authorize, first_offset=5), None, services)

    assert outcome == NO_FAILURES, "the command succeeded on its first delivery"
    assert payment_row(authorize["payload"]["order_id"])["status"] == "AUTHORIZED"
    terminate(admin, backend_pid(services.db))
    assert queries.health(services.db) == (HTTPStatus.OK, {"status": "ok", "database": "ok"})


def test_the_reconciler_survives_a_stale_connection(make_services, make_pg_connection):
    services = make_services()
    admin = make_pg_connection()
    terminate(admin, backend_pid(services.db))

    outcomes = reconciliation.reconcile(services)

    assert isinstance(outcomes, dict)
    assert backend_pid(services.db) > 0
