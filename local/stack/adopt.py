"""Adopting servers the stack did not start (docker compose) instead of failing on a busy port.

Servers the local stack did not start but may use: ``docker compose`` (or anything else)
already listening on a configured port, and answering there as that server.

``make local-up`` adopts such a server instead of stopping on a busy port: it provisions it with
the same code as its own (topics, secrets, role and database, schema, webhook), starts the
Lambda emulators against it, and never stops or restarts it. A listener that does not answer
as the server expected there is still refused, in one line naming the process.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from local.stack import settings as cfg
from local.stack.processes import Component, port_open
from local.stack.settings import HOST, LocalSettings


def _kafka(s: LocalSettings) -> bool:
    from kafka import KafkaAdminClient

    try:
        admin = KafkaAdminClient(
            bootstrap_servers=s.kafka_bootstrap, request_timeout_ms=3000, client_id="local-adopt"
        )
    except Exception:  # whatever kafka-python raises, it is not a broker
        return False
    try:
        admin.list_topics()
        return True
    except Exception:
        return False
    finally:
        admin.close()


def _postgres(s: LocalSettings) -> bool:
    import pg8000.native

    try:
        conn = tcp_connection(s)
    except Exception:  # not PostgreSQL, or not our credentials
        return False
    try:
        return bool(
            conn.run("SELECT rolsuper OR rolcreatedb FROM pg_roles WHERE rolname = current_user")[0][0]
        )
    except pg8000.native.DatabaseError:
        return False
    finally:
        conn.close()


def _http_ok(url: str, key: str | None = None) -> bool:
    request = urllib.request.Request(url)  # noqa: S310 (http://127.0.0.1 only)
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=3) as resp:  # noqa: S310
            return bool(resp.status == 200)
    except OSError:
        return False


# What each adoptable server must answer; the others (the emulators, the issuer and the user
# service) are this checkout's own code and always run from it.
PROBES: dict[str, Callable[[LocalSettings], bool]] = {
    "kafka": _kafka,
    "postgres": _postgres,
    "moto": lambda s: _http_ok(f"{s.aws_endpoint}/moto-api/"),
    "localstripe": lambda s: _http_ok(f"{s.localstripe_url}/v1/customers?limit=1", cfg.STRIPE_SECRET_KEY),
    "stripe-mock": lambda s: _http_ok(f"{s.stripe_mock_url}/v1/customers?limit=1", cfg.STRIPE_SECRET_KEY),
}


def tcp_connection(s: LocalSettings, database: str = "postgres") -> Any:
    """A connection to an adopted PostgreSQL as the stack's user (``docker compose`` creates it
    as the server's superuser): there is no local socket to reach a server that is not ours."""
    import pg8000.native

    return pg8000.native.Connection(
        user=cfg.DB_USER,
        password=cfg.DB_PASSWORD,
        host=HOST,
        port=s.postgres_port,
        database=database,
        timeout=5,
    )


def _record(comp: Component) -> Path:
    return comp.settings.run_dir / f"{comp.name}.adopted.json"


def is_adopted(comp: Component) -> bool:
    """Adopted, and still answering on the ports it was adopted on."""
    try:
        ports = json.loads(_record(comp).read_text())["ports"]
    except (OSError, ValueError, KeyError):
        return False
    return bool(ports == comp.port_numbers and all(port_open(p) for p in ports))


def try_adopt(comp: Component) -> bool:
    """Adopt ``comp``'s server when every port of it is busy with something not ours that
    answers as that server; False (leave it to ``check_ports``' one-line refusal) otherwise."""
    probe = PROBES.get(comp.name)
    if probe is None or comp.running_pid() is not None or not comp.port_numbers:
        return False
    if not all(port_open(p) for p in comp.port_numbers) or not probe(comp.settings):
        return False
    _record(comp).parent.mkdir(parents=True, exist_ok=True)
    _record(comp).write_text(json.dumps({"ports": comp.port_numbers}))
    return True


def forget(comp: Component) -> bool:
    """Drop the adoption record (``make local-down``); the server itself is left running."""
    record = _record(comp)
    if record.exists():
        record.unlink()
        return True
    return False
