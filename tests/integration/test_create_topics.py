"""The topic-creating custom resource (functions/create_topics) against the real local broker:
it creates missing topics with the configured partitions, is idempotent, never changes a topic
that exists (adding partitions would move keys and break per-order ordering) except the commands
topic it is told to grow, and that only while its consumer group is paused and drained (issue
19), never shrinks, and does nothing on Delete."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from conftest import wait_for
from kafka.admin import KafkaAdminClient
from payments_core.adapters.kafka.partitions import PartitionGrowthRefused

from local.stack.settings import LocalSettings

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

    def call(request: str, topics: list[str], partitions: int = 3, **grow: str) -> dict[str, Any]:
        seen.extend(topics)
        event = {
            "RequestType": request,
            "PhysicalResourceId": "payment-service-kafka-topics",
            "ResourceProperties": {
                "Topics": topics,
                "Partitions": str(partitions),
                "ReplicationFactor": "1",
                **grow,  # GrowTopic, ConsumerGroup: as the stack passes them
            },
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


def test_a_larger_count_grows_the_commands_topic_only_when_its_mapping_is_paused_and_drained(
    invoke: Callable[..., dict[str, Any]],
    admin: KafkaAdminClient,
    make_consumer: Callable[..., Any],
    make_producer: Callable[..., Any],
) -> None:
    run = uuid.uuid4().hex[:8]
    commands, events, group = f"payment_commands.t{run}", f"payment_events.t{run}", f"test-mapping-{run}"
    grow = {"GrowTopic": commands, "ConsumerGroup": group}
    assert invoke("Create", [commands, events], **grow)["Data"] == {
        "Created": f"{commands},{events}",
        "Grown": "none",
    }

    # The mapping is consuming (a member of its group): the deploy fails with the procedure.
    mapping = make_consumer(commands, group_id=group, consumer_timeout_ms=500)
    assert wait_for(lambda: (list(mapping), mapping.assignment())[1], timeout=30), "joined the group"
    with pytest.raises(PartitionGrowthRefused) as running:
        invoke("Update", [commands, events], partitions=6, **grow)
    assert "has 1 member(s)" in str(running.value)
    assert "run `make partitions STAGE=<stage> PARTITIONS=6`" in str(running.value)

    # Paused (no member) with a command waiting: refused with the lag.
    mapping.close()
    assert wait_for(lambda: not admin.describe_groups([group])[group]["members"], timeout=30), (
        "left the group"
    )
    make_producer().send(commands, key=b"order-1", value=b"{}").get(timeout=10)
    with pytest.raises(PartitionGrowthRefused, match=r"1 record\(s\) waiting"):
        invoke("Update", [commands, events], partitions=6, **grow)
    assert _partitions(admin, commands) == 3

    # Drained (the waiting command handled and committed) and paused: grown, the events kept.
    drain = make_consumer(commands, group_id=group, consumer_timeout_ms=500)
    keys: list[bytes] = []
    assert wait_for(lambda: keys.extend(m.key for m in drain) or keys, timeout=30) == [b"order-1"]
    drain.commit()
    drain.close()
    assert wait_for(lambda: not admin.describe_groups([group])[group]["members"], timeout=30), (
        "left the group"
    )
    grown = invoke("Update", [commands, events], partitions=6, **grow)
    assert grown["Data"] == {"Created": "none", "Grown": commands}
    assert (_partitions(admin, commands), _partitions(admin, events)) == (6, 3)

    # A rollback (or an older profile) asks for fewer: left as it is, never shrunk, no failure.
    assert invoke("Update", [commands, events], partitions=3, **grow)["Data"]["Grown"] == "none"
    assert _partitions(admin, commands) == 6


def test_the_operators_calls_describe_and_grow_and_answer_refusals(
    invoke: Callable[..., dict[str, Any]],
    load_function: Callable[[str], Any],
    lambda_context: Callable[..., Any],
) -> None:
    """What `make partitions STAGE=…` sends the function (MSK is reachable only from the VPC)."""
    run = uuid.uuid4().hex[:8]
    commands, group = f"payment_commands.t{run}", f"test-mapping-{run}"
    invoke("Create", [commands])
    handler = load_function("create_topics").lambda_handler

    def call(**request: Any) -> dict[str, Any]:
        return dict(handler({"Topic": commands, "Group": group, **request}, lambda_context("create_topics")))

    described = call(Operation="describe")
    assert (described["partitions"], described["lag"], described["members"]) == (3, 0, 0), described
    shrink = call(Operation="grow", Partitions=2)
    assert shrink["refused"] == "ShrinkRefused" and "cannot remove partitions" in shrink["error"]
    assert call(Operation="grow", Partitions=5)["grown"] is True
    assert call(Operation="describe")["partitions"] == 5
    assert "error" in call(Operation="undo")
