"""What an authorize costs the database (issue 19), and the lease behaviours that make it cheaper:
taken by the first transaction, given back by the last, a known money-call outcome written by
the holder's next statement. On the real local PostgreSQL."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from conftest import authorize_command, msk_event
from payments_core.adapters.postgres.db import Database
from payments_core.entrypoints.commands import handle_command_batch
from payments_core.usecases import leases
from payments_core.usecases.leases import LeaseBusy, LeaseLost

pytestmark = pytest.mark.integration

NO_FAILURES = {"batchItemFailures": []}
# One new authorize, batch included, each a single round trip: the batch's answered-records
# lookup; the transaction that takes the lease and writes the PENDING row with the create's
# intent, and its COMMIT; the one whose fence writes the money call's outcome and gives the lease
# back, then the payment and the event with the command's answer, and its COMMIT; the publish
# after the batch (select, mark, COMMIT). Each START goes with the statement after it. Before
# issue 19: 19 statements, each parameterised one in three round trips.
AUTHORIZE_ROUND_TRIPS = 11


def _order() -> str:
    return f"dbcost-{uuid.uuid4()}"


class Boom(Exception):
    pass


def test_an_authorize_makes_eleven_round_trips_and_three_transactions_with_its_batch(
    new_card, make_services, pg_connection, monkeypatch
):
    services = make_services()
    sent: list[str] = []
    run = Database._run

    def counting(self: Database, sql: str, params: dict[str, Any]) -> Any:
        if self is services.db:
            sent.append(" ".join(sql.split())[:60])
        return run(self, sql, params)

    monkeypatch.setattr(Database, "_run", counting)
    cmd = authorize_command(new_card())
    assert handle_command_batch(msk_event(cmd), None, services) == NO_FAILURES
    status = pg_connection.run(
        "SELECT status FROM payments WHERE order_id = :o", o=cmd["payload"]["order_id"]
    )
    assert status == [["AUTHORIZED"]]
    assert len(sent) == AUTHORIZE_ROUND_TRIPS, sent
    assert sum(s == "COMMIT" for s in sent) == 3, "the PENDING row, the outcome, the publish"
    calls = pg_connection.run(
        "SELECT action, outcome, finished_at IS NOT NULL FROM stripe_money_calls WHERE order_id = :o",
        o=cmd["payload"]["order_id"],
    )
    assert calls == [["create_hold", "ok", True]], "intent before the call, outcome after"
    lease = pg_connection.run(
        "SELECT holder FROM order_leases WHERE order_id = :o", o=cmd["payload"]["order_id"]
    )
    assert lease == [[None]], "given back"


def test_a_lease_taken_by_a_first_transaction_that_rolled_back_was_never_taken(make_services):
    mine, other = make_services(), make_services()
    settings = mine.settings
    order_id = _order()
    with leases.hold(mine.db, order_id, settings, take_with_first_transaction=True) as lease:
        with pytest.raises(Boom), mine.db.transaction():
            assert lease.token > 0, "taken by the transaction's first statement"
            raise Boom
        assert not lease.held()
        theirs = leases.acquire(other.db, order_id, ttl_s=30)
        assert theirs.token == lease.token, "the rolled-back take left the token where it was"
        with pytest.raises(LeaseLost):
            lease.renew()  # no Stripe call on a lease never taken
    # leaving the block must not release the other holder's lease (same token)
    with pytest.raises(LeaseBusy):
        leases.acquire(make_services().db, order_id, ttl_s=30)
    leases.release(theirs)


def test_a_first_transaction_meeting_a_held_lease_is_told_busy_and_writes_nothing(
    make_services, pg_connection
):
    mine, other = make_services(), make_services()
    settings = mine.settings
    order_id = _order()
    theirs = leases.acquire(other.db, order_id, ttl_s=30)
    with (
        pytest.raises(LeaseBusy),
        leases.hold(mine.db, order_id, settings, take_with_first_transaction=True),
        mine.db.transaction(),
    ):
        pytest.fail("the transaction's first statement must find the lease busy")
    assert pg_connection.run(
        "SELECT holder IS NOT NULL FROM order_leases WHERE order_id = :o", o=order_id
    ) == [[True]]
    leases.release(theirs)


def test_a_known_outcome_rides_on_the_next_transaction_and_the_last_one_gives_the_lease_back(
    make_services, pg_connection
):
    services = make_services()
    db, settings = services.db, services.settings
    order_id = _order()

    def call_row() -> list[list[Any]]:
        return pg_connection.run("SELECT outcome FROM stripe_money_calls WHERE order_id = :o", o=order_id)

    with leases.hold(db, order_id, settings) as lease:
        with lease.money_call("capture"):
            pass
        assert call_row() == [[None]], "not written on its own"
        with pytest.raises(Boom), db.transaction():
            raise Boom
        assert call_row() == [[None]], "rolled back with its transaction: still to write"
        lease.give_back_with_next_transaction()
        with db.transaction():
            db.execute("SELECT 1")
        assert call_row() == [["ok"]]
        free = pg_connection.run("SELECT holder FROM order_leases WHERE order_id = :o", o=order_id)
        assert free == [[None]], "given back with the transaction's commit"
        with pytest.raises(RuntimeError):
            lease.renew()  # the token still matches: the lease itself must refuse
    taken = leases.acquire(db, order_id, ttl_s=30)
    assert taken.token == lease.token + 1
    leases.release(taken)


def test_a_known_outcome_is_written_by_the_release_when_no_transaction_follows(make_services, pg_connection):
    services = make_services()
    db, settings = services.db, services.settings
    order_id = _order()
    with leases.hold(db, order_id, settings) as lease, lease.money_call("refund"):
        pass
    assert pg_connection.run("SELECT outcome FROM stripe_money_calls WHERE order_id = :o", o=order_id) == [
        ["ok"]
    ]
    assert pg_connection.run("SELECT holder FROM order_leases WHERE order_id = :o", o=order_id) == [[None]]
