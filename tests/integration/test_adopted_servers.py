"""`make local-up` over servers it did not start (what `docker compose -f
docker-compose.local.yml up` leaves listening): it adopts those that answer as the expected
server, provisions them with its own code, starts its emulators against them, and never stops
or restarts them.

The "compose" servers here are the stack's own, started from another state directory: the
same listening sockets a container would publish, without Docker (none runs on this machine)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pg8000.native
import pytest

from local.stack.settings import DB_NAME, DB_PASSWORD, DB_USER, REPO_ROOT

pytestmark = [pytest.mark.integration, pytest.mark.needs()]

PORT_VARS = (
    "LOCAL_KAFKA_PORT", "LOCAL_KAFKA_CONTROLLER_PORT", "LOCAL_POSTGRES_PORT", "LOCAL_LOCALSTRIPE_PORT",
    "LOCAL_STRIPE_MOCK_PORT", "LOCAL_MOTO_PORT", "LOCAL_API_PORT", "LOCAL_PUBLIC_API_PORT",
    "LOCAL_ISSUER_PORT", "LOCAL_USER_SERVICE_PORT",
)  # fmt: skip
SERVERS = ["kafka", "postgres", "moto", "localstripe", "stripe-mock"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _stack(env: dict[str, str], *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "local.stack", *args],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip


@pytest.fixture(scope="module")
def two_checkouts(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[dict[str, str], dict[str, str]]]:
    """The "compose" servers (state A, servers only), and a checkout (state B) on the same ports."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("LOCAL_")}
    ports = {name: str(_free_port()) for name in PORT_VARS}
    compose = {**base, **ports, "LOCAL_STATE_DIR": str(tmp_path_factory.mktemp("compose"))}
    checkout = {**base, **ports, "LOCAL_STATE_DIR": str(tmp_path_factory.mktemp("checkout"))}
    started = _stack(compose, "up", "--only", *SERVERS, "--no-emulators")
    assert started.returncode == 0, started.stdout + started.stderr
    try:
        yield compose, checkout
    finally:
        _stack(checkout, "down", timeout=120)
        _stack(compose, "down", timeout=120)


def test_local_up_adopts_listening_servers_and_provisions_them(
    two_checkouts: tuple[dict[str, str], dict[str, str]],
) -> None:
    compose, checkout = two_checkouts
    # what the compose file's postgres starts with: no schema yet
    pg = pg8000.native.Connection(
        user=DB_USER,
        password=DB_PASSWORD,
        host="127.0.0.1",
        port=int(compose["LOCAL_POSTGRES_PORT"]),
        database=DB_NAME,
    )
    pg.run("DROP TABLE IF EXISTS schema_migrations")
    pg.run("DROP TABLE IF EXISTS payments CASCADE")

    result = _stack(checkout, "up")
    assert result.returncode == 0, result.stdout + result.stderr
    for name in SERVERS:
        assert any(line.startswith(name) and " adopted " in line for line in result.stdout.splitlines()), (
            result.stdout
        )
    # provisioned by the same code as the stack's own: schema, webhook, topics, secrets
    assert pg.run("SELECT count(*) FROM schema_migrations")[0][0] > 0
    assert pg.run("SELECT to_regclass('payments') IS NOT NULL")[0][0] is True
    assert "webhook" in result.stdout and f"127.0.0.1:{checkout['LOCAL_API_PORT']}" in result.stdout
    pg.close()
    # the checkout's own emulators run and answer against the adopted servers
    with urllib.request.urlopen(f"http://127.0.0.1:{checkout['LOCAL_API_PORT']}/health", timeout=10) as resp:
        assert resp.status == 200
        assert json.loads(resp.read())["status"] == "ok"

    status = _stack(checkout, "status")
    assert "adopted (not started by this checkout)" in status.stdout
    assert not any((Path(checkout["LOCAL_STATE_DIR"]) / "run").glob("kafka.json"))


def test_a_drill_cannot_restart_an_adopted_server_and_local_down_leaves_it_running(
    two_checkouts: tuple[dict[str, str], dict[str, str]],
) -> None:
    compose, checkout = two_checkouts
    refused = _stack(checkout, "down", "--only", "kafka")
    assert refused.returncode == 1
    (line,) = refused.stderr.strip().splitlines()
    assert "kafka: adopted (started outside this checkout" in line
    assert "does not stop or restart it" in line

    down = _stack(checkout, "down")
    assert down.returncode == 0, down.stderr
    assert "kafka         adopted, left running" in down.stdout
    still = _stack(compose, "status")
    for name in SERVERS:
        assert any(line.startswith(name) and " up " in line for line in still.stdout.splitlines()), (
            still.stdout
        )
