"""Ports, paths, test-only secrets and the client environment of the local stack.

Every port has a fixed default and an environment override (``LOCAL_<NAME>_PORT``) so two
checkouts, or a test that needs a busy port, can run side by side. Everything binds to
127.0.0.1 only.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"

# Versions pinned for reproducibility; bumping one invalidates its cache directory.
KAFKA_VERSION = "3.9.1"
SLF4J_RELOAD4J_VERSION = "1.7.36"
RELOAD4J_VERSION = "1.2.25"
MAVEN_DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.6.1"
STRIPE_MOCK_MODULE = "github.com/stripe/stripe-mock"
STRIPE_MOCK_VERSION = "v0.203.0"

# Test-only credentials: they only ever reach processes bound to 127.0.0.1.
# stripe-mock accepts only keys of exactly three underscore-separated parts (sk_test_<x>), so
# "sk_test_campusg_local" would be refused there; this one works on both Stripe emulators.
STRIPE_SECRET_KEY = "sk_test_campusglocal"  # noqa: S105
STRIPE_WEBHOOK_SECRET = "whsec_campusg_local"  # noqa: S105
DB_USER = "payments"
DB_PASSWORD = "payments_local_pw"  # noqa: S105
DB_NAME = "payments"

AWS_REGION = "ap-southeast-1"
AWS_ACCOUNT_ID = "123456789012"  # moto's default account
AWS_ACCESS_KEY_ID = "testing"
AWS_SECRET_ACCESS_KEY = "testing"  # noqa: S105

STRIPE_SECRET_KEY_SECRET_ID = "campusg/payments/stripe-secret-key"  # noqa: S105
STRIPE_WEBHOOK_SECRET_ID = "campusg/payments/stripe-webhook-secret"  # noqa: S105
DB_SECRET_ID = "campusg/payments/db-credentials"  # noqa: S105

PAYMENT_COMMANDS_TOPIC = "payment_commands"
PAYMENT_EVENTS_TOPIC = "payment_events"
DEAD_LETTER_TOPIC = "payment_commands.dlq"
DEAD_LETTER_QUEUE_NAME = "payment-commands-dlq"
TOPIC_PARTITIONS = {PAYMENT_COMMANDS_TOPIC: 3, PAYMENT_EVENTS_TOPIC: 3, DEAD_LETTER_TOPIC: 1}

# campusG's frontend (Vite's default origin): allowed by CORS on both API faces and as a
# session token's azp. FRONTEND_ORIGINS (comma-separated) overrides it.
FRONTEND_ORIGIN = "http://localhost:5173"
SESSION_TOKEN_LEEWAY_SECONDS = 5

WEBHOOK_PATH = "/api/stripe-webhook"
WEBHOOK_ID = "campusg-local"


def _port(name: str, default: int) -> int:
    raw = os.environ.get(name, "")
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise ValueError(f"{name} must be a port number, got {raw!r}") from exc
    if not 0 < value < 65536:
        raise ValueError(f"{name} must be a port number, got {raw!r}")
    return value


@dataclass(frozen=True)
class LocalSettings:
    kafka_port: int
    kafka_controller_port: int
    postgres_port: int
    localstripe_port: int
    stripe_mock_port: int
    moto_port: int
    api_port: int
    public_api_port: int  # the public face: the frontend's history route (public_history)
    issuer_port: int  # the local Clerk issuer: its JWKS (local/stack/issuer.py)
    user_service_port: int  # the stand-in for campusG's user service (local/stack/user_service.py)
    state_dir: Path  # data, logs and pid files (git-ignored)
    cache_dir: Path  # downloaded jars and binaries, shared by every checkout

    @property
    def logs_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def run_dir(self) -> Path:
        return self.state_dir / "run"

    def log_path(self, component: str) -> Path:
        return self.logs_dir / f"{component}.log"

    @property
    def kafka_bootstrap(self) -> str:
        return f"{HOST}:{self.kafka_port}"

    @property
    def aws_endpoint(self) -> str:
        return f"http://{HOST}:{self.moto_port}"

    @property
    def localstripe_url(self) -> str:
        return f"http://{HOST}:{self.localstripe_port}"

    @property
    def stripe_mock_url(self) -> str:
        return f"http://{HOST}:{self.stripe_mock_port}"

    @property
    def api_url(self) -> str:
        return f"http://{HOST}:{self.api_port}"

    @property
    def public_api_url(self) -> str:
        return f"http://{HOST}:{self.public_api_port}"

    @property
    def issuer_url(self) -> str:
        return f"http://{HOST}:{self.issuer_port}"

    @property
    def user_service_url(self) -> str:
        return f"http://{HOST}:{self.user_service_port}"

    @property
    def issuer_key_path(self) -> Path:
        """The local issuer's RSA signing key, made at each start of the issuer (git-ignored)."""
        return self.state_dir / "issuer" / "signing-key.pem"

    @property
    def frontend_origins(self) -> str:
        return os.environ.get("FRONTEND_ORIGINS") or FRONTEND_ORIGIN

    @property
    def dead_letter_queue_url(self) -> str:
        return f"{self.aws_endpoint}/{AWS_ACCOUNT_ID}/{DEAD_LETTER_QUEUE_NAME}"

    def db_secret_value(self) -> str:
        # The shape RDS generates for a managed master secret.
        return json.dumps(
            {
                "engine": "postgres",
                "username": DB_USER,
                "password": DB_PASSWORD,
                "host": HOST,
                "port": self.postgres_port,
                "dbname": DB_NAME,
            }
        )


