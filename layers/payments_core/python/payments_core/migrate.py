"""Versioned SQL migrations: each file in migrations/ runs once, in name order, recorded in
schema_migrations. Safe to run on every deploy and from several processes at once.

Then the application role: the functions connect as ``payments_app``, which may read and write
rows (SELECT, INSERT, UPDATE) and nothing else: no DDL, no ownership, no schema_migrations, and
DELETE only on the tables the retention job prunes (``RETENTION_TABLES``: never payments). That
DELETE is for the retention function alone; a role of its own (its secret, its RDS Proxy auth
entry) so the other functions cannot delete at all is the next step (README, "Retention"). Its grants are re-applied on every run, so a table added later is
covered; its password comes from its own secret (``DB_APP_SECRET_ID``) when one is configured."""

from __future__ import annotations

import sys
import time
from importlib import resources

import pg8000.native

from payments_core.config import get_settings
from payments_core.db import Database, get_database
from payments_core.errors import TransientError
from payments_core.secrets import get_secret_json

# Two deploys migrating at once serialize on this lock; the second waits at most this long
# (well inside the custom resource's 300 s).
MIGRATION_LOCK_NAME = "schema-migrations"
MIGRATION_LOCK_WAIT_SECONDS = 120
APP_ROLE = "payments_app"
# What payments_core.retention deletes from, and nothing else (no payments, no reverted_orders).
RETENTION_TABLES = ("outbox", "stripe_events", "order_leases", "stripe_money_calls", "command_outcomes")


def migration_files() -> list[tuple[str, str]]:
    folder = resources.files("payments_core") / "migrations"
    files = sorted((p for p in folder.iterdir() if p.name.endswith(".sql")), key=lambda p: p.name)
    return [(p.name.removesuffix(".sql"), p.read_text(encoding="utf-8")) for p in files]


def apply_migrations(db: Database, app_password: str | None = None) -> list[str]:
    """Apply the migrations not yet applied; return the versions applied now."""
    applied_now: list[str] = []
    # One transaction holding a transaction-level advisory lock: it ends with the transaction
    # (or the connection) and leaves nothing in the session. DDL is transactional in
    # PostgreSQL, so a deploy that dies half-way applies nothing.
    with db.transaction():
        _wait_for_migration_lock(db)
        db.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r["version"] for r in db.query("SELECT version FROM schema_migrations")}
        for version, sql in migration_files():
            if version in done:
                continue
            # The whole file in one simple-protocol query (a statement without bind parameters
            # goes as one): PostgreSQL's own parser splits it, quoted semicolons and all.
            db.execute(sql)
            db.execute("INSERT INTO schema_migrations (version) VALUES (:v)", v=version)
            applied_now.append(version)
        ensure_app_role(db, app_password)
    return applied_now


def _wait_for_migration_lock(db: Database) -> None:
    """Polled with a try-lock, so the wait is bounded here, not by a socket timeout or a SET."""
    give_up = time.monotonic() + MIGRATION_LOCK_WAIT_SECONDS
    while not db.query(
        "SELECT pg_try_advisory_xact_lock(hashtextextended(:name, 0)) AS locked", name=MIGRATION_LOCK_NAME
    )[0]["locked"]:
        if time.monotonic() > give_up:
            raise TransientError(
                f"another migration held the lock for {MIGRATION_LOCK_WAIT_SECONDS} s; retry the deploy"
            )
        time.sleep(0.5)


def ensure_app_role(db: Database, password: str | None = None) -> None:
    """Create (once) and grant (every run) the application role. Its password is set once, when
    it first gets LOGIN: after that the secret's rotation owns it, and a migration running in
    the middle of a rotation must not put the previous password back."""
    role = pg8000.native.identifier(APP_ROLE)
    found = db.query("SELECT rolcanlogin FROM pg_roles WHERE rolname = :r", r=APP_ROLE)
    if not found:
        may_create = db.query(
            "SELECT rolsuper OR rolcreaterole AS ok FROM pg_roles WHERE rolname = current_user"
        )
        if not password and not (may_create and may_create[0]["ok"]):
            # A development database whose owner may not create roles (the local stack): the
            # functions there connect as the owner. In AWS a password is configured, so this raises.
            return
        db.execute(f"CREATE ROLE {role} NOLOGIN")
    if password and not (found and found[0]["rolcanlogin"]):
        # DDL takes no bind parameters: the password goes in as a quoted literal, never logged.
        db.execute(f"ALTER ROLE {role} WITH LOGIN PASSWORD {pg8000.native.literal(password)}")
    database = pg8000.native.identifier(db.query("SELECT current_database() AS d")[0]["d"])
    for statement in (
        f"GRANT CONNECT ON DATABASE {database} TO {role}",
        f"GRANT USAGE ON SCHEMA public TO {role}",
        f"GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA public TO {role}",
        f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {role}",
        f"GRANT DELETE ON {', '.join(RETENTION_TABLES)} TO {role}",
        f"REVOKE ALL ON schema_migrations FROM {role}",
    ):
        db.execute(statement)


def run() -> list[str]:
    """Entry point for the deploy-time custom resource and the local stack."""
    secret_id = get_settings().db_app_secret_id
    password = str(get_secret_json(secret_id)["password"]) if secret_id else None
    return apply_migrations(get_database(), password)


def main() -> int:
    applied = run()
    print(f"migrations applied: {', '.join(applied) if applied else 'none (schema up to date)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
