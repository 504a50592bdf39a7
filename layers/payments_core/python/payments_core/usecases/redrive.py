"""Redrive: list the dead letters of ``payment_commands`` and re-queue the chosen ones.

Dead letters live on the dead-letter topic (``DEAD_LETTER_TOPIC``, ``payment_commands.dlq``):
the event source mapping's on-failure destination writes the record itself there (locally
``local.stack.event_source_mapping``; in AWS a Kafka-topic on-failure destination), and so does the
service for a record naming no order (``dead_letters``) unless it is set to the SQS queue.

A re-queued command is a new record on ``payment_commands`` (a new offset), keyed by its order
as every producer keys commands, so it is judged afresh; the service's per-order idempotency
(one payment per order, the stored outcome re-announced with its first ``event_id``) makes a
command that was already answered, or one re-queued twice, come out once. Nothing is removed
from the dead-letter topic: a Kafka topic keeps its records until retention ends.

Entry points: ``redrive_commands`` (the AWS function: MSK is reachable only from the VPC) and
``python -m payments_core.usecases.redrive`` through ``tools.redrive`` (``make redrive``) locally.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from payments_core.adapters.kafka.kafka_gateway import EventPublisher, KafkaEventPublisher, OutgoingMessage
from payments_core.adapters.kafka.topic_reader import TopicUnreadable, read_topic
from payments_core.config import Settings, get_settings
from payments_core.domain.command_parsing import command_references
from payments_core.observability import count, logger

# Where each producer of dead letters writes the reason (the service, the local mapping).
_REASON_HEADERS = ("dead_letter_reason", "x-dead-letter-reason")
_ORIGIN_HEADERS = (
    ("source_topic", "source_partition", "source_offset"),
    ("x-original-topic", "x-original-partition", "x-original-offset"),
)
REDRIVEN_FROM_HEADER = "redriven_from"


class RedriveError(Exception):
    """Bad input or an unreachable broker: the message says what to do about it."""


@dataclass(frozen=True)
class DeadLetter:
    id: str  # "<partition>:<offset>" on the dead-letter topic
    reason: str
    origin: str  # "<topic>-<partition>@<offset>" of the record that failed, when known
    key: str | None
    value: bytes
    truncated: bool = False
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def command(self) -> dict[str, Any] | None:
        """The command as JSON, or None when the value is not a JSON object."""
        try:
            document = json.loads(self.value)
        except (ValueError, UnicodeDecodeError):
            return None
        return document if isinstance(document, dict) else None

    @property
    def command_type(self) -> str | None:
        document = self.command
        kind = document.get("type") if document else None
        return kind if isinstance(kind, str) else None

    @property
    def order_id(self) -> str | None:
        return command_references(self.value)[0]

    @property
    def payment_id(self) -> str | None:
        return command_references(self.value)[1]

    @property
    def redrivable(self) -> str | None:
        """None when it can be re-queued, else why not."""
        if self.truncated:
            return "the dead letter holds only the head of a record too large for it"
        if self.command is None:
            return "not a JSON command: it would be dead-lettered again"
        if not (self.order_id or self.payment_id):
            return "names no order or payment: it would be dead-lettered again"
        return None

    def summary(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "reason": self.reason,
            "origin": self.origin,
            "type": self.command_type,
            "order_id": self.order_id,
            "payment_id": self.payment_id,
            "redrivable": self.redrivable is None,
            **({"not_redrivable": self.redrivable} if self.redrivable else {}),
        }

    def pretty(self) -> str:
        """The command as indented JSON; a value that is not JSON, as escaped text."""
        document = self.command
        if document is not None:
            return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False)
        return self.value[:2000].decode("utf-8", "backslashreplace")


def parse_letter(
    partition: int, offset: int, key: bytes | None, value: bytes | None, headers: Iterable[tuple[str, bytes]]
) -> DeadLetter:
    """One record of the dead-letter topic, whoever wrote it."""
    texts = {name: (raw or b"").decode("utf-8", "backslashreplace") for name, raw in headers}
    reason = next((texts[h] for h in _REASON_HEADERS if h in texts), "") or "(no reason recorded)"
    origin = ""
    for topic_h, partition_h, offset_h in _ORIGIN_HEADERS:
        if topic_h in texts:
            origin = f"{texts[topic_h]}-{texts.get(partition_h, '?')}@{texts.get(offset_h, '?')}"
            break
    body = _unwrap(value or b"")
    return DeadLetter(
        id=f"{partition}:{offset}",
        reason=reason,
        origin=origin,
        key=key.decode("utf-8", "backslashreplace") if key is not None else None,
        value=body,
        truncated="value_truncated" in texts,
        headers=texts,
    )


def _unwrap(value: bytes) -> bytes:
    """A failed record wrapped as the mapping delivers records (``{"topic", "partition",
    "offset", "value": <base64>}``) gives back its value; anything else is kept as it is."""
    try:
        document = json.loads(value)
    except (ValueError, UnicodeDecodeError):
        return value
    if isinstance(document, dict) and "type" not in document and isinstance(document.get("value"), str):
        try:
            return base64.b64decode(document["value"], validate=True)
        except (binascii.Error, ValueError):
            return value
    return value


def select(letters: list[DeadLetter], ids: list[str], everything: bool) -> list[DeadLetter]:
    """The letters to re-queue: the ones named (each must exist and be redrivable), or with
    ``everything`` all the redrivable ones. Raises RedriveError naming the fix."""
    if everything and ids:
        raise RedriveError("give either ids or ALL=1, not both")
    if everything:
        chosen = [letter for letter in letters if letter.redrivable is None]
        if not chosen:
            raise RedriveError(
                "no redrivable dead letters: nothing to re-queue (run `make redrive` to list them)"
            )
        return chosen
    if not ids:
        raise RedriveError('no dead letter chosen: name them (IDS="0:12 0:13") or pass ALL=1')
    by_id = {letter.id: letter for letter in letters}
    unknown = [i for i in ids if i not in by_id]
    if unknown:
        raise RedriveError(
            f"unknown dead letter id(s) {', '.join(unknown)}: run `make redrive` to list the ids"
        )
    refused = [f"{i} ({by_id[i].redrivable})" for i in ids if by_id[i].redrivable]
    if refused:
        raise RedriveError(f"cannot re-queue {'; '.join(refused)}: fix the producer and send it anew")
    return [by_id[i] for i in dict.fromkeys(ids)]  # an id named twice is re-queued once


def requeue_message(letter: DeadLetter, commands_topic: str) -> OutgoingMessage:
    """The command again, keyed as the service keys commands: by its order id. A release or
    revert naming only a payment keeps the key it came with (the HTTP routes and the saga key
    it by order), else its payment id."""
    key = letter.order_id or letter.key or letter.payment_id
    headers: tuple[tuple[str, bytes], ...] = ((REDRIVEN_FROM_HEADER, letter.id.encode()),)
    if letter.command_type:
        headers += (("command_type", letter.command_type.encode()),)
    return OutgoingMessage(topic=commands_topic, key=key, value=letter.value, headers=headers)


def read_dead_letters(settings: Settings | None = None, timeout_s: float = 10.0) -> list[DeadLetter]:
    """Every record on the dead-letter topic, oldest first per partition (no consumer group:
    reading commits nothing and moves nothing)."""
    s = settings or get_settings()
    try:
        return read_topic(
            s, s.dead_letter_topic, parse_letter, client_id="payment-service-redrive", timeout_s=timeout_s
        )
    except TopicUnreadable as exc:
        raise RedriveError(str(exc)) from exc


def requeue(
    letters: list[DeadLetter], settings: Settings | None = None, publisher: EventPublisher | None = None
) -> list[dict[str, Any]]:
    """Publish the chosen letters' commands to payment_commands (acknowledged by every in-sync
    replica); one result per letter."""
    s = settings or get_settings()
    publisher = publisher or KafkaEventPublisher(s)
    results = publisher.publish([requeue_message(letter, s.payment_commands_topic) for letter in letters])
    outcome = []
    for letter, error in zip(letters, results, strict=True):
        if error is None:
            count("CommandRedriven")
            logger.info(
                "dead letter re-queued", extra={"dead_letter": letter.id, "order_id": letter.order_id}
            )
        outcome.append(
            {
                "id": letter.id,
                "order_id": letter.order_id,
                "requeued": error is None,
                **({"error": str(error)} if error is not None else {}),
            }
        )
    return outcome


def handle_redrive(event: dict[str, Any] | None, settings: Settings | None = None) -> dict[str, Any]:
    """The function's entry: ``{}`` lists (with each command), ``{"ids": [...]}`` or
    ``{"all": true}`` re-queues. Errors come back as ``{"error": "..."}``."""
    event = event or {}
    try:
        letters = read_dead_letters(settings)
        ids = event.get("ids") or []
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise RedriveError('ids must be a list of strings such as ["0:12"]')
        if not ids and not event.get("all"):
            return {"dead_letters": [{**letter.summary(), "command": letter.command} for letter in letters]}
        chosen = select(letters, ids, bool(event.get("all")))
        return {"requeued": requeue(chosen, settings)}
    except RedriveError as exc:
        return {"error": str(exc)}
