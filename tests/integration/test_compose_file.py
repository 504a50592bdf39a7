"""docker-compose.local.yml against the stack it describes: Docker Compose itself validates the
file (the CLI is built from source, pinned: `make compose-cli`), and the file runs the same
versions, ports and credentials as `make local-up`, provisioning nothing of its own (topics,
keys and secrets come from local/stack/provision.py when `make local-up` adopts its servers)."""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import subprocess
from typing import Any

import pytest
import yaml

from local.stack import compose_cli
from local.stack import settings as cfg
from local.stack.postgres_server import Postgres

pytestmark = [pytest.mark.integration, pytest.mark.needs()]

COMPOSE_FILE = cfg.REPO_ROOT / "docker-compose.local.yml"
# the compose service, its port variable, and the container port it publishes
PUBLISHED = {
    "kafka": ("LOCAL_KAFKA_PORT", 9092),
    "postgres": ("LOCAL_POSTGRES_PORT", 5432),
    "moto": ("LOCAL_MOTO_PORT", 4566),
    "stripe-mock": ("LOCAL_STRIPE_MOCK_PORT", 12111),
}


@pytest.fixture(scope="module")
def services() -> dict[str, Any]:
    return dict(yaml.safe_load(COMPOSE_FILE.read_text())["services"])


@pytest.fixture(scope="module")
def defaults(monkeypatch_module: pytest.MonkeyPatch) -> cfg.LocalSettings:
    """The stack's settings with no LOCAL_* override: the ports the compose file must default to."""
    for name in [n for n in os.environ if n.startswith("LOCAL_") and n.endswith("_PORT")]:
        monkeypatch_module.delenv(name)
    return cfg.load()


@pytest.fixture(scope="module")
def monkeypatch_module() -> Any:
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def test_docker_compose_validates_the_file() -> None:
    cli = compose_cli.ensure()
    result = subprocess.run(
        [str(cli), "-f", str(COMPOSE_FILE), "config", "--quiet"],
        cwd=cfg.REPO_ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    # and what it resolves keeps every published port on 127.0.0.1
    resolved = subprocess.run(
        [str(cli), "-f", str(COMPOSE_FILE), "config", "--format", "json"],
        cwd=cfg.REPO_ROOT, capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    for name, spec in json.loads(resolved.stdout)["services"].items():
        for port in spec.get("ports", []):
            assert port["host_ip"] == "127.0.0.1", (name, port)


def test_images_are_the_versions_the_stack_runs(services: dict[str, Any]) -> None:
    images = {name: spec.get("image", "") for name, spec in services.items()}
    assert images["kafka"] == f"apache/kafka:{cfg.KAFKA_VERSION}"
    server = subprocess.run(
        [str(Postgres.bin_dir() / "postgres"), "--version"], capture_output=True, text=True
    )
    major_minor = re.search(r"PostgreSQL\) (\d+\.\d+)", server.stdout)
    assert major_minor is not None, server.stdout
    assert images["postgres"] == f"postgres:{major_minor.group(1)}"
    assert images["moto"] == f"motoserver/moto:{importlib.metadata.version('moto')}"
    assert images["stripe-mock"] == f"stripe/stripe-mock:{cfg.STRIPE_MOCK_VERSION}"
    assert f"localstripe=={importlib.metadata.version('localstripe')}" in " ".join(
        services["localstripe"]["command"]
    )
    assert all(":" in image and not image.endswith(":latest") for image in images.values() if image)


def test_ports_default_to_the_stacks_and_follow_its_variables(
    services: dict[str, Any], defaults: cfg.LocalSettings
) -> None:
    expected = {
        "LOCAL_KAFKA_PORT": defaults.kafka_port,
        "LOCAL_POSTGRES_PORT": defaults.postgres_port,
        "LOCAL_MOTO_PORT": defaults.moto_port,
        "LOCAL_STRIPE_MOCK_PORT": defaults.stripe_mock_port,
    }
    for name, (variable, container_port) in PUBLISHED.items():
        assert services[name]["ports"] == [
            f"127.0.0.1:${{{variable}:-{expected[variable]}}}:{container_port}"
        ]
    # localstripe shares the host's network (its webhooks reach the host's API Gateway emulator)
    command = " ".join(services["localstripe"]["command"])
    assert services["localstripe"]["network_mode"] == "host"
    assert f"--host 127.0.0.1 --port ${{LOCAL_LOCALSTRIPE_PORT:-{defaults.localstripe_port}}}" in command
    assert "local.stack._localstripe" in command
    advertised = services["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"]
    assert f"PLAINTEXT_HOST://127.0.0.1:${{LOCAL_KAFKA_PORT:-{defaults.kafka_port}}}" in advertised


def test_credentials_are_the_stacks_and_nothing_else_is_provisioned_here(services: dict[str, Any]) -> None:
    pg = services["postgres"]["environment"]
    assert (pg["POSTGRES_USER"], pg["POSTGRES_PASSWORD"], pg["POSTGRES_DB"]) == (
        cfg.DB_USER, cfg.DB_PASSWORD, cfg.DB_NAME,
    )  # fmt: skip
    text = COMPOSE_FILE.read_text()
    # topics, Stripe keys, webhook secret and secrets are provisioned by `make local-up`'s own
    # code: a second copy here is how the old file came to seed a key stripe-mock refuses
    for provisioned in ("kafka-topics.sh --bootstrap-server kafka:19092 --create", "create_secret",
                        "sk_test_", "whsec_", "payment_commands", "migrate"):  # fmt: skip
        assert provisioned not in text, provisioned
    assert services["kafka"]["environment"]["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    assert set(services) == {"kafka", "postgres", "moto", "localstripe", "stripe-mock"}
