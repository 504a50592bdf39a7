"""Records that name no order cannot be answered on payment_events: they go, with the reason,
to the dead-letter destination (an SQS queue when DEAD_LETTER_QUEUE_URL is set, else a Kafka
topic), so nothing is dropped silently."""

from __future__ import annotations

import base64
import json
from typing import Any

from payments_core.errors import TransientError
from payments_core.kafka_gateway import OutgoingMessage
from payments_core.observability import count, logger
from payments_core.services import Services


def send_dead_letter(services: Services, record: Any, raw: bytes | None, reason: str) -> None:
    settings = services.settings
    origin = {"topic": record.topic, "partition": record.partition, "offset": record.offset}
    if settings.dead_letter_queue_url:
        _send_to_sqs(settings.dead_letter_queue_url, settings.aws_region, origin, raw, reason)
    else:
        headers = (
            ("dead_letter_reason", reason.encode("utf-8")[:1000]),
            ("source_topic", str(record.topic).encode()),
            ("source_partition", str(record.partition).encode()),
            ("source_offset", str(record.offset).encode()),
        )
        message = OutgoingMessage(
            topic=settings.dead_letter_topic, key=None, value=raw or b"", headers=headers
        )
        (error,) = services.publisher.publish([message])
        if error is not None:
            raise TransientError(f"dead-letter topic unreachable: {error}")
    count("DeadLettered")
    logger.warning("command dead-lettered", extra={"reason": reason, **origin})


def _send_to_sqs(queue_url: str, region: str, origin: dict[str, Any], raw: bytes | None, reason: str) -> None:
    import boto3

    body = {**origin, "reason": reason, "value_base64": base64.b64encode(raw or b"").decode("ascii")}
    try:
        boto3.client("sqs", region_name=region).send_message(QueueUrl=queue_url, MessageBody=json.dumps(body))
    except Exception as exc:
        raise TransientError(f"dead-letter queue unreachable: {exc}") from exc
