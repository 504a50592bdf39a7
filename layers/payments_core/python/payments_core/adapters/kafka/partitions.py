"""Growing the commands topic: more partitions, never fewer, and only when nothing is in flight.

Kafka sends a keyed record to ``murmur2(key) % partitions``: adding partitions sends about half
of the orders (3 -> 6) to another partition. An order whose earlier command still waits in its
old partition while a later one arrives in the new partition could have the later one handled
first, by another invocation of the mapping. So the topic grows only when the event source
mapping is **paused** (its consumer group has no members: nothing is being handled, nothing
can be fetched) and **drained** (the group's committed offset equals the end offset on every
partition: nothing waits). From then on each order's next command lands on its new partition
with nothing of it left behind on the old one.

``payment_events`` is not grown here. Its readers are the sagas (their consumer groups, not
ours), which also need each order's events in order; our producers (the functions after commit,
the outbox relay) need no more partitions to publish faster. Growing it is a decision for the
sagas' owners, with their consumers drained: ``grow_partitions(events_topic, target, their_group)``
checks exactly that.

Used by the topics custom resource (a deploy with a larger ``kafka.partitions``) and by the
operator's procedure (``tools/partitions.py``, ``make partitions``), which pauses the mapping,
drains, grows and resumes: docs/operations-partitions.md.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from payments_core.config import Settings, get_settings
from payments_core.observability import logger


class PartitionGrowthRefused(Exception):
    """The grow would be unsafe or is impossible; the message says why and what to do."""


class ShrinkRefused(PartitionGrowthRefused):
    pass


class MappingNotPaused(PartitionGrowthRefused):
    pass


class NotDrained(PartitionGrowthRefused):
    pass


@dataclass(frozen=True)
class PartitionLag:
    partition: int
    committed: int | None  # None: the group never committed on it
    end: int
    start: int  # the earliest offset still retained

    @property
    def lag(self) -> int:
        """Records the mapping has yet to handle (from the start when it never committed:
        the mapping reads a new partition from TRIM_HORIZON / earliest)."""
        return max(0, self.end - (self.start if self.committed is None else self.committed))


@dataclass(frozen=True)
class TopicState:
    topic: str
    group: str
    group_state: str  # Kafka's: Empty, Dead (never used or expired), Stable, PreparingRebalance, ...
    members: int
    partitions: list[PartitionLag]

    @property
    def count(self) -> int:
        return len(self.partitions)

    @property
    def lag(self) -> int:
        return sum(p.lag for p in self.partitions)

    @property
    def paused(self) -> bool:
        return self.members == 0

    def lag_figures(self) -> str:
        """``0:0 1:12 2:0`` (partition:records waiting), for messages and the operator's log."""
        return " ".join(f"{p.partition}:{p.lag}" for p in self.partitions)

    def as_dict(self) -> dict[str, Any]:
        return {
            "topic": self.topic,
            "group": self.group,
            "group_state": self.group_state,
            "members": self.members,
            "partitions": self.count,
            "lag": self.lag,
            "lag_by_partition": {str(p.partition): p.lag for p in self.partitions},
        }


def admin_client(settings: Settings | None = None, client_id: str = "payment-service-topics") -> Any:
    """A kafka-python admin client on the service's cluster (IAM auth on MSK: the caller's role)."""
    from kafka.admin import KafkaAdminClient  # imported on first use: cold start

    s = settings or get_settings()
    config: dict[str, Any] = {
        "bootstrap_servers": s.kafka_bootstrap_servers.split(","),
        "security_protocol": s.kafka_security_protocol,
        "client_id": client_id,
        "request_timeout_ms": 30_000,
    }
    if s.kafka_security_protocol.startswith("SASL"):
        config["sasl_mechanism"] = s.kafka_sasl_mechanism
    return KafkaAdminClient(**config)


def topic_state(admin: Any, topic: str, group: str) -> TopicState:
    """The topic's partitions with the group's committed, end and earliest offsets, and the
    group's membership (kafka-python 3: describe_groups, list_group_offsets, list_partition_offsets)."""
    from kafka import TopicPartition
    from kafka.admin import OffsetSpec

    (described,) = admin.describe_topics([topic])
    if described.get("error_code"):
        raise PartitionGrowthRefused(f"topic {topic} cannot be described (error {described['error_code']})")
    numbers = sorted(p["partition_index"] for p in described.get("partitions") or [])
    tps = [TopicPartition(topic, n) for n in numbers]
    ends = admin.list_partition_offsets(dict.fromkeys(tps, OffsetSpec.LATEST))
    starts = admin.list_partition_offsets(dict.fromkeys(tps, OffsetSpec.EARLIEST))
    committed = admin.list_group_offsets({group: tps}).get(group, {})
    info = admin.describe_groups([group]).get(group) or {}
    partitions = []
    for tp in tps:
        mark = committed.get(tp)
        offset = getattr(mark, "offset", None)
        partitions.append(
            PartitionLag(
                tp.partition,
                offset if offset is not None and offset >= 0 else None,
                ends[tp].offset,
                starts[tp].offset,
            )
        )
    return TopicState(
        topic, group, str(info.get("group_state") or "Dead"), len(info.get("members") or []), partitions
    )


