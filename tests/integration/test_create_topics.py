"""The topic-creating custom resource (functions/create_topics) against the real local broker:
it creates missing topics with the configured partitions, is idempotent, never changes a topic
that exists (adding partitions would move keys and break per-order ordering), and does nothing
on Delete."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kafka.admin import KafkaAdminClient

from local.settings import LocalSettings

pytestmark = [pytest.mark.integration, pytest.mark.needs("kafka")]


@pytest.fixture
def admin(local_settings: LocalSettings) -> Iterator[KafkaAdminClient]:
    client = KafkaAdminClient(bootstrap_servers=local_settings.kafka_bootstrap, client_id="tests")
    yield client
    client.close()


@pytest.fixture
def invoke(
    load_function: Callable[[str], Any], lambda_context: Callable[..., Any], admin: KafkaAdminClient
) -> Iterator[Callable[..., dict[str, Any]]]:
    handler = load_function("create_topics").lambda_handler
    seen: list[str] = []

    def call(request: str, topics: list[str], partitions: int = 3) -> dict[str, Any]:
        seen.extend(topics)
        event = {
            "RequestType": request,
            "PhysicalResourceId": "payment-service-kafka-topics",
            "ResourceProperties": {"Topics": topics, "Partitions": str(partitions), "ReplicationFactor": "1"},
        }
        return dict(handler(event, lambda_context("create_topics")))

    yield call
    with contextlib.suppress(Exception):  # best effort: leftover test topics harm nothing
        admin.delete_topics(sorted(set(seen) & set(admin.list_topics())))


def _partitions(admin: KafkaAdminClient, topic: str) -> int:
    (described,) = admin.describe_topics([topic])
    return len(described["partitions"])


def test_creates_missing_topics_once_and_leaves_existing_ones_alone(
    invoke: Callable[..., dict[str, Any]], admin: KafkaAdminClient, make_topic: Callable[..., str]
) -> None:
    run = uuid.uuid4().hex[:8]
    commands, events = f"payment_commands.t{run}", f"payment_events.t{run}"
    existing = make_topic(partitions=1, prefix="payment_commands.dlq")

    first = invoke("Create", [commands, events, existing])
    assert first["PhysicalResourceId"] == "payment-service-kafka-topics"
    assert first["Data"]["Created"] == f"{commands},{events}"
    assert _partitions(admin, commands) == 3 and _partitions(admin, events) == 3
    assert _partitions(admin, existing) == 1  # never repartitioned

    again = invoke("Update", [commands, events, existing], partitions=6)
    assert again["Data"]["Created"] == "none"
    assert _partitions(admin, commands) == 3  # a changed setting does not move keys


def test_delete_keeps_the_topics(invoke: Callable[..., dict[str, Any]], admin: KafkaAdminClient) -> None:
    topic = f"payment_events.t{uuid.uuid4().hex[:8]}"
    invoke("Create", [topic])
    assert invoke("Delete", [topic]) == {"PhysicalResourceId": "payment-service-kafka-topics"}
    assert topic in admin.list_topics()
