"""How Database._connect logs in, for each way the stack configures it (PostgreSQL itself is
replaced here by a recorder of the connection parameters; the TLS handshake against a real
server is in tests/integration/test_migration_tls.py)."""

from __future__ import annotations

import dataclasses
import ssl
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest
from payments_core.adapters.postgres import db as db_module
from payments_core.config import get_settings


@pytest.fixture
def connect_params(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []
    monkeypatch.setattr(
        db_module.pg8000.native, "Connection", lambda **params: seen.append(params) or object()
    )
    return seen


def test_functions_log_in_as_the_app_role_with_an_iam_token(
    connect_params: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in {
        "AWS_ACCESS_KEY_ID": "AKIDEXAMPLE",
        "AWS_SECRET_ACCESS_KEY": "example-secret",
        "AWS_SESSION_TOKEN": "example-session",
    }.items():
        monkeypatch.setenv(key, value)
    settings = dataclasses.replace(
        get_settings(),
        db_iam_auth=True,
        db_user="payments_app",
        db_host="proxy.example.internal",
        db_port=5432,
        db_name="payments",
        db_ssl=True,
        db_secret_id="must-not-be-read",
    )
    monkeypatch.setattr(db_module, "get_secret_json", lambda _: pytest.fail("the secret must not be read"))
    db_module.Database(settings).connection()
    (params,) = connect_params
    assert params["user"] == "payments_app" and params["host"] == "proxy.example.internal"
    token = urlparse("https://" + params["password"])
    query = parse_qs(token.query)
    assert token.hostname == "proxy.example.internal" and token.port == 5432
    assert query["Action"] == ["connect"] and query["DBUser"] == ["payments_app"]
    assert "X-Amz-Signature" in query  # signed with the function's credentials, nothing stored
    assert isinstance(params["ssl_context"], ssl.SSLContext)
    assert params["ssl_context"].verify_mode == ssl.CERT_REQUIRED and params["ssl_context"].check_hostname


def test_a_configured_ca_bundle_that_is_missing_is_an_error(
    connect_params: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(
        db_module,
        "get_secret_json",
        lambda _: {
            "username": "payments_admin",
            "password": "x",
            "host": "db.example.internal",
            "port": 5432,
        },
    )
    settings = dataclasses.replace(
        get_settings(), db_ssl=True, db_iam_auth=False, db_ca_bundle=str(tmp_path / "nope.pem")
    )
    with pytest.raises(FileNotFoundError):
        db_module.Database(settings).connection()
    assert connect_params == []  # never connects with less verification than configured


def test_workers_connecting_at_once_share_one_rds_client_made_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 16 item 6: 16 workers log in at once on a cold start, and boto3's default session
    is not thread-safe. The RDS client is made once, under a lock, and shared (clients are)."""
    import threading
    import time

    import boto3

    made: list[int] = []
    inside = threading.Semaphore(1)

    class SlowSession:
        def __init__(self) -> None:
            if not inside.acquire(blocking=False):
                raise AssertionError("two threads built boto3 sessions at once")
            time.sleep(0.05)  # long enough for every other worker to arrive
            made.append(1)
            inside.release()

        def client(self, name: str, region_name: str) -> object:
            return object()

    monkeypatch.setattr(boto3.session, "Session", SlowSession)
    monkeypatch.setattr(db_module, "_rds_clients", {})
    clients: list[object] = []
    workers = [
        threading.Thread(target=lambda: clients.append(db_module._rds_client("ap-southeast-1")))
        for _ in range(16)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert len(made) == 1 and len(clients) == 16 and len({id(c) for c in clients}) == 1