def check_growable(state: TopicState, target: int) -> bool:
    """True when the topic must grow to ``target`` and may; False when it already has that many.
    Raises with the reason otherwise."""
    if target < state.count:
        raise ShrinkRefused(
            f"{state.topic} has {state.count} partitions; Kafka cannot remove partitions and "
            f"{target} would be fewer: keep kafka.partitions at {state.count} or more"
        )
    if target == state.count:
        return False
    if not state.paused:
        raise MappingNotPaused(
            f"{state.topic} grows {state.count} -> {target} only with the event source mapping paused, "
            f"but its consumer group {state.group} has {state.members} member(s) ({state.group_state}): "
            "pause it first (make partitions pauses, drains, grows and resumes)"
        )
    if state.lag:
        raise NotDrained(
            f"{state.topic} grows {state.count} -> {target} only when drained, but group {state.group} "
            f"has {state.lag} record(s) waiting (partition:lag {state.lag_figures()}): resume the mapping "
            "until the lag is 0, then pause it and grow (make partitions does this)"
        )
    return True


def grow_partitions(
    topic: str, target: int, group: str, settings: Settings | None = None, admin: Any = None
) -> dict[str, Any]:
    """Grow ``topic`` to ``target`` partitions if ``group`` is paused and drained; refuse
    otherwise (:class:`PartitionGrowthRefused`). Returns what was found and done."""
    if target < 1:
        raise PartitionGrowthRefused(f"partitions must be 1 or more, not {target}")
    own = admin is None
    admin = admin or admin_client(settings)
    try:
        state = topic_state(admin, topic, group)
        if not check_growable(state, target):
            return {**state.as_dict(), "grown": False}
        # The check and the grow are two requests: a command produced in between waits on its old
        # partition. The procedure resumes the mapping at once, so it is handled within a batch
        # window; an order that also gets a newer command on its new partition in that window is
        # settled by its lease and the state machine (docs/operations-partitions.md).
        admin.create_partitions({topic: target})
        after = _until_counted(admin, topic, group, target)
    finally:
        if own:
            admin.close()
    logger.info(
        "partitions grown",
        extra={"topic": topic, "from": state.count, "to": after.count, "lag_after": after.lag_figures()},
    )
    return {**after.as_dict(), "grown": True, "from": state.count}


def _until_counted(admin: Any, topic: str, group: str, target: int, limit_s: float = 30.0) -> TopicState:
    """The topic once the brokers' metadata shows the new partitions (KRaft propagates it a
    moment after CreatePartitions answers)."""
    deadline = time.monotonic() + limit_s
    while (state := topic_state(admin, topic, group)).count < target and time.monotonic() < deadline:
        time.sleep(0.2)
    return state


def operate(request: dict[str, Any], settings: Settings | None = None) -> dict[str, Any]:
    """The operator's calls from ``make partitions STAGE=…`` (run in the VPC, by the topics
    function): ``{"Operation": "describe" | "grow", "Group": …, "Topic"?: …, "Partitions"?: N}``.
    A refusal is an answer (``error``, ``refused``), not a failure: the tool reads it and retries."""
    s = settings or get_settings()
    operation = request.get("Operation")
    topic = str(request.get("Topic") or s.payment_commands_topic)
    group = str(request.get("Group") or "")
    if operation not in ("describe", "grow") or not group:
        return {"error": 'expected {"Operation": "describe" | "grow", "Group": "<consumer group>", ...}'}
    admin = admin_client(s)
    try:
        if operation == "describe":
            return topic_state(admin, topic, group).as_dict()
        try:
            return grow_partitions(topic, int(request.get("Partitions") or 0), group, admin=admin)
        except PartitionGrowthRefused as exc:
            return {
                **topic_state(admin, topic, group).as_dict(),
                "error": str(exc),
                "refused": type(exc).__name__,
            }
    finally:
        admin.close()
