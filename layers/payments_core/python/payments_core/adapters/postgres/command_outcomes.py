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

from payments_core.adapters.postgres.db import Database


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


RECORD_ANSWER_SQL = """
    INSERT INTO command_outcomes (topic, kafka_partition, kafka_offset, value_digest, event_id)
    VALUES (:topic, :partition, :offset, :digest, CAST(:event_id AS uuid))
    ON CONFLICT DO NOTHING
"""


def answer_params() -> dict[str, Any] | None:
    """The running command's identity as the parameters of ``RECORD_ANSWER_SQL`` (with
    ``event_id``, the enqueued event's), or None outside a command (webhooks, HTTP, the
    reconciler): nothing to record. ``outbox.enqueue`` runs the insert in the statement that
    writes the event, so its answer is stored unless it has one (a rolled-back transaction
    stored nothing, so the next event enqueued becomes the answer)."""
    identity = _current.get()
    if identity is None:
        return None
    return {
        "topic": identity.topic,
        "partition": identity.partition,
        "offset": identity.offset,
        "digest": identity.value_digest,
    }


@dataclass(frozen=True)
class StoredAnswer:
    event_id: str
    order_key: str  # the outbox row's order key: what to publish
    requeued: bool


def answered_among(db: Database, identities: list[CommandIdentity]) -> set[CommandIdentity]:
    """Which of a batch's records were answered before: one lookup for the batch instead of one
    per record. Only one invocation of a partition runs at a time, so no other record can
    answer one of these between this lookup and the record's run (it is the record itself)."""
    if not identities:
        return set()
    rows = db.query(
        """
        SELECT c.topic, c.kafka_partition, c.kafka_offset, encode(c.value_digest, 'hex') AS digest
        FROM unnest(CAST(:topics AS text[]), CAST(:partitions AS int[]), CAST(:offsets AS bigint[]),
                    CAST(:digests AS text[])) AS r(topic, kafka_partition, kafka_offset, digest)
        JOIN command_outcomes c ON c.topic = r.topic AND c.kafka_partition = r.kafka_partition
             AND c.kafka_offset = r.kafka_offset AND c.value_digest = decode(r.digest, 'hex')
        """,
        topics=[i.topic for i in identities],
        partitions=[i.partition for i in identities],
        offsets=[i.offset for i in identities],
        digests=[i.value_digest.hex() for i in identities],
    )
    found = {(r["topic"], int(r["kafka_partition"]), int(r["kafka_offset"]), r["digest"]) for r in rows}
    return {i for i in identities if (i.topic, i.partition, i.offset, i.value_digest.hex()) in found}


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
