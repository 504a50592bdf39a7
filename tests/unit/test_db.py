"""Database's connection rules with a fake pg8000 connection (issue 12, defects 1 and 6): what
may be retried on a new connection, what must abort because a lock or a transaction was lost,
and how lock waits are bounded. The real PostgreSQL cases are in
tests/integration/test_db_connection.py."""

from __future__ import annotations

from typing import Any

import pytest
from payments_core.config import get_settings
from payments_core.db import Database
from payments_core.errors import TransientError
from pg8000.exceptions import DatabaseError, InterfaceError

ORDER = "3b0d6c1e-8a44-4b8f-9f63-2b7c9d1f0a55"


class FakeSocket:
    def __init__(self, timeout: float | None) -> None:
        self.timeout = timeout

    def gettimeout(self) -> float | None:
        return self.timeout

    def settimeout(self, value: float | None) -> None:
        self.timeout = value


class FakeConnection:
    """Answers what Database asks; ``dead`` makes every statement fail as a dropped
    connection does; ``errors`` maps an SQL fragment to the error its statement raises."""

    def __init__(self, number: int, log: list[tuple[int, str, dict[str, Any], float | None]]) -> None:
        self.number = number
        self.log = log
        self.dead = False
        self.errors: dict[str, Exception] = {}
        self.lock_held_on_server = True
        self.columns: list[dict[str, str]] | None = None
        self.row_count = -1
        self._usock = FakeSocket(5)
        self.closed = False

    def run(self, sql: str, **params: Any) -> list[list[Any]] | None:
        self.log.append((self.number, sql, params, self._usock.timeout))
        if self.dead:
            raise InterfaceError("network error")
        for fragment, error in self.errors.items():
            if fragment in sql:
                raise error
        self.columns, self.row_count = None, 1
        if "pg_try_advisory_lock" in sql:
            self.columns = [{"name": "locked"}]
            return [[True]]
        if "pg_locks" in sql:
            self.columns = [{"name": "held"}]
            return [[self.lock_held_on_server]]
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
        self.log: list[tuple[int, str, dict[str, Any], float | None]] = []

    def _connect(self) -> Any:
        conn = FakeConnection(len(self.opened) + 1, self.log)
        self.opened.append(conn)
        return conn

    def statements(self, fragment: str) -> list[int]:
        """The connections (by number) on which statements containing ``fragment`` ran."""
        return [number for number, sql, _, _ in self.log if fragment in sql]


def drop(db: FakeDatabase) -> None:
    db.opened[-1].dead = True


# --- defect 1: never continue under a lock that may be lost ---------------------------------


def test_a_transaction_begun_under_a_lost_lock_aborts_instead_of_reconnecting() -> None:
    db = FakeDatabase()
    with pytest.raises(TransientError, match="lock"), db.order_lock(ORDER):
        drop(db)
        with db.transaction():
            db.execute("UPDATE payments SET status = 'SUCCEEDED'")
    assert len(db.opened) == 1, "no connection was opened while the lock was held"
    assert db.statements("UPDATE") == []


def test_every_statement_after_a_lost_lock_aborts_until_the_lock_is_left() -> None:
    db = FakeDatabase()
    with db.order_lock(ORDER):
        drop(db)
        for _ in range(3):  # the caller swallowed the first error: later ones still abort
            with pytest.raises(TransientError, match=f"lock on order {ORDER}"):
                db.query("SELECT * FROM payments")
        with pytest.raises(TransientError, match="lock"):
            db.assert_lock_held(ORDER)
        with pytest.raises(TransientError, match="lock"):
            db.connection()
    assert len(db.opened) == 1
    assert db.statements("pg_advisory_unlock") == [], "no unlock sent on a session that never held it"
    assert db.query("SELECT 1") == [{"one": 1}], "after the lock, the next use case reconnects"
    assert len(db.opened) == 2


def test_a_try_lock_lost_with_its_connection_is_forgotten_on_release() -> None:
    db = FakeDatabase()
    assert db.try_order_lock(ORDER)
    drop(db)
    with pytest.raises(TransientError, match="lock"):
        db.execute("UPDATE payments SET reconciled_at = now()")
    db.release_order_lock(ORDER)  # the reconciler's finally
    assert db.statements("pg_advisory_unlock") == []
    assert db.query("SELECT 1") == [{"one": 1}] and len(db.opened) == 2


