"""Idempotent provisioning of a started stack: topics, secrets, database, schema, webhook.

The topics, the AWS secrets and queue, the database and its schema, the localstripe webhook:
each step is safe to run again on a stack already provisioned."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any

from local.stack import settings as cfg
from local.stack.postgres_server import Postgres
from local.stack.processes import StackError, process_env, say
from local.stack.settings import LocalSettings

# ---------------------------------------------------------------------------------------------
# provisioning (idempotent): topics, secrets and queue, database and schema, webhook


def timed(label: str, fn: Callable[[], str | None]) -> None:
    start = time.monotonic()
    note = fn()
    say(f"{label:<14}done in {time.monotonic() - start:5.1f}s" + (f"  {note}" if note else ""))


def create_topics(s: LocalSettings) -> str:
    from kafka.admin import KafkaAdminClient

    log = s.log_path("kafka")
    try:
        admin = KafkaAdminClient(
            bootstrap_servers=s.kafka_bootstrap, client_id="local-stack", request_timeout_ms=15000
        )
    except Exception as exc:
        raise StackError(
            "topics", f"cannot reach Kafka at {s.kafka_bootstrap} ({exc})", "read the log", log
        ) from exc
    try:
        existing = set(admin.list_topics())
        missing = {t: n for t, n in cfg.TOPIC_PARTITIONS.items() if t not in existing}
        if missing:
            admin.create_topics(
                {t: {"num_partitions": n, "replication_factor": 1} for t, n in missing.items()},
                timeout_ms=15000,
                wait_for_metadata=True,
            )
        return ", ".join(f"{t}({n})" for t, n in cfg.TOPIC_PARTITIONS.items())
    except Exception as exc:
        raise StackError("topics", f"creating topics failed ({exc})", "read the Kafka log", log) from exc
    finally:
        admin.close()


def _boto(service: str, s: LocalSettings) -> Any:
    import boto3

    make_client: Any = boto3.client  # the stubs type each service name separately
    return make_client(
        service,
        endpoint_url=s.aws_endpoint,
        region_name=cfg.AWS_REGION,
        aws_access_key_id=cfg.AWS_ACCESS_KEY_ID,
        aws_secret_access_key=cfg.AWS_SECRET_ACCESS_KEY,
    )


def seed_aws(s: LocalSettings) -> str:
    log = s.log_path("moto")
    try:
        sm = _boto("secretsmanager", s)
        wanted = {
            cfg.STRIPE_SECRET_KEY_SECRET_ID: cfg.STRIPE_SECRET_KEY,
            cfg.STRIPE_WEBHOOK_SECRET_ID: cfg.STRIPE_WEBHOOK_SECRET,
            cfg.DB_SECRET_ID: s.db_secret_value(),
        }
        for name, value in wanted.items():
            try:
                current = sm.get_secret_value(SecretId=name)["SecretString"]
            except sm.exceptions.ResourceNotFoundException:
                sm.create_secret(Name=name, SecretString=value)
                continue
            if current != value:
                sm.put_secret_value(SecretId=name, SecretString=value)
        _boto("sqs", s).create_queue(QueueName=cfg.DEAD_LETTER_QUEUE_NAME)
    except StackError:
        raise
    except Exception as exc:
        raise StackError("moto", f"seeding secrets and queue failed ({exc})", "read the log", log) from exc
    return f"{len(wanted)} secrets, queue {cfg.DEAD_LETTER_QUEUE_NAME}"


def provision_database(s: LocalSettings, pg: Postgres) -> str:
    try:
        conn = pg.superuser_connection()
        try:
            # identifiers cannot be parameters; these are constants of this package.
            # CREATEDB lets tests make scratch databases, as an RDS master user can.
            if not conn.run("SELECT 1 FROM pg_roles WHERE rolname = :r", r=cfg.DB_USER):
                conn.run(f"CREATE ROLE {cfg.DB_USER} LOGIN CREATEDB PASSWORD '{cfg.DB_PASSWORD}'")
            elif conn.run("SELECT current_user")[0][0] != cfg.DB_USER:
                # (an adopted server is reached as the stack's user itself: it logged in with
                # that password and may already create databases, or adopt refused it)
                conn.run(f"ALTER ROLE {cfg.DB_USER} LOGIN CREATEDB PASSWORD '{cfg.DB_PASSWORD}'")
            if not conn.run("SELECT 1 FROM pg_database WHERE datname = :d", d=cfg.DB_NAME):
                conn.run(f"CREATE DATABASE {cfg.DB_NAME} OWNER {cfg.DB_USER}")
        finally:
            conn.close()
    except Exception as exc:
        raise StackError(
            "postgres", f"creating role/database failed ({exc})", "read the log", pg.log
        ) from exc
    return f"database {cfg.DB_NAME}, user {cfg.DB_USER}"


def apply_migrations(s: LocalSettings) -> str:
    try:
        found = importlib.util.find_spec("payments_core.adapters.postgres.migrate") is not None
    except ModuleNotFoundError:
        found = False
    if not found:
        return "SKIPPED: payments_core.adapters.postgres.migrate does not exist yet (schema not applied)"
    log = s.log_path("migrate")
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        out.write(
            f"\n===== {time.strftime('%Y-%m-%d %H:%M:%S')} python -m payments_core.adapters.postgres.migrate\n".encode()
        )
        out.flush()
        result = subprocess.run(
            [sys.executable, "-m", "payments_core.adapters.postgres.migrate"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=process_env(s),
            cwd=str(cfg.REPO_ROOT),
            timeout=120,
            check=False,
        )
    if result.returncode != 0:
        raise StackError(
            "migrate",
            f"`python -m payments_core.adapters.postgres.migrate` exited with code {result.returncode}",
            "fix the migration, then run `make local-up` again",
            log,
        )
    return "payments_core.adapters.postgres.migrate applied"


def register_webhook(s: LocalSettings) -> str:
    url = f"{s.api_url}{cfg.WEBHOOK_PATH}"
    body = urllib.parse.urlencode({"url": url, "secret": cfg.STRIPE_WEBHOOK_SECRET}).encode()
    target = f"{s.localstripe_url}/_config/webhooks/{cfg.WEBHOOK_ID}"
    request = urllib.request.Request(target, data=body, method="POST")  # noqa: S310 (http://127.0.0.1)
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:  # noqa: S310 (127.0.0.1 only)
            resp.read()
    except OSError as exc:
        raise StackError(
            "webhook",
            f"registering the webhook in localstripe failed ({exc})",
            "read the log",
            s.log_path("localstripe"),
        ) from exc
    return f"localstripe -> {url}"
