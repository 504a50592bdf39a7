"""Kafka records as MSK's event source mapping hands them to Lambda, and its partial batch response.

Used by the local mapping (``event_source_mapping``)."""

from __future__ import annotations

import base64
from typing import Any

TIMESTAMP_TYPES = {0: "CREATE_TIME", 1: "LOG_APPEND_TIME"}


def partition_key(topic: str, partition: int) -> str:
    return f"{topic}-{partition}"


def record_to_msk(record: Any) -> dict[str, Any]:
    """One kafka-python ConsumerRecord in the shape the MSK event source delivers it."""
    return {
        "topic": record.topic,
        "partition": record.partition,
        "offset": record.offset,
        "timestamp": record.timestamp,
        "timestampType": TIMESTAMP_TYPES.get(record.timestamp_type, "CREATE_TIME"),
        "key": base64.b64encode(record.key).decode() if record.key is not None else None,
        "value": base64.b64encode(record.value or b"").decode(),
        "headers": [{name: list(value or b"")} for name, value in (record.headers or [])],
    }


def build_event(batch: dict[Any, list[Any]], bootstrap_servers: str, cluster_arn: str) -> dict[str, Any]:
    return {
        "eventSource": "aws:kafka",
        "eventSourceArn": cluster_arn,
        "bootstrapServers": bootstrap_servers,
        "records": {
            partition_key(tp.topic, tp.partition): [record_to_msk(r) for r in records]
            for tp, records in batch.items()
        },
    }


def failed_offsets(response: Any, keys: set[str]) -> dict[str, int] | None:
    """Lowest failed offset per partition key from a partial batch response.

    ``{}`` means full success; ``None`` means the response is unreadable, which AWS treats as
    a failure of the whole batch.
    """
    if response is None or not isinstance(response, dict) or "batchItemFailures" not in response:
        return {}
    items = response.get("batchItemFailures")
    if items is None:
        return {}
    if not isinstance(items, list):
        return None
    lowest: dict[str, int] = {}
    for item in items:
        ident = item.get("itemIdentifier") if isinstance(item, dict) else None
        if not isinstance(ident, dict):
            return None
        key, offset = ident.get("partition"), ident.get("offset")
        try:
            offset = int(offset)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return None
        if key not in keys:
            return None
        lowest[key] = min(offset, lowest.get(str(key), offset))
    return lowest
