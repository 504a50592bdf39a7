"""PostgreSQL through pg8000: one connection per warm Lambda container, reused across
invocations and re-opened when it breaks. Every SQL statement is parameterised."""

from __future__ import annotations

import os
import ssl
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from importlib import resources
from typing import Any

import pg8000.native
from pg8000.exceptions import DatabaseError, InterfaceError

from payments_core.config import Settings, get_settings
from payments_core.errors import TransientError
from payments_core.secrets import get_secret_json

Row = dict[str, Any]

# Errors that mean "the database could not be reached or the connection broke".
CONNECTION_ERRORS = (InterfaceError, OSError, ssl.SSLError, TimeoutError)
# Amazon RDS's certificate authorities (PEM), put into the layer by infra/build_layer.py.
RDS_CA_BUNDLE = "rds-ca-bundle.pem"


class Database:
    """A lazily opened connection with explicit transactions."""

    def __init__(self, settings: Settings | None = None, **connect_overrides: Any) -> None:
        self._settings = settings or get_settings()
        self._overrides = connect_overrides
        self._conn: pg8000.native.Connection | None = None

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
        if self._conn is None:
            self._conn = self._connect()
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            with suppress(Exception):  # closing a broken connection may fail; it is gone either way
                self._conn.close()
            self._conn = None

    def query(self, sql: str, **params: Any) -> list[Row]:
        """Run one statement on the current connection (inside or outside a transaction)."""
        conn = self.connection()
        try:
            rows = conn.run(sql, **params)
        except CONNECTION_ERRORS as exc:
            self.close()
            raise TransientError(f"database connection lost: {exc}") from exc
        if not rows or conn.columns is None:
            return []
        names = [c["name"] for c in conn.columns]
        return [dict(zip(names, row, strict=True)) for row in rows]

    def execute(self, sql: str, **params: Any) -> int:
        conn = self.connection()
        try:
            conn.run(sql, **params)
        except CONNECTION_ERRORS as exc:
            self.close()
            raise TransientError(f"database connection lost: {exc}") from exc
        return int(conn.row_count or 0)

    @contextmanager
    def transaction(self) -> Iterator[Database]:
        self._begin()
        try:
            yield self
        except BaseException:
            self._rollback()
            raise
        try:
            self.connection().run("COMMIT")
        except CONNECTION_ERRORS as exc:
            # The commit's outcome is unknown: the caller retries, and every write is idempotent.
            self.close()
            raise TransientError(f"database connection lost during commit: {exc}") from exc

    def _begin(self) -> None:
        for attempt in (1, 2):
            try:
                self.connection().run("START TRANSACTION")
                return
            except CONNECTION_ERRORS as exc:
                # A connection kept from an earlier invocation may have gone stale (database
                # restarted): nothing has happened yet, so reconnecting once is safe.
                self.close()
                if attempt == 2:
                    raise TransientError(f"database unreachable: {exc}") from exc

    def _rollback(self) -> None:
        if self._conn is None:
            return
        try:
            self._conn.run("ROLLBACK")
        except Exception:
            self.close()

    @contextmanager
    def order_lock(self, order_id: str) -> Iterator[None]:
        """Serialize every change to one order's payment across processes (commands, webhooks,
        the reconciler), including while Stripe is being called. A session-level advisory lock,
        released on exit, or by PostgreSQL if this process dies."""
        self.query("SELECT pg_advisory_lock(hashtextextended(:key, 0))", key=f"payment:{order_id}")
        try:
            yield
        finally:
            self.release_order_lock(order_id)

    def lock_order_for_transaction(self, order_id: str) -> None:
        """The same per-order lock as ``order_lock``, held until the current transaction ends:
        for a change made in one transaction (a webhook), it saves the separate unlock."""
        self.query("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))", key=f"payment:{order_id}")

    def try_order_lock(self, order_id: str) -> bool:
        rows = self.query(
            "SELECT pg_try_advisory_lock(hashtextextended(:key, 0)) AS locked", key=f"payment:{order_id}"
        )
        return bool(rows and rows[0]["locked"])

    def release_order_lock(self, order_id: str) -> None:
        with suppress(TransientError):
            self.query("SELECT pg_advisory_unlock(hashtextextended(:key, 0))", key=f"payment:{order_id}")


_database: Database | None = None


def get_database() -> Database:
    """The container-wide connection, opened on first use."""
    global _database
    if _database is None:
        _database = Database()
    return _database
