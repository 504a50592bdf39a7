"""Records that name no order cannot be answered on payment_events: they go, with the reason,
to the dead-letter destination (an SQS queue when DEAD_LETTER_QUEUE_URL is set, else a Kafka
topic), so nothing is dropped silently."""

from __future__ import annotations

import base64
import json
from typing import Any

from payments_core.adapters.kafka.kafka_gateway import OutgoingMessage
from payments_core.adapters.services import Services
from payments_core.domain.errors import TransientError
from payments_core.observability import count, logger

# What a dead letter keeps of a record: all of it, unless the destination would refuse it;
# then its head, and the record's size (the whole record stays in Kafka at its origin).
_KAFKA_VALUE_BYTES = 960 * 1024
_SQS_VALUE_BYTES = 180 * 1024  # 240 KiB in base64, under SQS's 256 KiB with the rest


def send_dead_letter(services: Services, record: Any, raw: bytes | None, reason: str) -> None:
    settings = services.settings
    origin = {"topic": record.topic, "partition": record.partition, "offset": record.offset}
    if settings.dead_letter_queue_url:
        _send_to_sqs(settings.dead_letter_queue_url, settings.aws_region, origin, raw, reason)
    else:
        headers: tuple[tuple[str, bytes], ...] = (
            # backslashreplace: a reason quoting the input may hold a lone surrogate.
            ("dead_letter_reason", reason.encode("utf-8", "backslashreplace")[:1000]),
            ("source_topic", str(record.topic).encode()),
            ("source_partition", str(record.partition).encode()),
            ("source_offset", str(record.offset).encode()),
        )
        value = raw or b""
        if len(value) > _KAFKA_VALUE_BYTES:
            # A record near Kafka's 1 MB limit plus these headers would be refused and retried.
            headers += (("value_truncated", str(len(value)).encode()),)
            value = value[:_KAFKA_VALUE_BYTES]
        message = OutgoingMessage(topic=settings.dead_letter_topic, key=None, value=value, headers=headers)
        (error,) = services.publisher.publish([message])
        if error is not None:
            raise TransientError(f"dead-letter topic unreachable: {error}")
    count("DeadLettered")
    logger.warning("command dead-lettered", extra={"reason": reason, **origin})


def _send_to_sqs(queue_url: str, region: str, origin: dict[str, Any], raw: bytes | None, reason: str) -> None:
    import boto3

    value = raw or b""
    body: dict[str, Any] = {**origin, "reason": reason, "value_size": len(value)}
    if len(value) > _SQS_VALUE_BYTES:
        # SQS takes 256 KiB a message: a larger record would be refused, retried and stall.
        body["value_truncated"] = True
        value = value[:_SQS_VALUE_BYTES]
    body["value_base64"] = base64.b64encode(value).decode("ascii")
    try:
        boto3.client("sqs", region_name=region).send_message(QueueUrl=queue_url, MessageBody=json.dumps(body))
    except Exception as exc:
        raise TransientError(f"dead-letter queue unreachable: {exc}") from exc
