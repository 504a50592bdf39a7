"""PostgreSQL through pg8000: one connection per warm Lambda container, reused across
invocations. Every SQL statement is parameterised.

A connection can drop between any two statements (RDS Proxy closes client connections idle for
five minutes; the database restarts; a backend is terminated). What may happen next depends on
what died with it:
- nothing (no transaction, no order lock): the statement runs again, once, on a new connection,
  so the first statement after a quiet spell does not fail;
- an open transaction: the server rolled it back; the statement fails as transient, and so does
  every later one until the transaction block is left;
- an order lock (a session advisory lock): the lock is gone and another process may hold it.
  Nothing runs on a new connection as if it were still held: every statement (and any
  reconnect) fails as transient until the lock's block is left, so the use case stops and its
  command is redelivered. The lock is never "released" on another session.
Lock waits are bounded by PostgreSQL's ``lock_timeout``; the socket timeout, which exists to
notice a dead network, is widened for the lock statement so that it does not cut the wait."""

from __future__ import annotations

import os
import ssl
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from importlib import resources
from typing import Any

import pg8000.native
from pg8000.exceptions import DatabaseError, InterfaceError

from payments_core.config import Settings, get_settings
from payments_core.errors import TransientError
from payments_core.observability import logger
from payments_core.secrets import get_secret_json

Row = dict[str, Any]

# Errors that mean "the database could not be reached or the connection broke".
CONNECTION_ERRORS = (InterfaceError, OSError, ssl.SSLError, TimeoutError)
# Amazon RDS's certificate authorities (PEM), put into the layer by infra/build_layer.py.
RDS_CA_BUNDLE = "rds-ca-bundle.pem"

# How long a lock wait may last: long enough to cover a holder inside a Stripe call (10 s
# timeout, one network retry), short enough to fail cleanly well inside the authorize
# function's 60 s timeout. Configurable (``lock_timeout_seconds``, or the settings'
# ``db_lock_timeout_seconds`` when present) and per call.
DEFAULT_LOCK_TIMEOUT_SECONDS = 30.0
# The transaction-scoped lock is taken by the webhook, which must answer HTTP within the API
# function's 20 s: it waits less by default (Stripe retries a 500 later).
TRANSACTION_LOCK_TIMEOUT_SECONDS = 10.0

_LOCK_NOT_AVAILABLE = "55P03"  # lock_timeout expired (or NOWAIT)
# The server ended the session: admin_shutdown (pg_terminate_backend), crash_shutdown,
# cannot_connect_now; class 08 is "connection exception".
_SESSION_ENDED = frozenset({"57P01", "57P02", "57P03"})

# Each statement names the order's lock key as hashtextextended(:key, 0) on "payment:<order>".
# set_config(..., true) lasts until the end of the current transaction (the statement's own,
# outside a transaction block), so it bounds this wait and leaves no session state behind; the
# materialized CTE is evaluated before the lock is requested.
_LOCK_SQL = (
    "WITH cfg AS MATERIALIZED (SELECT set_config('lock_timeout', :lock_timeout, true))"
    " SELECT pg_advisory_lock(hashtextextended(:key, 0)) FROM cfg"
)
_XACT_LOCK_SQL = (
    "WITH cfg AS MATERIALIZED (SELECT set_config('lock_timeout', :lock_timeout, true))"
    " SELECT pg_advisory_xact_lock(hashtextextended(:key, 0)) FROM cfg"
)
_TRY_LOCK_SQL = "SELECT pg_try_advisory_lock(hashtextextended(:key, 0)) AS locked"
_UNLOCK_SQL = "SELECT pg_advisory_unlock(hashtextextended(:key, 0))"
# A bigint advisory key shows in pg_locks as classid (high 32 bits), objid (low), objsubid 1.
_HELD_SQL = (
    "SELECT EXISTS (SELECT 1 FROM pg_locks l WHERE l.locktype = 'advisory' AND l.granted"
    " AND l.pid = pg_backend_pid() AND l.objsubid = 1"
    " AND l.classid = ((k.h >> 32) & 4294967295)::oid AND l.objid = (k.h & 4294967295)::oid) AS held"
    " FROM (SELECT hashtextextended(:key, 0) AS h) k"
)