def test_assert_lock_held_asks_the_server_on_the_locking_session() -> None:
    db = FakeDatabase()
    with pytest.raises(TransientError, match="not held"):
        db.assert_lock_held(ORDER)
    with db.order_lock(ORDER):
        db.assert_lock_held(ORDER)
        assert db.statements("pg_locks") == [1]
        db.opened[0].lock_held_on_server = False  # e.g. someone unlocked it by hand
        with pytest.raises(TransientError, match="lock"):
            db.assert_lock_held(ORDER)


def test_a_nested_lock_of_the_same_order_is_released_once_per_level() -> None:
    db = FakeDatabase()
    with db.order_lock(ORDER):
        with db.order_lock(ORDER):
            pass
        db.assert_lock_held(ORDER)
    assert db.statements("pg_advisory_unlock") == [1, 1]
    with pytest.raises(TransientError):
        db.assert_lock_held(ORDER)


def test_close_forgets_every_lock_and_transaction() -> None:
    db = FakeDatabase()
    assert db.try_order_lock(ORDER)
    db.close()
    assert db.query("SELECT 1") == [{"one": 1}]
    assert len(db.opened) == 2


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
        drop(db)
        with pytest.raises(TransientError):
            db.execute("INSERT INTO outbox VALUES (1)")
        db.execute("INSERT INTO outbox VALUES (2)")  # a caller that swallowed the first error
    assert len(db.opened) == 1
    assert db.statements("INSERT") == [1], "the second insert never ran, on any connection"


def test_nothing_is_retried_while_a_lock_is_held() -> None:
    db = FakeDatabase()
    with db.order_lock(ORDER):
        drop(db)
        with pytest.raises(TransientError):
            db.query("SELECT 1")
    assert len(db.opened) == 1


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


# --- defect 6: lock waits bounded by lock_timeout, not by the socket timeout -------------------


def test_the_lock_statement_carries_lock_timeout_and_outlasts_the_socket_timeout() -> None:
    db = FakeDatabase(lock_timeout_seconds=60)
    with db.order_lock(ORDER):
        db.query("SELECT 1")
    with db.transaction():
        db.lock_order_for_transaction(ORDER)
    # the webhook's transaction lock waits less by default: it answers HTTP within 20 s
    for fragment, wait in (("pg_advisory_lock", 60), ("pg_advisory_xact_lock", 10)):
        [(_, sql, params, socket_timeout)] = [e for e in db.log if fragment in e[1]]
        assert "lock_timeout" in sql and params["lock_timeout"] == f"{wait * 1000}ms"
        assert socket_timeout is not None and socket_timeout > wait, "the socket waits longer than the lock"
    others = [timeout for _, sql, _, timeout in db.log if "advisory" not in sql]
    assert others and set(others) == {5}, "every other statement keeps the 5 s socket timeout"


def test_the_lock_timeout_defaults_to_a_generous_value() -> None:
    assert FakeDatabase().lock_timeout_seconds >= 30


def test_a_caller_with_less_time_passes_its_own_lock_wait() -> None:
    db = FakeDatabase(lock_timeout_seconds=60)
    with db.transaction():
        db.lock_order_for_transaction(ORDER, timeout_seconds=8)
    [(_, _, params, socket_timeout)] = [e for e in db.log if "pg_advisory_xact_lock" in e[1]]
    assert params["lock_timeout"] == "8000ms" and socket_timeout == 13
    with pytest.raises(ValueError, match="bounded"):
        db.lock_order_for_transaction(ORDER, timeout_seconds=0)


def test_a_lock_timeout_is_transient_with_a_clear_message_and_keeps_the_connection() -> None:
    db = FakeDatabase(lock_timeout_seconds=2)
    db.query("SELECT 1")
    db.opened[0].errors["pg_advisory_lock"] = DatabaseError(
        {"S": "ERROR", "C": "55P03", "M": "canceling statement due to lock timeout"}
    )
    expected = rf"lock on order {ORDER} not obtained within 2 s"
    with pytest.raises(TransientError, match=expected), db.order_lock(ORDER):
        pytest.fail("ran without the lock")
    assert db.statements("pg_advisory_unlock") == [], "nothing to release"
    assert not db.opened[0].closed and db.query("SELECT 1") == [{"one": 1}]


def test_other_database_errors_are_not_masked() -> None:
    db = FakeDatabase()
    db.query("SELECT 1")
    db.opened[0].errors["INSERT"] = DatabaseError({"S": "ERROR", "C": "23505", "M": "duplicate key"})
    with pytest.raises(DatabaseError):
        db.execute("INSERT INTO payments VALUES (1)")
    assert len(db.opened) == 1 and not db.opened[0].closed
