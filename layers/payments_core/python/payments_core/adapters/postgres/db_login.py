"""How the service logs in to PostgreSQL: the connection parameters for each way the stack is
configured, and the connection opened with them.

Apart from ``db`` because logging in is a job of its own (which credentials, which certificate
authority) that nothing of a connection's life after it needs: the functions log in as the
application role with an IAM token through RDS Proxy, the migration and the local stack with
the password of a secret, and each over TLS verified against Amazon RDS's authorities."""

from __future__ import annotations

import os
import ssl
import threading
from importlib import resources
from typing import Any

import pg8000.native
from pg8000.exceptions import DatabaseError, InterfaceError

from payments_core.adapters.secrets import get_secret_json
from payments_core.config import Settings
from payments_core.domain.errors import TransientError

# Errors that mean "the database could not be reached or the connection broke".
CONNECTION_ERRORS = (InterfaceError, OSError, ssl.SSLError, TimeoutError)
# Amazon RDS's certificate authorities (PEM), put into the layer by infra/build_layer.py.
RDS_CA_BUNDLE = "rds-ca-bundle.pem"

# boto3's default session is not thread-safe, and a container's workers connect at once on a
# cold start: one RDS client (clients are thread-safe once made), made under a lock.
_rds_clients: dict[str, Any] = {}
_rds_clients_lock = threading.Lock()


def _rds_client(region: str) -> Any:
    with _rds_clients_lock:
        client = _rds_clients.get(region)
        if client is None:
            import boto3

            client = _rds_clients[region] = boto3.session.Session().client("rds", region_name=region)
        return client


def open_connection(s: Settings, overrides: dict[str, Any]) -> pg8000.native.Connection:
    """A new connection as ``s`` configures it (``overrides``: pg8000's own parameters, as
    tests and the local tools pass them); TransientError when the database cannot be reached."""
    params: dict[str, Any]
    if overrides:
        params = dict(overrides)
    elif s.db_iam_auth:
        # The application role through the RDS Proxy: a 15-minute token signed with the
        # function's own credentials (no network call), so no password to read or leak.
        params = {"user": s.db_user, "host": s.db_host, "port": s.db_port or 5432, "database": s.db_name}
        params["password"] = _rds_client(s.aws_region).generate_db_auth_token(
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
    if s.db_ssl and not overrides:
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
