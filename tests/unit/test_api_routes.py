"""The payment API's routing, error answers and request handling, with doubles for the database
and the state machine: no local stack needed."""

from __future__ import annotations

import importlib.util
import json
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from payments_core.adapters.postgres import archive, repository
from payments_core.adapters.services import Services, set_services
from payments_core.adapters.stripe_api import secret_checks
from payments_core.config import get_settings
from payments_core.domain.errors import TransientError
from payments_core.domain.payment import Payment, PaymentStatus
from payments_core.entrypoints import api
from payments_core.usecases import queries, webhooks


def _load_helpers() -> Any:
    # The signing helpers live beside the integration tests (the benchmark shares them).
    path = Path(__file__).resolve().parents[1] / "integration" / "webhook_helpers.py"
    spec = importlib.util.spec_from_file_location("webhook_helpers_for_unit", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


wh = _load_helpers()
SECRET = "whsec_unit_test"
CONTRACT_KEYS, EXTENSION_KEYS = wh.CONTRACT_KEYS, wh.EXTENSION_KEYS
CONTEXT = SimpleNamespace(aws_request_id="unit", function_name="payment_api")


class FakeDb:
    def __init__(self, up: bool = True) -> None:
        self.up = up

    def query(self, sql: str, **params: Any) -> list[dict[str, Any]]:
        if not self.up:
            raise TransientError("database unreachable: test")
        return [{"ok": 1}]


@pytest.fixture
def applied(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[dict[str, Any]]]:
    """Doubles for the secret and the state machine; records the events handed to apply_event."""
    seen: list[dict[str, Any]] = []

    def fake_apply(services: Services, event: dict[str, Any]) -> webhooks.WebhookOutcome:
        seen.append(event)
        return webhooks.WebhookOutcome("applied", "order-1")

    monkeypatch.setattr(secret_checks, "read_secret_string", lambda secret_id, **_: SECRET)
    monkeypatch.setattr(webhooks, "apply_event", fake_apply)
    set_services(Services(db=FakeDb(), stripe=None, publisher=None, settings=get_settings()))  # type: ignore[arg-type]
    yield seen
    set_services(None)


def call(event: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    response = api.app.resolve(event, CONTEXT)  # type: ignore[arg-type]
    return response["statusCode"], json.loads(response["body"])


def signed_event(**kwargs: Any) -> bytes:
    return wh.encode(wh.payment_intent_event("authorized", payment_intent_id="pi_unit", order_id="order-1"))


# ---- webhook ------------------------------------------------------------------------------


def test_verified_webhook_is_applied(applied: list[dict[str, Any]]) -> None:
    body = signed_event()
    status, answer = call(wh.webhook_request(body, wh.sign(body, SECRET)))
    assert (status, answer) == (200, {"received": True, "result": "applied"})
    assert applied == [json.loads(body)]


def test_base64_body_and_multi_value_header_only(applied: list[dict[str, Any]]) -> None:
    # Non-ASCII bytes: the signature covers the raw bytes, so a lossy decode would break it.
    event = wh.payment_intent_event("authorized", payment_intent_id="pi_unit", order_id="order-1")
    event["data"]["object"]["description"] = "Kopi \u2615 for caf\u00e9"
    body = json.dumps(event, ensure_ascii=False).encode("utf-8")
    request = wh.webhook_request(
        body,
        wh.sign(body, SECRET),
        base64_body=True,
        header_name="stripe-signature",
        multi_value_only=True,
    )
    status, answer = call(request)
    assert status == 200, answer
    assert applied[0]["data"]["object"]["description"] == "Kopi \u2615 for caf\u00e9"


def test_repeated_header_uses_the_last_value_like_api_gateway(applied: list[dict[str, Any]]) -> None:
    body = signed_event()
    request = wh.webhook_request(body, wh.sign(body, SECRET))
    request["headers"] = None
    request["multiValueHeaders"]["Stripe-Signature"] = ["t=1,v1=forged", wh.sign(body, SECRET)]
    assert call(request)[0] == 200


@pytest.mark.parametrize(
    ("signature", "error"),
    [
        (None, "MISSING_SIGNATURE"),
        ("", "MISSING_SIGNATURE"),
        ("t=1700000000,v1=" + "0" * 64, "INVALID_SIGNATURE"),
        ("garbage", "INVALID_SIGNATURE"),
    ],
)
def test_unverifiable_webhook_is_400(
    applied: list[dict[str, Any]], signature: str | None, error: str
) -> None:
    status, answer = call(wh.webhook_request(signed_event(), signature))
    assert status == 400
    assert answer["success"] is False and answer["error"] == error and answer["message"]
    assert applied == []


def test_other_secret_and_stale_timestamp_are_400(applied: list[dict[str, Any]]) -> None:
    body = signed_event()
    other = call(wh.webhook_request(body, wh.sign(body, "whsec_someone_else")))
    stale = call(
        wh.webhook_request(body, wh.sign(body, SECRET, timestamp=int(datetime.now().timestamp()) - 301))
    )
    tampered = call(wh.webhook_request(body + b" ", wh.sign(body, SECRET)))
    for status, answer in (other, stale, tampered):
        assert status == 400 and answer["error"] == "INVALID_SIGNATURE"
    assert "tolerance" in stale[1]["message"]
    assert applied == []


@pytest.mark.parametrize("body", [b"not json", b"[1, 2]", b'{"id": "evt_1"}'])
def test_signed_body_that_is_not_a_stripe_event_is_400(applied: list[dict[str, Any]], body: bytes) -> None:
    status, answer = call(wh.webhook_request(body, wh.sign(body, SECRET)))
    assert (status, answer["error"]) == (400, "INVALID_PAYLOAD")
    assert applied == []


def test_invalid_base64_is_400(applied: list[dict[str, Any]]) -> None:
    request = wh.webhook_request(signed_event(), "t=1,v1=x")
    request["isBase64Encoded"] = True
    request["body"] = "%%% not base64 %%%"
    status, answer = call(request)
    assert (status, answer["error"]) == (400, "INVALID_PAYLOAD")


def test_database_down_is_500_so_stripe_retries(
    applied: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    def down(services: Services, event: dict[str, Any]) -> webhooks.WebhookOutcome:
        raise TransientError("database unreachable: test")

    monkeypatch.setattr(webhooks, "apply_event", down)
    body = signed_event()
    status, answer = call(wh.webhook_request(body, wh.sign(body, SECRET)))
    assert status == 500
    assert answer == {"success": False, "error": "SERVICE_UNAVAILABLE", "message": "Try again later"}


# ---- queries ------------------------------------------------------------------------------


def _payment(**overrides: Any) -> Payment:
    values: dict[str, Any] = {
        "payment_id": str(uuid.uuid4()),
        "order_id": "3b0d6c1e-8a44-4b8f-9f63-2b7c9d1f0a55",
        "status": PaymentStatus.AUTHORIZED,
        "amount_cents": 1999,
        "currency": "sgd",
        "clerk_user_id": "user_2abc",
        "description": "Payment for order 3b0d6c1e",
        "payment_intent_id": "pi_123",
        "created_at": datetime(2025, 3, 31, 9, 12, 45, 123456, tzinfo=UTC),
        "updated_at": datetime(2025, 3, 31, 9, 12, 46, tzinfo=UTC),
    }
    values.update(overrides)
    return Payment(**values)


@pytest.fixture
def stored(monkeypatch: pytest.MonkeyPatch, applied: list[dict[str, Any]]) -> dict[str, Payment]:
    rows: dict[str, Payment] = {}

    def by_order(db: Any, order_id: str, *, for_update: bool = False) -> Payment | None:
        return next((p for p in rows.values() if p.order_id == order_id), None)

    monkeypatch.setattr(repository, "get_by_order_id", by_order)
    monkeypatch.setattr(repository, "get_by_payment_id", lambda db, pid, **kw: rows.get(pid))
    monkeypatch.setattr(archive, "find", lambda db, **kw: None)  # nothing archived here
    return rows


def status_request(order_id: str) -> dict[str, Any]:
    return wh.get_request(f"/payment/{order_id}/status", "/payment/{order_id}/status", {"order_id": order_id})


def details_request(payment_id: str) -> dict[str, Any]:
    return wh.get_request(
        f"/payment/{payment_id}/details", "/payment/{payment_id}/details", {"payment_id": payment_id}
    )


def test_status_by_order_has_the_contract_shape(stored: dict[str, Payment]) -> None:
    p = _payment()
    stored[p.payment_id] = p
    status, answer = call(status_request(p.order_id))
    assert status == 200 and answer["success"] is True
    payment = answer["payment"]
    assert set(payment) == CONTRACT_KEYS | EXTENSION_KEYS
    assert payment["amount"] == 19.99 and payment["amountCents"] == 1999
    assert payment["paymentId"] == p.payment_id and payment["customerId"] == "user_2abc"
    assert payment["status"] == "AUTHORIZED" and payment["paymentIntentId"] == "pi_123"
    assert payment["createdAt"] == "2025-03-31T09:12:45.123456+00:00"
    assert payment["runnerId"] is None and payment["transferId"] is None


def test_details_by_payment_id(stored: dict[str, Payment]) -> None:
    p = _payment(status=PaymentStatus.FAILED, failure_code="STRIPE_CARD_ERROR", failure_message="declined")
    stored[p.payment_id] = p
    status, answer = call(details_request(p.payment_id.upper()))  # any UUID spelling
    assert status == 200
    assert answer["payment"]["status"] == "FAILED"
    assert answer["payment"]["failureCode"] == "STRIPE_CARD_ERROR"


def test_unknown_ids_answer_the_contract_404(stored: dict[str, Payment]) -> None:
    not_found = wh.NOT_FOUND
    assert call(status_request("no-such-order")) == (404, not_found)
    assert call(details_request(str(uuid.uuid4()))) == (404, not_found)


@pytest.mark.parametrize("payment_id", ["not-a-uuid", "123", "' OR 1=1 --"])
def test_malformed_payment_id_is_400(stored: dict[str, Payment], payment_id: str) -> None:
    status, answer = call(details_request(payment_id))
    assert status == 400
    assert answer == {"success": False, "error": "INVALID_REQUEST", "message": "payment_id must be a UUID"}


@pytest.mark.parametrize("order_id", ["x" * 256, "a b", "order;drop", "caf\u00e9"])
def test_malformed_order_id_is_400(stored: dict[str, Payment], order_id: str) -> None:
    status, answer = call(status_request(order_id))
    assert status == 400
    assert answer["error"] == "INVALID_REQUEST" and answer["message"].startswith("order_id must be")


def test_amounts_never_suffer_float_error() -> None:
    for cents, units in ((1999, 19.99), (1, 0.01), (1299, 12.99), (100000001, 1000000.01)):
        assert queries.payment_view(_payment(amount_cents=cents))["amount"] == units
    assert queries.payment_view(_payment(amount_cents=500, currency="jpy"))["amount"] == 500


# ---- health and unknown routes --------------------------------------------------------------


def test_health(applied: list[dict[str, Any]]) -> None:
    assert call(wh.get_request("/health", "/health", {})) == (200, {"status": "ok", "database": "ok"})
    set_services(Services(db=FakeDb(up=False), stripe=None, publisher=None, settings=get_settings()))  # type: ignore[arg-type]
    status, answer = call(wh.get_request("/health", "/health", {}))
    assert (status, answer["database"]) == (503, "unreachable")


def test_unknown_route_is_a_json_404(applied: list[dict[str, Any]]) -> None:
    status, answer = call(wh.get_request("/payments", "/payments", {}))
    assert (status, answer["error"]) == (404, "NOT_FOUND")


def test_lambda_handler_resolves_through_powertools(applied: list[dict[str, Any]]) -> None:
    from local.stack.lambda_runtime import FakeLambdaContext, load_handler

    handler = load_handler("payment_api")
    response = handler(wh.get_request("/health", "/health", {}), FakeLambdaContext("payment_api"))
    assert response["statusCode"] == 200
