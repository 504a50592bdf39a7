"""The first answer of each command record, so a re-delivered record re-announces it.

The event source mapping re-delivers a batch's records from the first one that failed, including
records that already finished (issue 16: a release that captured, then its order's revert, both
re-delivered because an unrelated record before them failed). Judged again, such a release would
meet a REVERTED payment and announce a ``payment.failed`` after the ``SUCCEEDED`` and
``REVERTED`` it caused. So a command's answer is stored under the record's identity and a
re-delivery gets that answer back instead of being judged again.

The identity is the record's place in the log, (topic, partition, offset), which a re-delivery
keeps and a new command never shares, even a byte-for-byte copy the saga sends again: that one
is judged afresh. A SHA-256 of the record's value is part of it, so an offset used again (a
topic deleted and created again) cannot take another command's answer.

The answer is the first event the command puts in the outbox, recorded by ``outbox.enqueue`` in
the same transaction (so what is stored is always what was announced). The command's identity
reaches it through a context variable: records run on the pool's worker threads, each with its
own context.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from payments_core.db import Database


@dataclass(frozen=True)
class CommandIdentity:
    topic: str
    partition: int
    offset: int
    value_digest: bytes

    @classmethod
    def of(cls, record: Any) -> CommandIdentity:
        """The identity of an MSK record (a ``KafkaEventRecord`` or its raw dict). The digest
        is over the value as delivered (base64 text), so an undecodable value has one too."""
        value = record.get("value") or ""
        return cls(
            topic=str(record["topic"]),
            partition=int(record["partition"]),
            offset=int(record["offset"]),
            value_digest=hashlib.sha256(str(value).encode()).digest(),
        )


_current: ContextVar[CommandIdentity | None] = ContextVar("command_identity", default=None)


@contextmanager
def answering(identity: CommandIdentity) -> Iterator[None]:
    """Run a command: the first event it enqueues is recorded as its answer."""
    token = _current.set(identity)
    try:
        yield
    finally:
        _current.reset(token)


def record_answer(db: Database, event_id: str) -> None:
    """Called by ``outbox.enqueue`` in its transaction: store ``event_id`` as the running
    command's answer unless it has one (a rolled-back transaction stored nothing, so the
    next event enqueued becomes the answer). Outside a command (webhooks, HTTP, the
    reconciler) there is nothing to record."""
    identity = _current.get()
    if identity is None:
        return
    db.execute(
        """
        INSERT INTO command_outcomes (topic, kafka_partition, kafka_offset, value_digest, event_id)
        VALUES (:topic, :partition, :offset, :digest, CAST(:event_id AS uuid))
        ON CONFLICT DO NOTHING
        """,
        topic=identity.topic,
        partition=identity.partition,
        offset=identity.offset,
        digest=identity.value_digest,
        event_id=event_id,
    )


@dataclass(frozen=True)
class StoredAnswer:
    event_id: str
    order_key: str  # the outbox row's order key: what to publish
    requeued: bool


def reannounce(db: Database, identity: CommandIdentity) -> StoredAnswer | None:
    """If this record was answered before, re-queue that answer's outbox row (same event_id,
    same envelope) and return it; None for a command not answered yet.

    The row is re-queued only while it is still its order's latest event. Once later events
    followed it (the revert after a release), it has been published already (the outbox loses
    no row) and publishing it again would put an older outcome after a newer one, which a
    consumer reading only ``payload.status`` (the notification service) would take as the
    current one."""
    # One statement (atomic on its own): a lookup per record must stay cheap.
    rows = db.query(
        """
        WITH answer AS (
            SELECT o.id, o.event_id, o.order_id,
                   NOT EXISTS (SELECT 1 FROM outbox later
                               WHERE later.order_id = o.order_id AND later.id > o.id) AS latest
            FROM command_outcomes c JOIN outbox o ON o.event_id = c.event_id
            WHERE c.topic = :topic AND c.kafka_partition = :partition
              AND c.kafka_offset = :offset AND c.value_digest = :digest
        ), requeued AS (
            UPDATE outbox SET published_at = NULL
            WHERE id IN (SELECT id FROM answer WHERE latest)
            RETURNING id
        )
        SELECT event_id::text AS event_id, order_id, EXISTS (SELECT 1 FROM requeued) AS requeued
        FROM answer
        """,
        topic=identity.topic,
        partition=identity.partition,
        offset=identity.offset,
        digest=identity.value_digest,
    )
    if not rows:
        return None
    row = rows[0]
    return StoredAnswer(str(row["event_id"]), str(row["order_id"]), bool(row["requeued"]))
