"""Each part of the local stack is a real server: these talk to them over the network."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from local.stack.settings import (
    DB_NAME,
    DB_SECRET_ID,
    DEAD_LETTER_QUEUE_NAME,
    DEAD_LETTER_TOPIC,
    PAYMENT_COMMANDS_TOPIC,
    PAYMENT_EVENTS_TOPIC,
    REPO_ROOT,
    STRIPE_SECRET_KEY_SECRET_ID,
    STRIPE_WEBHOOK_SECRET_ID,
    LocalSettings,
)

pytestmark = pytest.mark.integration


def test_kafka_round_trip_on_payment_commands(
    make_producer: Callable[..., Any], make_consumer: Callable[..., Any], local_settings: LocalSettings
) -> None:
    from kafka import TopicPartition

    consumer = make_consumer()
    partitions = [
        TopicPartition(PAYMENT_COMMANDS_TOPIC, p)
        for p in consumer.partitions_for_topic(PAYMENT_COMMANDS_TOPIC)
    ]
    assert len(partitions) == 3
    consumer.assign(partitions)
    consumer.seek_to_end()
    for tp in partitions:
        consumer.position(tp)  # resolve the end offsets before producing

    probe = {"type": "local_stack_probe", "correlation_id": str(uuid.uuid4()), "payload": {}}
    producer = make_producer()
    producer.send(PAYMENT_COMMANDS_TOPIC, json.dumps(probe).encode(), headers=[("probe", b"1")]).get(
        timeout=10
    )

    deadline = time.monotonic() + 15
    received = None
    while received is None and time.monotonic() < deadline:
        for records in consumer.poll(timeout_ms=500).values():
            for record in records:
                if json.loads(record.value).get("correlation_id") == probe["correlation_id"]:
                    received = record
    assert received is not None, "the produced message was not consumed"
    assert received.headers == [("probe", b"1")]


def test_topics_exist_with_their_partitions(make_consumer: Callable[..., Any]) -> None:
    consumer = make_consumer()
    assert len(consumer.partitions_for_topic(PAYMENT_COMMANDS_TOPIC) or ()) == 3
    assert len(consumer.partitions_for_topic(PAYMENT_EVENTS_TOPIC) or ()) == 3
    assert consumer.partitions_for_topic(DEAD_LETTER_TOPIC)


def _schema(conn: Any) -> list[tuple[Any, ...]]:
    rows = conn.run(
        "SELECT table_name, column_name, data_type, is_nullable, column_default "
        "FROM information_schema.columns WHERE table_schema = 'public' ORDER BY table_name, column_name"
    )
    return [tuple(r) for r in rows]


@pytest.fixture
def scratch_db(make_pg_connection: Callable[..., Any], unique: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """A database of its own (its name, and the parameters to reach it), dropped afterwards."""
    scratch = f"migrate_test_{unique}"
    admin = make_pg_connection(DB_NAME)
    admin.run(f"CREATE DATABASE {scratch}")
    try:
        yield (
            scratch,
            {
                "user": os.environ["PGUSER"],
                "password": os.environ["PGPASSWORD"],
                "host": os.environ["DB_HOST"],
                "port": int(os.environ["DB_PORT"]),
                "database": scratch,
            },
        )
    finally:
        admin.run(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :d AND pid <> pg_backend_pid()",
            d=scratch,
        )
        admin.run(f"DROP DATABASE IF EXISTS {scratch}")


def test_migrations_create_tables_once(
    make_pg_connection: Callable[..., Any], scratch_db: tuple[str, dict[str, Any]]
) -> None:
    """On a scratch database: the first run creates the tables, the second changes nothing."""
    from payments_core.adapters.postgres.db import Database
    from payments_core.adapters.postgres.migrate import apply_migrations, migration_files

    scratch, conn_params = scratch_db
    db = Database(**conn_params)
    try:
        first = apply_migrations(db)
    finally:
        db.close()
    assert first == [version for version, _ in migration_files()]
    check = make_pg_connection(scratch)
    tables = {r[0] for r in check.run("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    assert {"schema_migrations", "payments", "outbox"} <= tables
    before = _schema(check)
    recorded = check.run("SELECT version, applied_at FROM schema_migrations ORDER BY version")

    db = Database(**conn_params)
    try:
        second = apply_migrations(db)
    finally:
        db.close()
    assert second == []
    assert _schema(check) == before
    assert check.run("SELECT version, applied_at FROM schema_migrations ORDER BY version") == recorded
    check.close()


def test_a_migration_runs_as_postgresql_parses_it(
    make_pg_connection: Callable[..., Any],
    scratch_db: tuple[str, dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A migration file is sent whole: a function body and a string holding ';' or '--' are
    PostgreSQL's to parse (splitting on ';' by hand cut them apart), and a file that fails
    half-way applies nothing of itself."""
    from payments_core.adapters.postgres import migrate
    from payments_core.adapters.postgres.db import Database

    tricky = """
        CREATE TABLE semicolons (note text NOT NULL DEFAULT 'a; b -- not a comment');
        CREATE FUNCTION semicolons_note() RETURNS text LANGUAGE plpgsql AS $$
        BEGIN
            RETURN 'x;y';
        END;
        $$;
        INSERT INTO semicolons DEFAULT VALUES;
    """
    broken = "CREATE TABLE half_done (id int); SELECT no_such_function();"
    scratch, params = scratch_db
    monkeypatch.setattr(migrate, "migration_files", lambda: [("9001_tricky", tricky)])
    db = Database(**params)
    try:
        assert migrate.apply_migrations(db) == ["9001_tricky"]
    finally:
        db.close()
    check = make_pg_connection(scratch)
    assert check.run("SELECT note, semicolons_note() FROM semicolons") == [["a; b -- not a comment", "x;y"]]

    monkeypatch.setattr(
        migrate, "migration_files", lambda: [("9001_tricky", tricky), ("9002_broken", broken)]
    )
    db = Database(**params)
    try:
        with pytest.raises(Exception, match="no_such_function"):
            migrate.apply_migrations(db)
    finally:
        db.close()
    assert check.run("SELECT to_regclass('half_done') IS NULL")[0][0] is True
    assert check.run("SELECT version FROM schema_migrations") == [["9001_tricky"]]
    check.close()


