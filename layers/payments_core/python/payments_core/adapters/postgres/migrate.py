"""Versioned SQL migrations: each file in migrations/ runs once, in name order, recorded in
schema_migrations. Safe to run on every deploy and from several processes at once.

Then the database roles, their grants re-applied on every run (so a table added later is
covered), each password set from its own secret when one is configured:

- ``payments_app``, the functions': read and write rows (SELECT, INSERT, UPDATE), nothing else:
  no DDL, no ownership, no schema_migrations, no DELETE anywhere (no function deletes a row),
  and only SELECT on the archive and the roll-ups (``ARCHIVE_TABLES``: the retention job writes
  them).
- ``payments_retention``, the retention job's (``payments_core.usecases.retention``): exactly the
  privileges in ``RETENTION_GRANTS`` and nothing on any other table."""

from __future__ import annotations

import sys
import time
from importlib import resources

import pg8000.native

from payments_core.adapters.postgres.db import Database, get_database
from payments_core.adapters.secrets import get_secret_json
from payments_core.config import get_settings
from payments_core.domain.errors import TransientError

# Two deploys migrating at once serialize on this lock; the second waits at most this long
# (well inside the custom resource's 300 s).
MIGRATION_LOCK_NAME = "schema-migrations"
MIGRATION_LOCK_WAIT_SECONDS = 120
APP_ROLE = "payments_app"
RETENTION_ROLE = "payments_retention"
# What payments_core.usecases.retention deletes from (its _DELETES), and nothing else.
RETENTION_TABLES = ("outbox", "stripe_events", "order_leases", "stripe_money_calls", "command_outcomes")
# Written by the retention job only (payments_core.adapters.postgres.archive); the functions read them.
ARCHIVE_TABLES = ("payments_archive", "user_payment_totals")
# Every privilege of the retention job, by table: SELECT for its WHERE clauses; archiving moves
# payments (DELETE) into the archive and the roll-ups (INSERT, and UPDATE for the roll-ups'
# upsert) and claims each order's lease first (INSERT or UPDATE of order_leases). Each batch
# picks its rows with SELECT ... FOR UPDATE SKIP LOCKED, which PostgreSQL allows only with UPDATE
# on at least one column: the role has it on one column per table that nothing money depends
# on reads (a diagnostic, or the row's own age for this job, or the reconciler's scan order).
RETENTION_GRANTS: dict[str, str] = {
    "command_outcomes": "SELECT, DELETE, UPDATE (recorded_at)",
    "outbox": "SELECT, DELETE, UPDATE (last_error)",
    "stripe_events": "SELECT, DELETE, UPDATE (received_at)",
    "stripe_money_calls": "SELECT, DELETE, UPDATE (lease_token)",
    "order_leases": "SELECT, INSERT, UPDATE, DELETE",
    "payments": "SELECT, DELETE, UPDATE (reconciled_at)",
    "payments_archive": "SELECT, INSERT, DELETE, UPDATE (archived_at)",
    "user_payment_totals": "SELECT, INSERT, UPDATE",
}


def migration_files() -> list[tuple[str, str]]:
    folder = resources.files("payments_core") / "migrations"
    files = sorted((p for p in folder.iterdir() if p.name.endswith(".sql")), key=lambda p: p.name)
    return [(p.name.removesuffix(".sql"), p.read_text(encoding="utf-8")) for p in files]


def apply_migrations(
    db: Database, app_password: str | None = None, retention_password: str | None = None
) -> list[str]:
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
        ensure_retention_role(db, retention_password)
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
    """Create (once) and grant (every run) the application role."""
    role = _ensure_role(db, APP_ROLE, password)
    if role is None:
        return
    for statement in (
        f"GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA public TO {role}",
        f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {role}",
        # Taken back from earlier versions (0009 to 0012 granted DELETE for the retention job).
        f"REVOKE DELETE, TRUNCATE ON ALL TABLES IN SCHEMA public FROM {role}",
        f"REVOKE INSERT, UPDATE ON {', '.join(ARCHIVE_TABLES)} FROM {role}",
        f"REVOKE ALL ON schema_migrations FROM {role}",
    ):
        db.execute(statement)


def ensure_retention_role(db: Database, password: str | None = None) -> None:
    """Create (once) and grant (every run) the retention job's role: RETENTION_GRANTS, no more."""
    role = _ensure_role(db, RETENTION_ROLE, password)
    if role is None:
        return
    db.execute(f"REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {role}")
    for table, privileges in RETENTION_GRANTS.items():
        db.execute(f"GRANT {privileges} ON {pg8000.native.identifier(table)} TO {role}")


def _ensure_role(db: Database, name: str, password: str | None) -> str | None:
    """Create the role (once) and let it connect; its quoted name, or None where roles are not
    ours to make. Its password is set once, when it first gets LOGIN: after that the secret's
    rotation owns it, and a migration running in the middle of a rotation must not put the
    previous password back."""
    role = pg8000.native.identifier(name)
    found = db.query("SELECT rolcanlogin FROM pg_roles WHERE rolname = :r", r=name)
    if not found:
        may_create = db.query(
            "SELECT rolsuper OR rolcreaterole AS ok FROM pg_roles WHERE rolname = current_user"
        )
        if not password and not (may_create and may_create[0]["ok"]):
            # A development database whose owner may not create roles (the local stack): the
            # functions there connect as the owner. In AWS a password is configured, so this raises.
            return None
        db.execute(f"CREATE ROLE {role} NOLOGIN")
    if password and not (found and found[0]["rolcanlogin"]):
        # DDL takes no bind parameters: the password goes in as a quoted literal, never logged.
        db.execute(f"ALTER ROLE {role} WITH LOGIN PASSWORD {pg8000.native.literal(password)}")
    database = pg8000.native.identifier(db.query("SELECT current_database() AS d")[0]["d"])
    db.execute(f"GRANT CONNECT ON DATABASE {database} TO {role}")
    db.execute(f"GRANT USAGE ON SCHEMA public TO {role}")
    return role


def run() -> list[str]:
    """Entry point for the deploy-time custom resource and the local stack."""
    settings = get_settings()
    return apply_migrations(
        get_database(),
        _password(settings.db_app_secret_id),
        _password(settings.db_retention_secret_id),
    )


def _password(secret_id: str) -> str | None:
    return str(get_secret_json(secret_id)["password"]) if secret_id else None


def main() -> int:
    applied = run()
    print(f"migrations applied: {', '.join(applied) if applied else 'none (schema up to date)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
