"""Status and details queries on the real database (issue 4's Done-when item 5), in-process and
through the local API Gateway on :3000."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

import pytest
import requests
from payments_core.adapters.services import Services
from webhook_helpers import CONTRACT_KEYS, EXTENSION_KEYS, NOT_FOUND, get_request, seed_payment

pytestmark = pytest.mark.integration


@pytest.fixture
def seeded(make_services: Callable[..., Services]) -> dict[str, Any]:
    db = make_services().db
    return {
        "AUTHORIZED": seed_payment(db, "AUTHORIZED", amount_cents=1999),
        "FAILED": seed_payment(
            db,
            "FAILED",
            amount_cents=1999,
            failure_code="STRIPE_CARD_ERROR",
            failure_message="Your card was declined.",
            stripe_code="card_declined",
        ),
    }


@pytest.fixture
def in_process(load_function: Callable[[str], Any], lambda_context: Callable[..., Any]) -> Callable:
    module = load_function("payment_api")
    context = lambda_context("payment_api")

    def get(path: str) -> tuple[int, dict[str, Any]]:
        resource, params = _resource_of(path)
        response = module.lambda_handler(get_request(path, resource, params), context)
        return response["statusCode"], json.loads(response["body"])

    return get


@pytest.fixture
def over_http(local_settings: Any) -> Callable:
    from local.stack import control as stack

    if not stack.is_running("api-gateway"):
        pytest.fail("the local API Gateway is not running: run `make local-up`", pytrace=False)

    def get(path: str) -> tuple[int, dict[str, Any]]:
        response = requests.get(f"{local_settings.api_url}{path}", timeout=10)
        assert response.headers["Content-Type"].startswith("application/json")
        return response.status_code, response.json()

    return get


def _resource_of(path: str) -> tuple[str, dict[str, str]]:
    _, _, ident, kind = path.split("/")
    name = "order_id" if kind == "status" else "payment_id"
    return f"/payment/{{{name}}}/{kind}", {name: ident}


@pytest.mark.parametrize("client", ["in_process", "over_http"])
@pytest.mark.parametrize("status", ["AUTHORIZED", "FAILED"])
def test_status_and_details_match_the_contract(
    request: pytest.FixtureRequest, seeded: dict[str, Any], client: str, status: str
) -> None:
    get = request.getfixturevalue(client)
    payment = seeded[status]
    by_order = get(f"/payment/{payment.order_id}/status")
    by_id = get(f"/payment/{payment.payment_id}/details")
    assert by_order == by_id
    code, answer = by_order
    assert code == 200
    assert set(answer) == {"success", "payment"} and answer["success"] is True
    view = answer["payment"]
    assert set(view) == CONTRACT_KEYS | EXTENSION_KEYS
    assert view["paymentId"] == payment.payment_id and view["orderId"] == payment.order_id
    assert view["customerId"] == "user_2abc"
    assert view["status"] == status
    assert view["amount"] == 19.99 and view["amountCents"] == 1999 and view["currency"] == "sgd"
    assert view["paymentIntentId"] == payment.payment_intent_id
    assert view["runnerId"] is None and view["transferId"] is None
    assert view["description"] == "Payment for a seeded order"
    for key in ("createdAt", "updatedAt"):
        assert datetime.fromisoformat(view[key]).utcoffset().total_seconds() == 0  # type: ignore[union-attr]
    if status == "FAILED":
        assert view["failureCode"] == "STRIPE_CARD_ERROR"
        assert view["failureMessage"] == "Your card was declined."
    else:
        assert view["failureCode"] is None and view["failureMessage"] is None


@pytest.mark.parametrize("client", ["in_process", "over_http"])
def test_unknown_and_malformed_ids(request: pytest.FixtureRequest, client: str) -> None:
    get = request.getfixturevalue(client)
    assert get(f"/payment/{uuid.uuid4()}/status") == (404, NOT_FOUND)
    assert get(f"/payment/{uuid.uuid4()}/details") == (404, NOT_FOUND)
    code, answer = get("/payment/not-a-uuid/details")
    assert code == 400 and answer["error"] == "INVALID_REQUEST" and "UUID" in answer["message"]
    code, answer = get(f"/payment/{'x' * 300}/status")
    assert code == 400 and answer["message"].startswith("order_id must be")


def test_health_over_http(over_http: Callable) -> None:
    assert over_http("/health") == (200, {"status": "ok", "database": "ok"})
