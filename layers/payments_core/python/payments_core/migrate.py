"""Versioned SQL migrations: each file in migrations/ runs once, in name order, recorded in
schema_migrations. Safe to run on every deploy and from several processes at once."""

from __future__ import annotations

import sys
from importlib import resources

from payments_core.db import Database, get_database

# An arbitrary constant: two deploys migrating at once serialize on it.
MIGRATION_LOCK_KEY = 727_300_001


def migration_files() -> list[tuple[str, str]]:
    folder = resources.files("payments_core") / "migrations"
    files = sorted((p for p in folder.iterdir() if p.name.endswith(".sql")), key=lambda p: p.name)
    return [(p.name.removesuffix(".sql"), p.read_text(encoding="utf-8")) for p in files]


def apply_migrations(db: Database) -> list[str]:
    """Apply the migrations not yet applied; return the versions applied now."""
    applied_now: list[str] = []
    db.query("SELECT pg_advisory_lock(:key)", key=MIGRATION_LOCK_KEY)
    try:
        db.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r["version"] for r in db.query("SELECT version FROM schema_migrations")}
        for version, sql in migration_files():
            if version in done:
                continue
            with db.transaction():
                for statement in _statements(sql):
                    db.execute(statement)
                db.execute("INSERT INTO schema_migrations (version) VALUES (:v)", v=version)
            applied_now.append(version)
    finally:
        db.query("SELECT pg_advisory_unlock(:key)", key=MIGRATION_LOCK_KEY)
    return applied_now


def _statements(sql: str) -> list[str]:
    # Migrations are plain DDL without functions or quoted semicolons, so splitting on ';' holds.
    lines = [line for line in sql.splitlines() if not line.strip().startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


def run() -> list[str]:
    """Entry point for the deploy-time custom resource and the local stack."""
    return apply_migrations(get_database())


def main() -> int:
    applied = run()
    print(f"migrations applied: {', '.join(applied) if applied else 'none (schema up to date)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
