"""Shared fixtures: the local stack's environment and clients for each of its parts.

Integration tests (``@pytest.mark.integration``) need the stack (``make local-up``; ``make
test`` starts it). They fail with that hint, rather than skip, when it is not running.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from local.stack import control as stack
from local.stack.lambda_runtime import FakeLambdaContext, handler_path, load_module
from local.stack.settings import DB_NAME, DB_PASSWORD, DB_USER, HOST, LocalSettings, client_env
from local.stack.settings import load as load_local_settings

REQUIRED_COMPONENTS = ("kafka", "postgres", "moto", "localstripe", "stripe-mock", "user-service")


def _clear_service_settings_cache() -> None:
    try:
        from payments_core.config import get_settings
    except ImportError:
        return
    get_settings.cache_clear()


@pytest.fixture(scope="session", autouse=True)
def local_env() -> Iterator[dict[str, str]]:
    """The local stack's client environment (``local.stack.settings.client_env()``), applied to
    ``os.environ`` for the whole session and restored afterwards."""
    env = client_env()
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    _clear_service_settings_cache()
    yield env
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    _clear_service_settings_cache()


@pytest.fixture(scope="session")
def local_settings() -> LocalSettings:
    """Ports and paths of the local stack."""
    return load_local_settings()


def _down(local_settings: LocalSettings, names: tuple[str, ...]) -> list[str]:
    """Which of ``names`` do not answer: a server on its ports, a portless emulator by its pid."""
    return [
        comp.name
        for comp in stack.components(local_settings)
        if comp.name in names
        and not (
            all(stack.port_open(p) for p in comp.port_numbers)
            if comp.port_numbers
            else comp.running_pid() is not None
        )
    ]


@pytest.fixture(scope="session")
def local_stack(local_settings: LocalSettings) -> LocalSettings:
    """Fails the test unless the stack's servers answer on their ports."""
    down = _down(local_settings, REQUIRED_COMPONENTS)
    if down:
        pytest.fail(f"local stack not running ({', '.join(down)} down): run `make local-up`", pytrace=False)
    return local_settings


@pytest.fixture(autouse=True)
def _integration_needs_stack(request: pytest.FixtureRequest) -> None:
    """An integration test needs the stack: the components its ``needs`` marker names (what
    ``make test-one`` starts for it), else the servers of REQUIRED_COMPONENTS."""
    if request.node.get_closest_marker("integration") is None:
        return
    needs = request.node.get_closest_marker("needs")
    if needs is None:
        request.getfixturevalue("local_stack")
        return
    down = _down(request.getfixturevalue("local_settings"), tuple(needs.args))
    if down:
        pytest.fail(f"local stack: {', '.join(down)} down: run `make local-up`", pytrace=False)


@pytest.fixture
def unique() -> str:
    """A short random suffix for names that must not collide between tests or runs."""
    return uuid.uuid4().hex[:12]


# --- Kafka -----------------------------------------------------------------------------------


@pytest.fixture
def make_producer(local_settings: LocalSettings) -> Iterator[Callable[..., Any]]:
    """``make_producer(**overrides) -> KafkaProducer`` (acks=all); closed after the test."""
    from kafka import KafkaProducer

    made: list[Any] = []

    def factory(**overrides: Any) -> Any:
        config: dict[str, Any] = {"bootstrap_servers": local_settings.kafka_bootstrap, "acks": "all"}
        config.update(overrides)
        producer = KafkaProducer(**config)
        made.append(producer)
        return producer

    yield factory
    for producer in made:
        producer.close(timeout=5)


@pytest.fixture
def make_consumer(local_settings: LocalSettings) -> Iterator[Callable[..., Any]]:
    """``make_consumer(*topics, group_id=None, **overrides) -> KafkaConsumer``.

    Defaults: a fresh group id, ``auto_offset_reset="earliest"``, no auto commit. Pass no
    topics to ``assign()`` partitions yourself. Closed after the test.
    """
    from kafka import KafkaConsumer

    made: list[Any] = []

    def factory(*topics: str, group_id: str | None = None, **overrides: Any) -> Any:
        config: dict[str, Any] = {
            "bootstrap_servers": local_settings.kafka_bootstrap,
            "group_id": group_id or f"test-{uuid.uuid4().hex[:10]}",
            "auto_offset_reset": "earliest",
            "enable_auto_commit": False,
            "consumer_timeout_ms": 10_000,
        }
        config.update(overrides)
        consumer = KafkaConsumer(*topics, **config)
        made.append(consumer)
        return consumer

    yield factory
    for consumer in made:
        consumer.close()


