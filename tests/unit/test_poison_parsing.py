"""Properties of the parsing front (issue 16, item 4): over JSON with lone surrogates, NULs,
huge and negative numbers, odd UUID forms, deep nesting, long strings and wrong types, the
parser ends in a Command, a Rejection or Unattributable; what it answers under is storable;
the order key and the refusal agree; no odd UUID form reaches PostgreSQL."""

from __future__ import annotations

import base64
import json
import re
import uuid
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from payments_core.adapters.postgres.repository import is_uuid
from payments_core.domain.contracts import (
    INVALID_PAYLOAD,
    MAX_COMMAND_BYTES,
    MAX_COMMAND_DEPTH,
    PAYLOAD_TOO_LARGE,
    Command,
    Unattributable,
    _flatten_beyond,
    command_references,
    has_unstorable_text,
    parse_command,
    storable,
)
from payments_core.domain.errors import Rejection
from payments_core.entrypoints import commands

_CANONICAL = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")

_char = st.one_of(
    st.characters(max_codepoint=0xFFFF), st.sampled_from(["\x00", "\ud800", "\udbff", "\udc00", "\\", '"'])
)
_text = st.one_of(st.text(_char, max_size=40), st.text(_char, min_size=250, max_size=300))


def _odd_uuids(u: uuid.UUID) -> st.SearchStrategy[str]:
    s = str(u)
    return st.sampled_from(
        [s, s.upper(), f"urn:uuid:{s}", "{" + s + "}", "{" + s, "{{" + s + "}}", u.hex, s[:7] + "-" + s[7:]]
    )


# Placeholders spliced into the JSON text after json.dumps, which cannot write them itself.
_HUGE, _DEEP = "\x01huge\x01", "\x01deep\x01"
_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(10**300), max_value=10**300),
    st.floats(),
    _text,
    st.uuids().flatmap(_odd_uuids),
    st.sampled_from([_HUGE, _DEEP]),
)
_values = st.recursive(
    _leaves,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(_text, inner, max_size=3)),
    max_leaves=8,
)
_payloads = st.fixed_dictionaries(
    {},
    optional={
        "order_id": _values,
        "payment_id": _values,
        "order": st.fixed_dictionaries({}, optional={"amount": _values}),
        "customer": _values,
        "reason": _values,
        "runner_id": _values,
        "runner_connect_account_id": _values,
        "amount_to_capture": _values,
    },
)
_documents = st.fixed_dictionaries(
    {"payload": st.one_of(_payloads, _values)},
    optional={
        "type": st.one_of(
            st.sampled_from(["authorize_payment", "release_payment", "revert_payment"]), _values
        ),
        "correlation_id": _values,
    },
)


@st.composite
def _records(draw: Any) -> bytes:
    text = json.dumps(draw(_documents))  # ensure_ascii: surrogates and NUL as \u escapes
    text = text.replace(
        json.dumps(_HUGE), ("-" if draw(st.booleans()) else "") + "7" * draw(st.integers(4301, 6000))
    )
    depth = draw(st.integers(0, 600))
    return text.replace(json.dumps(_DEEP), "[" * depth + "]" * depth).encode()


def _is_storable(text: str) -> bool:
    return not has_unstorable_text(text) and bool(text.encode("utf-8") or True)


@settings(max_examples=200, deadline=None)
@given(_records())
def test_every_record_ends_parsed_refused_or_unattributable(raw):
    try:
        outcome: Any = parse_command(raw)
    except (Rejection, Unattributable) as exc:
        outcome = exc
    assert isinstance(outcome, Command | Rejection | Unattributable)
    if isinstance(outcome, Rejection):
        assert outcome.order_id or outcome.payment_id, "a refusal names what it answers"
        for text in (outcome.order_id, outcome.payment_id, outcome.correlation_id, outcome.message):
            assert text is None or _is_storable(text)
        assert (outcome.order_id, outcome.payment_id) == command_references(raw), "keyed as it is answered"
    if isinstance(outcome, Command):
        assert not has_unstorable_text(json.loads(raw)), "nothing unstorable gets past the parser"


