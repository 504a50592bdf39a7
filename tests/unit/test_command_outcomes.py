"""A command's identity (payments_core.adapters.postgres.command_outcomes): what tells a re-delivered record from
a new command, and that only a running command records an answer."""

from __future__ import annotations

import threading
from typing import Any

from payments_core.adapters.postgres import command_outcomes, outbox
from payments_core.adapters.postgres.command_outcomes import CommandIdentity


def record(offset: int = 7, value: str | None = "eyJ0eXBlIjogInJlbGVhc2VfcGF5bWVudCJ9") -> dict[str, Any]:
    return {"topic": "payment_commands", "partition": 1, "offset": offset, "value": value}


class RecordingDb:
    def __init__(self) -> None:
        self.statements: list[tuple[str, dict[str, Any]]] = []

    def execute(self, sql: str, **params: Any) -> int:
        self.statements.append((sql, params))
        return 1


def enqueue(db: RecordingDb, event_id: str) -> None:
    envelope = {"event_id": event_id, "type": "payment.failed"}
    outbox.enqueue(db, envelope, order_id="order-1", payment_id=None)  # type: ignore[arg-type]


def answers(db: RecordingDb) -> list[dict[str, Any]]:
    """The answers recorded with the events: the enqueues that also wrote command_outcomes."""
    return [params for sql, params in db.statements if "command_outcomes" in sql]


def test_a_redelivery_keeps_the_identity_a_new_offset_or_other_bytes_do_not() -> None:
    first = CommandIdentity.of(record())
    assert CommandIdentity.of(record()) == first, "the mapping's re-delivery of the record"
    assert CommandIdentity.of(record(offset=8)) != first, "the same bytes sent again: a new command"
    assert CommandIdentity.of(record(value="e30=")) != first, "an offset used again by another record"
    assert CommandIdentity.of(record(value=None)).offset == 7, "a record without a value has one too"


def test_only_a_running_command_records_its_answer_and_only_on_its_thread() -> None:
    db = RecordingDb()
    enqueue(db, "0b8c1f0e-0000-5000-8000-000000000001")
    assert len(db.statements) == 1 and answers(db) == [], "a webhook or an HTTP request records nothing"
    identity = CommandIdentity.of(record())
    elsewhere: list[int] = []
    with command_outcomes.answering(identity):
        enqueue(db, "0b8c1f0e-0000-5000-8000-000000000002")
        other = RecordingDb()
        worker = threading.Thread(target=lambda: enqueue(other, "0b8c1f0e-0000-5000-8000-000000000003"))
        worker.start()
        worker.join()
        elsewhere.append(len(answers(other)))
    enqueue(db, "0b8c1f0e-0000-5000-8000-000000000004")
    assert [s["event_id"] for s in answers(db)] == ["0b8c1f0e-0000-5000-8000-000000000002"]
    assert answers(db)[0]["offset"] == 7 and answers(db)[0]["digest"] == identity.value_digest
    assert elsewhere == [0], "another worker thread's record is not this command"
    assert len(db.statements) == 3, "the answer is written by the statement that writes the event"
