"""Database's connection rules with a fake pg8000 connection (issue 12 defect 6, issue 16): what
may be retried on a new connection, what must abort because a transaction was lost, and the
lease fence. The real PostgreSQL cases are in
tests/integration/test_db_connection.py."""

from __future__ import annotations

from typing import Any

import pytest
from payments_core.adapters.postgres.db import Database
from payments_core.config import get_settings
from payments_core.domain.errors import TransientError
from pg8000.exceptions import DatabaseError, InterfaceError


class FakeConnection:
    """Answers what Database asks; ``dead`` makes every statement fail as a dropped
    connection does; ``errors`` maps an SQL fragment to the error its statement raises."""

    def __init__(self, number: int, log: list[tuple[int, str, dict[str, Any]]]) -> None:
        self.number = number
        self.log = log
        self.dead = False
        self.errors: dict[str, Exception] = {}
        self.columns: list[dict[str, str]] | None = None
        self.row_count = -1
        self.closed = False

    def run(self, sql: str, **params: Any) -> list[list[Any]] | None:
        self.log.append((self.number, sql, params))
        if self.dead:
            raise InterfaceError("network error")
        for fragment, error in self.errors.items():
            if fragment in sql:
                raise error
        self.columns, self.row_count = None, 1
        if sql.startswith("SELECT 1"):
            self.columns = [{"name": "one"}]
            return [[1]]
        return []

    def close(self) -> None:
        self.closed = True


class FakeDatabase(Database):
    def __init__(self, **options: Any) -> None:
        super().__init__(get_settings(), **options)
        self.opened: list[FakeConnection] = []
        self.log: list[tuple[int, str, dict[str, Any]]] = []

    def _connect(self) -> Any:
        conn = FakeConnection(len(self.opened) + 1, self.log)
        self.opened.append(conn)
        return conn

    def statements(self, fragment: str) -> list[int]:
        """The connections (by number) on which statements containing ``fragment`` ran."""
        return [number for number, sql, _ in self.log if fragment in sql]


def drop(db: FakeDatabase) -> None:
    db.opened[-1].dead = True


# --- the fence: every transaction of a lease holder starts by checking its lease ----------------


def test_a_fenced_transaction_runs_the_fence_first_and_writes_nothing_when_it_refuses() -> None:
    db = FakeDatabase()
    calls: list[str] = []

    def refuse(database: Database) -> None:
        calls.append("fence")
        raise TransientError("lease taken over")

    db.fence = refuse
    with pytest.raises(TransientError, match="taken over"), db.transaction():
        db.execute("INSERT INTO outbox VALUES (1)")
    assert calls == ["fence"]
    assert db.statements("INSERT") == [], "nothing ran after the fence refused"
    # START goes with the transaction's first statement: none was sent, so nothing to roll back
    assert db.statements("START") == [] and db.statements("ROLLBACK") == []


def test_a_connection_lost_outside_a_transaction_is_replaced_even_while_a_lease_is_held() -> None:
    """A lease is a row, not the session's: losing the connection loses nothing of it."""
    db = FakeDatabase()
    db.fence = lambda database: None
    db.query("SELECT 1")
    drop(db)
    assert db.query("SELECT 1") == [{"one": 1}]
    assert len(db.opened) == 2


def test_the_database_sends_nothing_that_lives_in_the_session() -> None:
    """Session advisory locks, SET and set_config pin an RDS Proxy connection until the client
    disconnects: the Database itself never sends one (the use cases' statements are checked
    on the real stack in tests/integration/test_leases.py)."""
    db = FakeDatabase()
    with db.transaction():
        db.execute("INSERT INTO outbox VALUES (1)")
    db.query("SELECT 1")
    sent = " ".join(sql for _, sql, _ in db.log).lower()
    for pinning in ("pg_advisory_lock", "pg_try_advisory_lock(", "set_config", "set "):
        assert pinning not in sent


# --- defect 6: one transparent retry, only where it is safe ------------------------------------


def test_a_stale_connection_is_replaced_once_outside_locks_and_transactions() -> None:
    db = FakeDatabase()
    db.query("SELECT 1")
    drop(db)
    assert db.query("SELECT 1") == [{"one": 1}]
    assert db.opened[0].closed and len(db.opened) == 2
    assert db.statements("SELECT 1") == [1, 1, 2]


def test_the_retry_happens_once() -> None:
    db = FakeDatabase()
    db.query("SELECT 1")
    drop(db)
    original = db._connect

    def dead_on_arrival() -> Any:
        conn = original()
        conn.dead = True
        return conn

    db._connect = dead_on_arrival  # type: ignore[method-assign]
    with pytest.raises(TransientError, match="connection lost"):
        db.query("SELECT 1")
    assert len(db.opened) == 2


def test_a_terminated_session_reported_by_the_server_counts_as_a_dropped_connection() -> None:
    db = FakeDatabase()
    db.query("SELECT 1")
    db.opened[0].errors["SELECT 1"] = DatabaseError(
        {"S": "FATAL", "C": "57P01", "M": "terminating connection due to administrator command"}
    )
    assert db.query("SELECT 1") == [{"one": 1}]
    assert len(db.opened) == 2


def test_nothing_is_retried_inside_a_transaction() -> None:
    db = FakeDatabase()
    with pytest.raises(TransientError), db.transaction():
        db.execute("INSERT INTO outbox VALUES (0)")  # the transaction has begun with it
        drop(db)
        with pytest.raises(TransientError):
            db.execute("INSERT INTO outbox VALUES (1)")
        db.execute("INSERT INTO outbox VALUES (2)")  # a caller that swallowed the first error
    assert len(db.opened) == 1
    assert db.statements("VALUES (2)") == [], "the later insert never ran, on any connection"


def test_a_lost_commit_is_not_retried() -> None:
    db = FakeDatabase()
    with pytest.raises(TransientError, match="commit"), db.transaction():
        db.execute("INSERT INTO outbox VALUES (1)")
        drop(db)
    assert db.statements("COMMIT") == [1]
    assert db.query("SELECT 1") == [{"one": 1}] and len(db.opened) == 2


def test_a_transaction_on_a_stale_connection_begins_on_a_new_one() -> None:
    db = FakeDatabase()
    db.query("SELECT 1")
    drop(db)
    with db.transaction():
        db.execute("INSERT INTO outbox VALUES (1)")
    assert db.statements("INSERT") == [2] and db.statements("COMMIT") == [2]


def test_other_database_errors_are_not_masked() -> None:
    db = FakeDatabase()
    db.query("SELECT 1")
    db.opened[0].errors["INSERT"] = DatabaseError({"S": "ERROR", "C": "23505", "M": "duplicate key"})
    with pytest.raises(DatabaseError):
        db.execute("INSERT INTO payments VALUES (1)")
    assert len(db.opened) == 1 and not db.opened[0].closed
