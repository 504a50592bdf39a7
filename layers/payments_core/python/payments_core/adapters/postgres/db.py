"""PostgreSQL through pg8000: one connection per worker, reused across invocations. Every SQL
statement is parameterised. How the connection logs in (IAM token or secret, TLS) is
``db_login``; here is what happens to it after: its transactions and its replacement.

Nothing here lives in the session: no session advisory lock, no SET, no set_config. Through RDS
Proxy each of those pins the client's backend connection until it disconnects, and a lock held
by a session dies with it while the work it protects may still be running. An order is
serialized by a lease row instead (``leases``); its transactions are fenced by it (``fence``).

A connection can drop between any two statements (RDS Proxy closes client connections idle for
five minutes; the database restarts; a backend is terminated). Outside a transaction the
statement runs again, once, on a new connection, so the first statement after a quiet spell does
not fail; inside one, the server rolled it back: the statement fails as transient, and so does
every later one until the transaction block is left."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any

import pg8000.native
from pg8000 import core as pg_core
from pg8000.converters import make_params
from pg8000.exceptions import DatabaseError

from payments_core.adapters.postgres.db_login import CONNECTION_ERRORS, open_connection
from payments_core.config import Settings, get_settings
from payments_core.domain.errors import TransientError
from payments_core.observability import logger

Row = dict[str, Any]

# The server ended the session: admin_shutdown (pg_terminate_backend), crash_shutdown,
# cannot_connect_now; class 08 is "connection exception".
_SESSION_ENDED = frozenset({"57P01", "57P02", "57P03"})


def _error_field(exc: DatabaseError, field: str) -> str:
    info = exc.args[0] if exc.args else None
    return str(info.get(field, "")) if isinstance(info, dict) else ""


_BEGIN = (
    pg_core._create_message(
        pg_core.PARSE, pg_core.NULL_BYTE + b"START TRANSACTION" + pg_core.NULL_BYTE + pg_core.H_pack(0)
    )
    + pg_core._create_message(pg_core.BIND, pg_core.NULL_BYTE * 2 + pg_core.H_pack(0) * 3)
    + pg_core.EXECUTE_MSG
)


@dataclass(frozen=True)
class _Result:
    rows: list[list[Any]] | None
    columns: list[dict[str, Any]] | None
    row_count: int


def run_one_trip(
    conn: pg8000.native.Connection, sql: str, params: dict[str, Any], *, begin: bool = False
) -> _Result:
    """``conn.run(sql, **params)`` in one round trip. pg8000 sends an unnamed statement in three
    (Parse+Sync, Describe+Sync, Bind+Execute+Sync), and outside a transaction block each Sync
    ends a transaction of its own: three round trips and three server transactions where one
    does. Here the same unnamed statement goes as libpq's PQexecParams sends it (Parse, Bind,
    Describe portal, Execute, Sync): nothing named is left in the session, so RDS Proxy keeps
    multiplexing. The result is read by pg8000's own handlers, as ``run`` reads it, and
    returned (not left on ``conn``, which may be a wrapper: the crash drill's).
    ``begin``: START TRANSACTION first, in the same flight and before the same Sync, so an error
    in either skips both (the statement never runs outside the transaction)."""
    statement, make_vals = pg8000.native.to_statement(sql)
    values = make_params(conn.py_types, make_vals(params))
    encoding = conn._client_encoding
    bind = bytearray(pg_core.NULL_BYTE * 2 + pg_core.H_pack(0) + pg_core.H_pack(len(values)))
    for value in values:
        if value is None:
            bind.extend(pg_core.i_pack(-1))
        else:
            data = value.encode(encoding)
            bind.extend(pg_core.i_pack(len(data)) + data)
    bind.extend(pg_core.H_pack(0))  # every result column as text, as pg8000 reads them
    context = pg_core.Context(statement)
    if begin:
        pg_core._write(conn._sock, _BEGIN)
    conn._send_message(
        pg_core.PARSE, pg_core.NULL_BYTE + statement.encode(encoding) + pg_core.NULL_BYTE + pg_core.H_pack(0)
    )
    conn._send_message(pg_core.BIND, bytes(bind))
    conn._send_message(pg_core.DESCRIBE, pg_core.PORTAL + pg_core.NULL_BYTE)
    pg_core._write(conn._sock, pg_core.EXECUTE_MSG)
    pg_core._write(conn._sock, pg_core.SYNC_MSG)
    pg_core._flush(conn._sock)
    conn.handle_messages(context)
    return _Result(context.rows, context.columns, context.row_count)


def _session_ended(exc: DatabaseError) -> bool:
    code = _error_field(exc, "C")
    severity = _error_field(exc, "V") or _error_field(exc, "S")  # V is never translated
    return code in _SESSION_ENDED or code.startswith("08") or severity in ("FATAL", "PANIC")


class Database:
    """A lazily opened connection with explicit transactions."""

    def __init__(self, settings: Settings | None = None, **connect_overrides: Any) -> None:
        self._settings = settings or get_settings()
        self._overrides = connect_overrides
        self._conn: pg8000.native.Connection | None = None
        # Connections are numbered; a transaction belongs to the one it began on and is lost
        # with it.
        self._generation = 0
        self._transaction: int | None = None
        self._begin_pending = False  # a transaction whose START goes with its first statement
        # Run first in every transaction while an order's lease is held (order_holds.hold): it
        # renews the lease and raises if it was taken over, so a stale holder writes nothing.
        self.fence: Callable[[Database], None] | None = None
        # Transactions committed on this object: a write made inside one (a lease's deferred
        # money-call outcome, its release) is known to have landed once this count moves past it.
        self.commits = 0

    def _connect(self) -> pg8000.native.Connection:
        return open_connection(self._settings, self._overrides)

    def connection(self) -> pg8000.native.Connection:
        """The live connection, opened if needed; never a replacement for one that died inside
        a transaction."""
        if self._transaction is not None and (self._conn is None or self._transaction != self._generation):
            raise TransientError("the database connection was lost inside this transaction (rolled back)")
        if self._conn is None:
            self._conn = self._connect()
            self._generation += 1
        return self._conn

    @property
    def backend_pid(self) -> int | None:
        """The server process of the open connection (for tests and diagnostics)."""
        return None if self._conn is None else int(self._conn.run("SELECT pg_backend_pid()")[0][0])

    def close(self) -> None:
        """Close the connection and forget its transaction."""
        self._drop()
        self._transaction = None

    def query(self, sql: str, **params: Any) -> list[Row]:
        """Run one statement on the current connection (inside or outside a transaction)."""
        result = self._run(sql, params)
        if not result.rows or result.columns is None:
            return []
        names = [c["name"] for c in result.columns]
        return [dict(zip(names, row, strict=True)) for row in result.rows]

    def execute(self, sql: str, **params: Any) -> int:
        return max(0, self._run(sql, params).row_count)

    @contextmanager
    def transaction(self) -> Iterator[Database]:
        # START TRANSACTION goes out with the transaction's first statement (one round trip
        # fewer); until then nothing is open on the server, and that first statement may still
        # replace a stale connection, as START did on its own.
        self._begin_pending = True
        try:
            if self.fence is not None:
                self.fence(self)
            yield self
        except BaseException:
            self._rollback()
            raise
        try:
            if self._begin_pending:
                self._begin_pending = False  # nothing was sent: nothing to commit
            else:
                self._run("COMMIT", {})
            self.commits += 1
        except TransientError as exc:
            # The commit's outcome is unknown: the caller retries, and every write is idempotent.
            raise TransientError(f"database connection lost during commit: {exc}") from exc
        finally:
            self._transaction = None

    def _rollback(self) -> None:
        alive = self._conn is not None and self._transaction == self._generation
        self._transaction = None
        self._begin_pending = False
        if not alive or self._conn is None:
            return  # the server rolled it back when the connection died
        try:
            self._conn.run("ROLLBACK")
        except Exception:
            self._drop()

    # --- internals -------------------------------------------------------------------------

    def _run(self, sql: str, params: dict[str, Any]) -> _Result:
        """Run one statement; returns its rows, columns and row count."""
        # One retry, only for a connection kept from before (a stale one) outside a transaction.
        # A statement may then run twice if the connection broke after the server ran it: every
        # such statement is idempotent.
        may_retry = self._conn is not None and self._transaction is None
        while True:
            conn = self.connection()
            begin = self._begin_pending
            try:
                one_trip = hasattr(conn, "handle_messages")  # pg8000's (a test's fake has only run)
                if begin:  # the transaction starts with this statement, in the same flight
                    self._begin_pending, self._transaction = False, self._generation
                    if one_trip:
                        return run_one_trip(conn, sql, params, begin=True)
                    conn.run("START TRANSACTION")
                if params and one_trip:
                    return run_one_trip(conn, sql, params)
                rows = conn.run(sql, **params)
                return _Result(rows, conn.columns, int(conn.row_count or 0))
            except CONNECTION_ERRORS as exc:
                lost: Exception = exc
            except DatabaseError as exc:
                if not _session_ended(exc):
                    raise
                lost = exc
            if begin:  # nothing of the transaction survived the connection: begin it again
                self._begin_pending, self._transaction = True, None
            self._drop()
            if not may_retry:
                raise TransientError(self._lost_message(lost)) from lost
            may_retry = False
            logger.info("stale database connection replaced", extra={"reason": str(lost)})

    def _lost_message(self, exc: Exception) -> str:
        if self._transaction is not None:
            return f"database connection lost inside a transaction (rolled back by the server): {exc}"
        return f"database connection lost: {exc}"

    def _drop(self) -> None:
        """Let go of a broken connection; what it held stays recorded, as lost."""
        if self._conn is not None:
            with suppress(Exception):  # closing a broken connection may fail; it is gone either way
                self._conn.close()
            self._conn = None


_database: Database | None = None


def get_database() -> Database:
    """The container-wide connection, opened on first use."""
    global _database
    if _database is None:
        _database = Database()
    return _database