def load() -> LocalSettings:
    """Read the port and path overrides from the environment (each call re-reads them)."""
    state = Path(os.environ.get("LOCAL_STATE_DIR") or REPO_ROOT / ".local")
    cache = Path(os.environ.get("LOCAL_CACHE_DIR") or Path.home() / ".cache" / "campusg")
    return LocalSettings(
        kafka_port=_port("LOCAL_KAFKA_PORT", 9092),
        kafka_controller_port=_port("LOCAL_KAFKA_CONTROLLER_PORT", 9093),
        postgres_port=_port("LOCAL_POSTGRES_PORT", 55432),
        localstripe_port=_port("LOCAL_LOCALSTRIPE_PORT", 8420),
        stripe_mock_port=_port("LOCAL_STRIPE_MOCK_PORT", 12111),
        moto_port=_port("LOCAL_MOTO_PORT", 4566),
        api_port=_port("LOCAL_API_PORT", 3000),
        public_api_port=_port("LOCAL_PUBLIC_API_PORT", 3001),
        issuer_port=_port("LOCAL_ISSUER_PORT", 3002),
        user_service_port=_port("LOCAL_USER_SERVICE_PORT", 3003),
        state_dir=state.resolve(),
        cache_dir=cache.expanduser().resolve(),
    )


def client_env(settings: LocalSettings | None = None) -> dict[str, str]:
    """Everything a client, a test or a locally run function needs to reach the local stack.

    The service itself reads secrets only from Secrets Manager (the ``*_SECRET_ID`` names);
    ``STRIPE_SECRET_KEY`` and ``STRIPE_WEBHOOK_SECRET`` are for tests and scripts that act as
    Stripe or as a Stripe client.
    """
    s = settings or load()
    return {
        # Kafka
        "KAFKA_BOOTSTRAP_SERVERS": s.kafka_bootstrap,
        "KAFKA_SECURITY_PROTOCOL": "PLAINTEXT",
        "PAYMENT_COMMANDS_TOPIC": PAYMENT_COMMANDS_TOPIC,
        "PAYMENT_EVENTS_TOPIC": PAYMENT_EVENTS_TOPIC,
        "DEAD_LETTER_TOPIC": DEAD_LETTER_TOPIC,
        # PostgreSQL: the service takes credentials from the secret, host/port/name from here
        "DB_SECRET_ID": DB_SECRET_ID,
        "DB_HOST": HOST,
        "DB_PORT": str(s.postgres_port),
        "DB_NAME": DB_NAME,
        "DB_SSL": "false",
        # for psql and ad-hoc scripts (the service never reads PG* variables)
        "PGHOST": HOST,
        "PGPORT": str(s.postgres_port),
        "PGUSER": DB_USER,
        "PGPASSWORD": DB_PASSWORD,
        "PGDATABASE": DB_NAME,
        # Stripe
        "STRIPE_API_BASE": s.localstripe_url,
        "STRIPE_MOCK_API_BASE": s.stripe_mock_url,
        "STRIPE_SECRET_KEY": STRIPE_SECRET_KEY,
        "STRIPE_WEBHOOK_SECRET": STRIPE_WEBHOOK_SECRET,
        "STRIPE_SECRET_KEY_SECRET_ID": STRIPE_SECRET_KEY_SECRET_ID,
        "STRIPE_WEBHOOK_SECRET_ID": STRIPE_WEBHOOK_SECRET_ID,
        # AWS (moto)
        "AWS_ENDPOINT_URL": s.aws_endpoint,
        "AWS_DEFAULT_REGION": AWS_REGION,
        "AWS_REGION": AWS_REGION,
        "AWS_ACCESS_KEY_ID": AWS_ACCESS_KEY_ID,
        "AWS_SECRET_ACCESS_KEY": AWS_SECRET_ACCESS_KEY,
        "LOCAL_DEAD_LETTER_QUEUE_URL": s.dead_letter_queue_url,
        # local API Gateway: the private face (the sagas) and the public one (the frontend)
        "API_URL": s.api_url,
        "PUBLIC_API_URL": s.public_api_url,
        # the public history route: the local Clerk issuer and the frontend's origin
        "CLERK_ISSUER": s.issuer_url,
        "FRONTEND_ORIGINS": s.frontend_origins,
        "SESSION_TOKEN_LEEWAY_SECONDS": str(SESSION_TOKEN_LEEWAY_SECONDS),
        # campusG's user service (the stand-in): every payout destination is checked against it
        "USER_SERVICE_URL": s.user_service_url,
        # Powertools
        "POWERTOOLS_SERVICE_NAME": "payment-service",
        "POWERTOOLS_METRICS_NAMESPACE": "CampusG/Payments",
        "POWERTOOLS_TRACE_DISABLED": "true",
        "POWERTOOLS_LOG_LEVEL": "INFO",
    }