@given(st.text(_char), st.sampled_from(["order_id", "payment_id"]))
def test_an_id_is_answered_in_its_storable_form(value, field):
    raw = json.dumps({"type": "revert_payment", "payload": {field: value, "reason": 1}}).encode()
    if not 0 < len(value) <= 255:
        return
    expected = storable(value)
    assert _is_storable(expected)
    assert command_references(raw) == ((expected, None) if field == "order_id" else (None, expected))
    if has_unstorable_text(value):
        with pytest.raises(Rejection) as caught:
            parse_command(raw)
        assert caught.value.code == INVALID_PAYLOAD and getattr(caught.value, field) == expected


@given(st.text(_char))
def test_storable_changes_only_nul_and_lone_surrogates(text):
    escaped = storable(text)
    escaped.encode("utf-8")  # a Kafka key and PostgreSQL text: valid UTF-8, no NUL
    assert "\x00" not in escaped and storable(escaped) == escaped
    assert (escaped == text) == (not has_unstorable_text(text))
    if "\\" not in text:  # then the escapes read back to the text
        assert re.sub(r"\\u([0-9a-f]{4})", lambda m: chr(int(m[1], 16)), escaped) == text


def test_storable_writes_json_escapes():
    assert storable("ab\x00\ud800\udfffc") == "ab\\u0000\\ud800\\udfffc"
    assert storable("état 😀") == "état 😀"


@settings(max_examples=200)
@given(st.integers(0, 2000), st.text(_char, max_size=10))
def test_nesting_is_capped_without_recursion(depth, order_id):
    document = {"type": "revert_payment", "payload": {"order_id": f"o-{order_id}", "x": 0}}
    raw = json.dumps(document).replace('"x": 0', '"x": ' + '[{"k": ' * depth + "1" + "}]" * depth).encode()
    if len(raw) > MAX_COMMAND_BYTES:
        return
    try:
        parse_command(raw)
    except Rejection as rejection:
        assert rejection.order_id == storable(f"o-{order_id}")
        if 2 * depth + 2 > MAX_COMMAND_DEPTH:
            assert rejection.code == INVALID_PAYLOAD and "nested deeper" in rejection.message
        return
    assert 2 * depth + 2 <= MAX_COMMAND_DEPTH and not has_unstorable_text(order_id)


@given(_values)
def test_flattening_keeps_shallow_text_and_caps_deep_text(value):
    text = json.dumps(value)
    flattened, cut = _flatten_beyond(text, 3)
    assert cut == (_depth(value) > 3)
    assert (flattened == text) == (not cut)
    assert _depth(json.loads(flattened)) <= 3


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max(map(_depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(_depth, value), default=0)
    return 0


def test_a_record_over_the_size_cap_is_not_parsed():
    raw = json.dumps(
        {"type": "revert_payment", "payload": {"order_id": "o", "reason": "x" * MAX_COMMAND_BYTES}}
    )
    with pytest.raises(Unattributable) as caught:
        parse_command(raw.encode())
    assert caught.value.reason.startswith(PAYLOAD_TOO_LARGE)
    assert command_references(raw.encode()) == (None, None)


@given(st.one_of(st.uuids().flatmap(_odd_uuids), st.text(_char, max_size=50), st.integers(), st.none()))
def test_only_canonical_uuids_pass_is_uuid(value):
    assert is_uuid(value) == (isinstance(value, str) and _CANONICAL.fullmatch(value) is not None)


class _Db:
    """Records the payment ids order_key looks up; finds none."""

    def __init__(self) -> None:
        self.looked_up: list[str] = []

    def query(self, sql: str, **params: Any) -> list[dict[str, Any]]:
        self.looked_up.append(params["payment_id"])
        return []


@settings(max_examples=100, deadline=None)
@given(_records())
def test_order_keys_use_storable_ids_and_only_canonical_uuids_reach_the_database(raw):
    db = _Db()
    record = {"value": base64.b64encode(raw).decode()}
    item = SimpleNamespace(record=SimpleNamespace(get=record.get, decoded_value=raw), partition=0, offset=7)
    key = commands.order_key(SimpleNamespace(db=db), item)  # type: ignore[arg-type]
    order_id, payment_id = command_references(raw)
    assert key == (
        f"order:{order_id}" if order_id else f"payment:{payment_id}" if payment_id else "record:0:7"
    )
    assert _is_storable(key) and all(_CANONICAL.fullmatch(p) for p in db.looked_up)