def test_local_up_applied_the_schema(pg_connection: Any) -> None:
    from payments_core.adapters.postgres.migrate import migration_files

    applied = {r[0] for r in pg_connection.run("SELECT version FROM schema_migrations")}
    assert {version for version, _ in migration_files()} <= applied


def test_localstripe_manual_capture_reaches_requires_capture(localstripe_client: Any) -> None:
    order_id = str(uuid.uuid4())
    intent = localstripe_client.v1.payment_intents.create(
        params={
            "amount": 1299,
            "currency": "sgd",
            "payment_method": "pm_card_visa",
            "capture_method": "manual",
            "confirm": True,
            "metadata": {"order_id": order_id},
        }
    )
    assert intent.status == "requires_capture"
    again = localstripe_client.v1.payment_intents.retrieve(intent.id)
    assert again.status == "requires_capture"
    assert again.metadata["order_id"] == order_id  # stateful: the intent is stored


def test_stripe_mock_accepts_valid_and_rejects_invalid(stripe_mock_client: Any) -> None:
    import stripe

    intent = stripe_mock_client.v1.payment_intents.create(
        params={
            "amount": 1299,
            "currency": "sgd",
            "customer": "cus_123",
            "payment_method": "pm_card_visa",
            "capture_method": "manual",
            "confirm": True,
            "metadata": {"order_id": "o-1"},
        },
        options={"idempotency_key": "order-o-1"},
    )
    assert intent.id.startswith("pi_")
    with pytest.raises(stripe.InvalidRequestError) as invalid:
        stripe_mock_client.v1.payment_intents.create(
            params={"amount": 1299, "currency": "sgd", "capture_method": "whenever"}
        )
    assert invalid.value.http_status == 400
    with pytest.raises(stripe.InvalidRequestError):
        stripe_mock_client.v1.payment_intents.create(params={"currency": "sgd"})  # amount is required


def test_moto_secret_round_trip(aws_client: Callable[[str], Any], unique: str) -> None:
    sm = aws_client("secretsmanager")
    name = f"campusg/test/{unique}"
    sm.create_secret(Name=name, SecretString="round-trip")
    try:
        assert sm.get_secret_value(SecretId=name)["SecretString"] == "round-trip"
    finally:
        sm.delete_secret(SecretId=name, ForceDeleteWithoutRecovery=True)


def test_moto_is_seeded(aws_client: Callable[[str], Any], local_settings: LocalSettings) -> None:
    sm = aws_client("secretsmanager")
    assert sm.get_secret_value(SecretId=STRIPE_SECRET_KEY_SECRET_ID)["SecretString"].startswith("sk_test_")
    assert sm.get_secret_value(SecretId=STRIPE_WEBHOOK_SECRET_ID)["SecretString"].startswith("whsec_")
    db = json.loads(sm.get_secret_value(SecretId=DB_SECRET_ID)["SecretString"])
    assert {"username", "password", "host", "port", "dbname"} <= db.keys()
    assert db["port"] == local_settings.postgres_port
    url = aws_client("sqs").get_queue_url(QueueName=DEAD_LETTER_QUEUE_NAME)["QueueUrl"]
    assert url.endswith(DEAD_LETTER_QUEUE_NAME)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_local_up_reports_a_foreign_port_in_one_line(tmp_path: Path) -> None:
    """A port held by something that is not ours ends `up` with one line naming it."""
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen(1)
    taken = blocker.getsockname()[1]
    env = dict(os.environ)
    for name in (
        "LOCAL_KAFKA_PORT",
        "LOCAL_KAFKA_CONTROLLER_PORT",
        "LOCAL_LOCALSTRIPE_PORT",
        "LOCAL_STRIPE_MOCK_PORT",
        "LOCAL_MOTO_PORT",
        "LOCAL_API_PORT",
        "LOCAL_PUBLIC_API_PORT",
        "LOCAL_ISSUER_PORT",
    ):
        env[name] = str(_free_port())
    env["LOCAL_POSTGRES_PORT"] = str(taken)
    env["LOCAL_STATE_DIR"] = str(tmp_path / "state")  # nothing of this stack runs there
    try:
        result = subprocess.run(
            [sys.executable, "-m", "local.stack", "up"],
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        blocker.close()
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "postgres" in lines[0]
    assert str(taken) in lines[0]
    assert "LOCAL_POSTGRES_PORT" in lines[0]  # the fix
    assert "Traceback" not in result.stderr + result.stdout
    assert not (tmp_path / "state" / "run").exists() or not any((tmp_path / "state" / "run").iterdir())
