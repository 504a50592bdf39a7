"""Kafka behind a small gateway: the producer for events and dead letters.

One producer per warm container, created on first use. acks=all with idempotence, so an
acknowledged event is on every in-sync replica and a producer retry does not duplicate it.
max_block_ms is short: with the broker down the command path must not stall, because the
event is already safe in the outbox and the relay will publish it.
"""

from __future__ import annotations

import json
from contextlib import suppress
from dataclasses import dataclass
from typing import Any, Protocol

from payments_core.config import Settings, get_settings
from payments_core.domain.errors import TransientError


@dataclass(frozen=True)
class OutgoingMessage:
    topic: str
    key: str | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...] = ()


class EventPublisher(Protocol):
    def publish(self, messages: list[OutgoingMessage]) -> list[Exception | None]:
        """Send and wait for acknowledgement; one result per message, None meaning acked."""
        ...


class KafkaEventPublisher:
    def __init__(self, settings: Settings | None = None) -> None:
        self._settings = settings or get_settings()
        self._producer: Any = None

    def _get_producer(self) -> Any:
        if self._producer is None:
            from kafka import KafkaProducer  # imported on first use: cold start

            s = self._settings
            config: dict[str, Any] = {
                "bootstrap_servers": s.kafka_bootstrap_servers.split(","),
                "acks": "all",
                "enable_idempotence": True,
                "linger_ms": 0,
                "max_block_ms": int(s.kafka_send_timeout_seconds * 1000),
                "bootstrap_timeout_ms": int(s.kafka_send_timeout_seconds * 1000),
                "request_timeout_ms": int(s.kafka_send_timeout_seconds * 1000),
                "delivery_timeout_ms": int(s.kafka_send_timeout_seconds * 1000) + 1000,
                "security_protocol": s.kafka_security_protocol,
                "client_id": "payment-service",
            }
            if s.kafka_security_protocol.startswith("SASL"):
                config["sasl_mechanism"] = s.kafka_sasl_mechanism
            try:
                self._producer = KafkaProducer(**config)
            except Exception as exc:  # NoBrokersAvailable and friends
                raise TransientError(f"kafka unreachable: {exc}") from exc
        return self._producer

    def publish(self, messages: list[OutgoingMessage]) -> list[Exception | None]:
        if not messages:
            return []
        try:
            producer = self._get_producer()
        except TransientError as exc:
            return [exc for _ in messages]
        futures: list[Any] = []
        for message in messages:
            try:
                futures.append(
                    producer.send(
                        message.topic,
                        key=message.key.encode("utf-8") if message.key is not None else None,
                        value=message.value,
                        headers=list(message.headers),
                    )
                )
            except Exception as exc:
                futures.append(exc)
        results: list[Exception | None] = []
        timeout = self._settings.kafka_send_timeout_seconds
        for future in futures:
            if isinstance(future, Exception):
                results.append(future)
                continue
            try:
                future.get(timeout=timeout)
                results.append(None)
            except Exception as exc:
                results.append(exc)
        if any(results):
            self.close()  # start afresh next time rather than reuse a producer in a bad state
        return results

    def close(self) -> None:
        if self._producer is not None:
            with suppress(Exception):  # best effort: the producer may already be broken
                self._producer.close(timeout=1)
            self._producer = None


def event_message(topic: str, order_id: str, envelope_json: str) -> OutgoingMessage:
    envelope = json.loads(envelope_json)
    headers = (
        ("event_type", str(envelope.get("type", "")).encode()),
        ("event_id", str(envelope.get("event_id", "")).encode()),
    )
    return OutgoingMessage(topic=topic, key=order_id, value=envelope_json.encode("utf-8"), headers=headers)