@pytest.fixture
def make_topic(local_settings: LocalSettings) -> Iterator[Callable[..., str]]:
    """``make_topic(partitions=1, prefix="test") -> name``: a fresh topic, deleted afterwards."""
    from kafka.admin import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=local_settings.kafka_bootstrap, client_id="tests")
    created: list[str] = []

    def factory(partitions: int = 1, prefix: str = "test") -> str:
        name = f"{prefix}.{uuid.uuid4().hex[:10]}"
        admin.create_topics(
            {name: {"num_partitions": partitions, "replication_factor": 1}}, wait_for_metadata=True
        )
        created.append(name)
        return name

    yield factory
    if created:
        with contextlib.suppress(Exception):  # best effort: a leftover test topic harms nothing
            admin.delete_topics(created)
    admin.close()


# --- PostgreSQL ------------------------------------------------------------------------------


@pytest.fixture
def make_pg_connection(local_settings: LocalSettings) -> Iterator[Callable[..., Any]]:
    """``make_pg_connection(database="payments", **overrides) -> pg8000.native.Connection``
    as the service's database user; closed after the test."""
    import pg8000.native

    made: list[Any] = []

    def factory(database: str = DB_NAME, **overrides: Any) -> Any:
        params: dict[str, Any] = {
            "user": DB_USER,
            "password": DB_PASSWORD,
            "host": HOST,
            "port": local_settings.postgres_port,
            "database": database,
            "timeout": 10,
        }
        params.update(overrides)
        conn = pg8000.native.Connection(**params)
        made.append(conn)
        return conn

    yield factory
    for conn in made:
        with contextlib.suppress(Exception):  # already closed by the test
            conn.close()


@pytest.fixture
def pg_connection(make_pg_connection: Callable[..., Any]) -> Any:
    """A ``pg8000.native.Connection`` to the ``payments`` database."""
    return make_pg_connection()


# --- AWS (moto) and Stripe (localstripe, stripe-mock) ---------------------------------------


@pytest.fixture
def aws_client(local_settings: LocalSettings) -> Callable[[str], Any]:
    """``aws_client("secretsmanager") -> boto3 client`` pointed at moto."""
    import boto3

    def factory(service: str) -> Any:
        make_client: Any = boto3.client  # the stubs type each service name separately
        return make_client(service, endpoint_url=local_settings.aws_endpoint)

    return factory


def _stripe_client(base: str, api_key: str) -> Any:
    import stripe

    return stripe.StripeClient(api_key, base_addresses={"api": base}, max_network_retries=0)


@pytest.fixture
def localstripe_client(local_env: dict[str, str]) -> Any:
    """A ``stripe.StripeClient`` talking to localstripe (stateful)."""
    return _stripe_client(local_env["STRIPE_API_BASE"], local_env["STRIPE_SECRET_KEY"])


@pytest.fixture
def stripe_mock_client(local_env: dict[str, str]) -> Any:
    """A ``stripe.StripeClient`` talking to stripe-mock (validates like real Stripe)."""
    return _stripe_client(local_env["STRIPE_MOCK_API_BASE"], local_env["STRIPE_SECRET_KEY"])


# --- Lambda handlers -------------------------------------------------------------------------


@pytest.fixture
def load_function() -> Callable[[str | Path], ModuleType]:
    """``load_function("authorize_payment") -> module`` imported from
    ``functions/authorize_payment/app.py`` (or any ``.../app.py`` path) by importlib, under a
    unique module name: each call is a fresh cold start."""

    def factory(name_or_path: str | Path) -> ModuleType:
        return load_module(handler_path(str(name_or_path)))

    return factory


@pytest.fixture
def lambda_context() -> Callable[..., FakeLambdaContext]:
    """``lambda_context("authorize_payment", timeout_seconds=30) -> FakeLambdaContext``."""

    def factory(function_name: str = "test-function", timeout_seconds: float = 30.0) -> FakeLambdaContext:
        return FakeLambdaContext(function_name=function_name, timeout_seconds=timeout_seconds)

    return factory
