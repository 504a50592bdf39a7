"""Reading a whole topic once, without a consumer group (assign and seek: reading commits
nothing and moves nothing), for the redrive of dead letters."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

from payments_core.config import Settings

T = TypeVar("T")


class TopicUnreadable(Exception):
    """The broker could not be reached, or the topic not read to its end in time; the message
    says what to do about it."""


def read_topic(
    s: Settings,
    topic: str,
    parse: Callable[[int, int, bytes | None, bytes | None, list[tuple[str, bytes]]], T],
    *,
    client_id: str,
    timeout_s: float = 10.0,
) -> list[T]:
    """Every record of ``topic`` up to its end offsets when called, oldest first per partition,
    each passed through ``parse(partition, offset, key, value, headers)``; [] when the topic
    does not exist."""
    from kafka import KafkaConsumer, TopicPartition
    from kafka.errors import KafkaConnectionError, KafkaTimeoutError

    config: dict[str, Any] = {
        "bootstrap_servers": s.kafka_bootstrap_servers.split(","),
        "security_protocol": s.kafka_security_protocol,
        "client_id": client_id,
        "group_id": None,
        "enable_auto_commit": False,
        "request_timeout_ms": int(timeout_s * 1000) + 1000,
        "bootstrap_timeout_ms": int(timeout_s * 1000),
    }
    if s.kafka_security_protocol.startswith("SASL"):
        config["sasl_mechanism"] = s.kafka_sasl_mechanism
    try:
        consumer = KafkaConsumer(**config)
    except (KafkaTimeoutError, KafkaConnectionError) as exc:
        raise TopicUnreadable(
            f"Kafka unreachable at {s.kafka_bootstrap_servers} ({type(exc).__name__}): "
            "start the local stack (make local-up) or set KAFKA_BOOTSTRAP_SERVERS"
        ) from exc
    try:
        partitions = consumer.partitions_for_topic(topic)
        if not partitions:
            return []  # the topic does not exist yet: nothing was ever written to it
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        ends = consumer.end_offsets(tps)
        found: dict[Any, list[T]] = {tp: [] for tp in tps}
        deadline = time.monotonic() + timeout_s
        while any(consumer.position(tp) < ends[tp] for tp in tps):
            if time.monotonic() > deadline:
                raise TopicUnreadable(f"timed out reading {topic}: check the broker, then run it again")
            for tp, records in consumer.poll(timeout_ms=500).items():
                found[tp].extend(
                    parse(r.partition, r.offset, r.key, r.value, list(r.headers or []))
                    for r in records
                    if r.offset < ends[tp]
                )
        return [item for tp in tps for item in found[tp]]
    finally:
        consumer.close()
