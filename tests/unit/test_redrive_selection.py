"""The redrive's listing and selection: reading any producer's dead letters, choosing which to
re-queue, and keying the re-queued command by its order."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from payments_core.adapters.kafka.kafka_gateway import OutgoingMessage
from payments_core.usecases.redrive import (
    REDRIVEN_FROM_HEADER,
    RedriveError,
    handle_redrive,
    parse_letter,
    requeue,
    requeue_message,
    select,
)

ORDER = "3b0d6c1e-8a44-4b8f-9f63-2b7c9d1f0a55"


def _authorize(order_id: str = ORDER) -> bytes:
    return json.dumps(
        {
            "type": "authorize_payment",
            "correlation_id": "c1",
            "timestamp": "2025-03-31T09:12:45",
            "payload": {
                "order_id": order_id,
                "customer": {"clerkUserId": "user_2abc"},
                "order": {"amount": 1299},
            },
        }
    ).encode()


def _mapping_letter(offset: int, value: bytes, key: bytes | None = ORDER.encode()) -> Any:
    """As local.stack.event_source_mapping writes a record it gave up on."""
    return parse_letter(
        0,
        offset,
        key,
        value,
        [
            ("x-dead-letter-reason", b"handler failed 3 times (max retries 2): boom"),
            ("x-original-topic", b"payment_commands"),
            ("x-original-partition", b"1"),
            ("x-original-offset", b"41"),
        ],
    )


def test_a_mapping_dead_letter_is_listed_with_its_reason_origin_and_command() -> None:
    letter = _mapping_letter(7, _authorize())
    assert letter.summary() == {
        "id": "0:7",
        "reason": "handler failed 3 times (max retries 2): boom",
        "origin": "payment_commands-1@41",
        "type": "authorize_payment",
        "order_id": ORDER,
        "payment_id": None,
        "redrivable": True,
    }
    assert json.loads(letter.pretty())["payload"]["order_id"] == ORDER
    assert letter.pretty().startswith("{\n  "), "pretty JSON, indented"


def test_the_services_own_dead_letter_is_listed_but_not_redrivable() -> None:
    letter = parse_letter(
        2,
        3,
        None,
        b'{"type": "authorize_payment", "payload": {}}',
        [
            ("dead_letter_reason", b"no order_id"),
            ("source_topic", b"payment_commands"),
            ("source_partition", b"0"),
            ("source_offset", b"9"),
        ],
    )
    assert (letter.id, letter.reason, letter.origin) == ("2:3", "no order_id", "payment_commands-0@9")
    assert letter.redrivable == "names no order or payment: it would be dead-lettered again"
    truncated = parse_letter(0, 1, None, _authorize(), [("value_truncated", b"2000000")])
    assert truncated.redrivable is not None and "too large" in truncated.redrivable
    assert (
        parse_letter(0, 2, None, b"\xff\x00", []).redrivable
        == "not a JSON command: it would be dead-lettered again"
    )
    assert parse_letter(0, 2, None, b"x", []).reason == "(no reason recorded)"


def test_a_record_wrapped_as_the_mapping_delivers_it_is_unwrapped() -> None:
    wrapped = json.dumps(
        {
            "topic": "payment_commands",
            "partition": 0,
            "offset": 5,
            "value": base64.b64encode(_authorize()).decode(),
        }
    ).encode()
    assert parse_letter(0, 0, None, wrapped, []).order_id == ORDER


def test_select_by_id_all_and_the_refusals_naming_the_fix() -> None:
    good, other = _mapping_letter(1, _authorize()), _mapping_letter(2, _authorize("order-2"))
    bad = parse_letter(0, 3, None, b"not json", [])
    letters = [good, other, bad]
    assert select(letters, ["0:2"], False) == [other]
    assert select(letters, ["0:1", "0:1"], False) == [good], "an id named twice is re-queued once"
    assert select(letters, [], True) == [good, other], "ALL skips what cannot be redriven"
    with pytest.raises(RedriveError, match=r"unknown dead letter id\(s\) 9:9: run `make redrive`"):
        select(letters, ["9:9"], False)
    with pytest.raises(RedriveError, match="no dead letter chosen: name them"):
        select(letters, [], False)
    with pytest.raises(RedriveError, match=r"cannot re-queue 0:3 \(not a JSON command"):
        select(letters, ["0:3"], False)
    with pytest.raises(RedriveError, match="no redrivable dead letters"):
        select([bad], [], True)
    with pytest.raises(RedriveError, match="either ids or ALL=1"):
        select(letters, ["0:1"], True)


def test_the_requeued_command_is_keyed_by_its_order_and_carries_the_command_unchanged() -> None:
    letter = _mapping_letter(1, _authorize(), key=b"something-else")
    message = requeue_message(letter, "payment_commands")
    assert (message.topic, message.key, message.value) == ("payment_commands", ORDER, _authorize())
    assert (REDRIVEN_FROM_HEADER, b"0:1") in message.headers
    release = json.dumps({"type": "release_payment", "payload": {"payment_id": "p-1"}}).encode()
    assert requeue_message(_mapping_letter(2, release, key=b"order-9"), "t").key == "order-9", (
        "a release naming only its payment keeps the order key it was produced with"
    )
    assert requeue_message(_mapping_letter(3, release, key=None), "t").key == "p-1"


class _Publisher:
    def __init__(self, fail: bool = False) -> None:
        self.sent: list[OutgoingMessage] = []
        self.fail = fail

    def publish(self, messages: list[OutgoingMessage]) -> list[Exception | None]:
        self.sent.extend(messages)
        return [RuntimeError("broker down") if self.fail else None for _ in messages]


def test_requeue_reports_each_letter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PAYMENT_COMMANDS_TOPIC", "payment_commands")
    from payments_core.config import get_settings

    get_settings.cache_clear()
    letter = _mapping_letter(1, _authorize())
    publisher = _Publisher()
    assert requeue([letter], publisher=publisher) == [{"id": "0:1", "order_id": ORDER, "requeued": True}]
    assert [m.key for m in publisher.sent] == [ORDER]
    assert requeue([letter], publisher=_Publisher(fail=True)) == [
        {"id": "0:1", "order_id": ORDER, "requeued": False, "error": "broker down"}
    ]


def test_the_function_lists_or_refuses_with_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from payments_core.usecases import redrive

    letters = [_mapping_letter(1, _authorize())]
    monkeypatch.setattr(redrive, "read_dead_letters", lambda settings=None: letters)
    listed = handle_redrive({})
    assert [(d["id"], d["command"]["payload"]["order_id"]) for d in listed["dead_letters"]] == [
        ("0:1", ORDER)
    ]
    assert handle_redrive({"ids": ["0:2"]}) == {
        "error": "unknown dead letter id(s) 0:2: run `make redrive` to list the ids"
    }
    assert "error" in handle_redrive({"ids": "0:1"})