def _order_key(order_id: str) -> str:
    return f"payment:{order_id}"


def _error_field(exc: DatabaseError, field: str) -> str:
    info = exc.args[0] if exc.args else None
    return str(info.get(field, "")) if isinstance(info, dict) else ""


def _session_ended(exc: DatabaseError) -> bool:
    code = _error_field(exc, "C")
    severity = _error_field(exc, "V") or _error_field(exc, "S")  # V is never translated
    return code in _SESSION_ENDED or code.startswith("08") or severity in ("FATAL", "PANIC")


@dataclass
class _HeldLock:
    generation: int  # the connection it was taken on
    depth: int = 1  # session advisory locks nest: one unlock per lock


class Database:
    """A lazily opened connection with explicit transactions."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        lock_timeout_seconds: float | None = None,
        **connect_overrides: Any,
    ) -> None:
        self._settings = settings or get_settings()
        self._overrides = connect_overrides
        self._conn: pg8000.native.Connection | None = None
        # Connections are numbered; a lock or a transaction belongs to the one it was taken on
        # and is lost with it.
        self._generation = 0
        self._locks: dict[str, _HeldLock] = {}
        self._transaction: int | None = None
        configured = getattr(self._settings, "db_lock_timeout_seconds", None)
        timeout = lock_timeout_seconds if lock_timeout_seconds is not None else configured
        self.lock_timeout_seconds = float(timeout if timeout else DEFAULT_LOCK_TIMEOUT_SECONDS)
        if self.lock_timeout_seconds <= 0:
            raise ValueError("lock_timeout_seconds must be positive")

    def _connect(self) -> pg8000.native.Connection:
        s = self._settings
        params: dict[str, Any]
        if self._overrides:
            params = dict(self._overrides)
        elif s.db_iam_auth:
            # The application role through the RDS Proxy: a 15-minute token signed with the
            # function's own credentials (no network call), so no password to read or leak.
            import boto3

            params = {"user": s.db_user, "host": s.db_host, "port": s.db_port or 5432, "database": s.db_name}
            params["password"] = boto3.client("rds", region_name=s.aws_region).generate_db_auth_token(
                DBHostname=s.db_host, Port=params["port"], DBUsername=s.db_user, Region=s.aws_region
            )
        else:
            secret = get_secret_json(s.db_secret_id)
            params = {
                "user": secret["username"],
                "password": secret["password"],
                "host": s.db_host or secret.get("host", "127.0.0.1"),
                "port": s.db_port or int(secret.get("port", 5432)),
                "database": s.db_name or secret.get("dbname", "payments"),
            }
        if s.db_ssl and not self._overrides:
            # The proxy's certificate chains to a public root; an RDS instance's own certificate
            # (the migration connects to it directly) to the RDS CA, trusted through the bundle
            # shipped in the layer.
            params["ssl_context"] = ssl.create_default_context()
            bundle = s.db_ca_bundle or str(resources.files("payments_core") / RDS_CA_BUNDLE)
            if s.db_ca_bundle or os.path.isfile(bundle):
                params["ssl_context"].load_verify_locations(cafile=bundle)
        params.setdefault("timeout", s.db_timeout_seconds)
        params.setdefault("application_name", "payment-service")
        try:
            return pg8000.native.Connection(**params)
        except CONNECTION_ERRORS as exc:
            raise TransientError(f"database unreachable: {exc}") from exc
        except DatabaseError as exc:  # e.g. the server is starting up or refuses connections
            raise TransientError(f"database refused the connection: {exc}") from exc

    def connection(self) -> pg8000.native.Connection:
        """The live connection, opened if needed; never a replacement for one that died
        holding a lock or a transaction."""
        self._ensure_nothing_lost()
        if self._conn is None:
            self._conn = self._connect()
            self._generation += 1
        return self._conn

    def close(self) -> None:
        """Close the connection and forget what it held (its locks die with it)."""
        self._drop()
        self._locks.clear()
        self._transaction = None

    def query(self, sql: str, **params: Any) -> list[Row]:
        """Run one statement on the current connection (inside or outside a transaction)."""
        conn, rows = self._run(sql, params)
        if not rows or conn.columns is None:
            return []
        names = [c["name"] for c in conn.columns]
        return [dict(zip(names, row, strict=True)) for row in rows]

    def execute(self, sql: str, **params: Any) -> int:
        conn, _ = self._run(sql, params)
        return int(conn.row_count or 0)

    @contextmanager
    def transaction(self) -> Iterator[Database]:
        self._run("START TRANSACTION", {})
        self._transaction = self._generation
        try:
            yield self
        except BaseException:
            self._rollback()
            raise
        try:
            self._run("COMMIT", {})
        except TransientError as exc:
            # The commit's outcome is unknown: the caller retries, and every write is idempotent.
            raise TransientError(f"database connection lost during commit: {exc}") from exc
        finally:
            self._transaction = None

    def _rollback(self) -> None:
        alive = self._conn is not None and self._transaction == self._generation
        self._transaction = None
        if not alive or self._conn is None:
            return  # the server rolled it back when the connection died
        try:
            self._conn.run("ROLLBACK")
        except Exception:
            self._drop()

    @contextmanager
    def order_lock(self, order_id: str, *, timeout_seconds: float | None = None) -> Iterator[None]:
        """Serialize every change to one order's payment across processes (commands, webhooks,
        the reconciler), including while Stripe is being called. A session-level advisory lock,
        released on exit, or by PostgreSQL if this process (or its connection) dies; in that
        case every statement inside the block fails as transient (see the module's note).
        Waits up to ``timeout_seconds`` (default ``lock_timeout_seconds``), then fails as
        transient."""
        self._wait_for_lock(_LOCK_SQL, order_id, timeout_seconds)
        self._hold(order_id)
        try:
            yield
        finally:
            self.release_order_lock(order_id)

    def lock_order_for_transaction(self, order_id: str, *, timeout_seconds: float | None = None) -> None:
        """The same per-order lock as ``order_lock``, held until the current transaction ends:
        for a change made in one transaction (a webhook), it saves the separate unlock. Waits
        up to ``timeout_seconds`` (default: the shorter of TRANSACTION_LOCK_TIMEOUT_SECONDS and
        ``lock_timeout_seconds``), then fails as transient."""
        if timeout_seconds is None:
            timeout_seconds = min(self.lock_timeout_seconds, TRANSACTION_LOCK_TIMEOUT_SECONDS)
        self._wait_for_lock(_XACT_LOCK_SQL, order_id, timeout_seconds)

    def try_order_lock(self, order_id: str) -> bool:
        _, rows = self._run(_TRY_LOCK_SQL, {"key": _order_key(order_id)})
        locked = bool(rows and rows[0][0])
        if locked:
            self._hold(order_id)
        return locked

    def release_order_lock(self, order_id: str) -> None:
        """Release a lock taken by ``order_lock`` or ``try_order_lock``, on the session that took
        it. A lock lost with its connection is only forgotten: another session never sends the
        unlock (it would hold nothing, or a lock someone else's use case relies on)."""
        held = self._locks.get(order_id)
        if held is None:
            return
        held.depth -= 1
        if held.depth == 0:
            del self._locks[order_id]
        if self._conn is None or held.generation != self._generation:
            return
        try:
            self._conn.run(_UNLOCK_SQL, key=_order_key(order_id))
        except (*CONNECTION_ERRORS, DatabaseError):
            self._drop()  # closing the session releases it for certain

    def assert_lock_held(self, order_id: str) -> None:
        """Raise TransientError unless this session still holds the order's lock (asked of
        the server). For a caller about to do what only the lock holder may, e.g. move money
        at Stripe: a lost connection is found here instead of after Stripe acted."""
        if order_id not in self._locks:
            raise TransientError(f"the lock on order {order_id} is not held")
        _, rows = self._run(_HELD_SQL, {"key": _order_key(order_id)})
        if not (rows and rows[0][0]):
            raise TransientError(f"the lock on order {order_id} is no longer held by this session")

    # --- internals -------------------------------------------------------------------------

    def _wait_for_lock(self, sql: str, order_id: str, timeout_seconds: float | None) -> None:
        wait = self.lock_timeout_seconds if timeout_seconds is None else float(timeout_seconds)
        if wait <= 0:
            raise ValueError("a lock wait must be bounded: timeout_seconds must be positive")
        self._run(
            sql,
            {"key": _order_key(order_id), "lock_timeout": f"{round(wait * 1000)}ms"},
            lock_wait=(f"the lock on order {order_id}", wait),
        )

    def _run(
        self, sql: str, params: dict[str, Any], *, lock_wait: tuple[str, float] | None = None
    ) -> tuple[pg8000.native.Connection, list[list[Any]] | None]:
        """Run one statement; returns the connection it ran on (for its columns and row count)
        and its rows. ``lock_wait``: (the lock, seconds) the statement may wait for it."""
        # One retry, only for a connection kept from before (a stale one) that carried nothing
        # that died with it. A statement outside a transaction may then run twice if the
        # connection broke after the server ran it: every such statement is idempotent.
        may_retry = self._conn is not None and not self._locks and self._transaction is None
        while True:
            conn = self.connection()
            try:
                with self._socket_timeout_covering(conn, lock_wait[1] if lock_wait else 0):
                    rows = conn.run(sql, **params)
                return conn, rows
            except CONNECTION_ERRORS as exc:
                lost: Exception = exc
            except DatabaseError as exc:
                if not _session_ended(exc):
                    if lock_wait and _error_field(exc, "C") == _LOCK_NOT_AVAILABLE:
                        raise TransientError(
                            f"{lock_wait[0]} not obtained within {lock_wait[1]:g} s "
                            "(lock_timeout): another process holds it; retry later"
                        ) from exc
                    raise
                lost = exc
            self._drop()
            if not may_retry:
                raise TransientError(self._lost_message(lost)) from lost
            may_retry = False
            logger.info("stale database connection replaced", extra={"reason": str(lost)})

    def _lost_message(self, exc: Exception) -> str:
        if self._locks:
            names = ", ".join(sorted(self._locks))
            return f"database connection lost while holding the lock on order {names} (gone with it): {exc}"
        if self._transaction is not None:
            return f"database connection lost inside a transaction (rolled back by the server): {exc}"
        return f"database connection lost: {exc}"

    def _ensure_nothing_lost(self) -> None:
        for order_id, held in self._locks.items():
            if self._conn is None or held.generation != self._generation:
                raise TransientError(
                    f"the lock on order {order_id} was lost with its database connection: "
                    "stopping here rather than continuing without it"
                )
        if self._transaction is not None and (self._conn is None or self._transaction != self._generation):
            raise TransientError("the database connection was lost inside this transaction (rolled back)")

    def _drop(self) -> None:
        """Let go of a broken connection; what it held stays recorded, as lost."""
        if self._conn is not None:
            with suppress(Exception):  # closing a broken connection may fail; it is gone either way
                self._conn.close()
            self._conn = None

    def _hold(self, order_id: str) -> None:
        held = self._locks.get(order_id)
        if held is None:
            self._locks[order_id] = _HeldLock(self._generation)
        else:
            held.depth += 1

    @contextmanager
    def _socket_timeout_covering(self, conn: pg8000.native.Connection, wait: float) -> Iterator[None]:
        """pg8000's ``timeout`` is the socket's: it would cut a lock wait that PostgreSQL
        allows to last lock_timeout. For the lock statement only, the socket waits that much
        longer (pg8000 keeps its socket as ``_usock``; without one, nothing to widen)."""
        sock = getattr(conn, "_usock", None) if wait else None
        usual = sock.gettimeout() if sock is not None else None
        if sock is None or usual is None:
            yield
            return
        sock.settimeout(usual + wait)
        try:
            yield
        finally:
            with suppress(OSError):
                sock.settimeout(usual)


_database: Database | None = None


def get_database() -> Database:
    """The container-wide connection, opened on first use."""
    global _database
    if _database is None:
        _database = Database()
    return _database
