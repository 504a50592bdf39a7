"""One HTTP contract (issue 20): the release and revert bodies are Powertools ``Body()`` models
whose errors are the contract's 400s, the document says what they enforce, and every router
(the resolver, the public face, the CDK, the local API Gateway) reads payments_core.entrypoints.routes.
Fed the local API Gateway's own events, with doubles for the database and Kafka."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from payments_core.adapters.kafka.kafka_gateway import OutgoingMessage
from payments_core.adapters.postgres import repository
from payments_core.adapters.services import Services, set_services
from payments_core.config import get_settings
from payments_core.domain.payment import Payment, PaymentStatus
from payments_core.entrypoints import api, public_api, routes

from local.stack.api_events import PUBLIC_ROUTES, ROUTES, build_event, compile_routes

RUNNER = {"runner_id": "user_runner", "runner_connect_account_id": "acct_1Runner"}
_ROUTES = compile_routes(ROUTES)


class Publisher:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    def publish(self, messages: list[OutgoingMessage]) -> list[Exception | None]:
        self.sent.extend(json.loads(m.value) for m in messages)
        return [None] * len(messages)


@pytest.fixture
def payment(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Payment, Publisher]]:
    held = Payment(
        payment_id=str(uuid.uuid4()),
        order_id=f"order-{uuid.uuid4()}",
        status=PaymentStatus.AUTHORIZED,
        amount_cents=1299,
        currency="sgd",
        clerk_user_id="user_customer",
    )
    monkeypatch.setattr(
        repository, "get_by_payment_id", lambda db, pid, **_: held if pid == held.payment_id else None
    )
    publisher = Publisher()
    set_services(Services(db=None, stripe=None, publisher=publisher, settings=get_settings()))  # type: ignore[arg-type]
    yield held, publisher
    set_services(None)


def call(
    method: str, path: str, body: bytes = b"", content_type: str | None = "application/json"
) -> tuple[int, dict[str, Any]]:
    headers = [("Content-Type", content_type)] if content_type else []
    event = build_event(
        method=method, raw_path=path, header_items=headers, body=body, source_ip="127.0.0.1", routes=_ROUTES
    )
    response = api.app.resolve(event, None)  # type: ignore[arg-type]
    return response["statusCode"], json.loads(response["body"])


def post(path: str, document: Any = None, **kwargs: Any) -> tuple[int, dict[str, Any]]:
    return call("POST", path, b"" if document is None else json.dumps(document).encode(), **kwargs)


def bad_request(message: str) -> tuple[int, dict[str, Any]]:
    return 400, {"success": False, "error": "BAD_REQUEST", "message": message}


# ---- what the document admits is accepted --------------------------------------------------


def test_a_whole_number_written_as_a_float_is_the_integer_the_schema_admits(
    payment: tuple[Payment, Publisher],
) -> None:
    held, publisher = payment
    code, answer = post(f"/payment/{held.payment_id}/release", {**RUNNER, "amount_to_capture": 438.0})
    assert (code, answer["queued"]) == (202, True), answer
    assert publisher.sent[0]["payload"]["amount_to_capture"] == 438
    assert isinstance(publisher.sent[0]["payload"]["amount_to_capture"], int)


@pytest.mark.parametrize("amount", [438.5, True, "438", 0, 0.0, 100_000_000])
def test_an_amount_that_is_not_a_whole_number_of_cents_in_range_is_refused(
    payment: tuple[Payment, Publisher], amount: Any
) -> None:
    held, publisher = payment
    code, answer = post(f"/payment/{held.payment_id}/release", {**RUNNER, "amount_to_capture": amount})
    assert code == 400 and answer["error"] == "BAD_REQUEST"
    assert answer["message"].startswith("amount_to_capture: ")
    assert publisher.sent == []


def test_unknown_fields_are_ignored_whatever_they_hold(payment: tuple[Payment, Publisher]) -> None:
    held, publisher = payment
    code, _ = post(f"/payment/{held.payment_id}/revert", {"reason": None, "note\u0000": ["\u0000"]})
    assert code == 202
    assert publisher.sent[0]["payload"] == {"payment_id": held.payment_id}


def test_a_revert_reason_with_a_nul_is_escaped_not_refused(payment: tuple[Payment, Publisher]) -> None:
    held, publisher = payment
    code, _ = post(f"/payment/{held.payment_id}/revert", {"reason": "late\u0000order"})
    assert code == 202
    assert publisher.sent[0]["payload"]["reason"] == "late\\u0000order"


def test_a_base64_encoded_json_body_is_read(payment: tuple[Payment, Publisher]) -> None:
    """API Gateway base64-encodes a body of a binary media type (``*/*`` configured, say)."""
    held, publisher = payment
    event = build_event(
        method="POST",
        raw_path=f"/payment/{held.payment_id}/release",
        header_items=[("Content-Type", "application/json")],
        body=json.dumps(RUNNER).encode(),
        source_ip="127.0.0.1",
        routes=_ROUTES,
        binary_media_types=("*/*",),
    )
    assert event["isBase64Encoded"] is True
    response = api.app.resolve(event, None)  # type: ignore[arg-type]
    assert response["statusCode"] == 202, response["body"]
    assert publisher.sent[0]["payload"]["runner_id"] == RUNNER["runner_id"]


# ---- what it refuses is the contract's 400, in the saga's words ------------------------------


def test_release_body_errors_keep_their_messages(payment: tuple[Payment, Publisher]) -> None:
    path = f"/payment/{payment[0].payment_id}/release"
    missing = "a JSON body with runner_id and runner_connect_account_id is required"
    assert post(path, content_type=None) == bad_request(missing)  # what make demo sends
    assert post(path) == bad_request(missing)
    assert post(path, {"runner_id": "user_runner"}) == bad_request("runner_connect_account_id is required")
    assert call("POST", path, b"{not json") == bad_request(
        "body is not JSON: Expecting property name enclosed in double quotes: line 1 column 2 (char 1)"
    )
    for not_an_object in ([RUNNER], "runner", 42, True):
        assert post(path, not_an_object) == bad_request("body must be a JSON object")
    code, answer = post(path, {**RUNNER, "runner_id": "a\u0000b"})
    assert code == 400 and answer["message"].startswith("runner_id: text must not contain NUL")
    assert post(path, {**RUNNER, "runner_id": ""})[0] == 400
    assert payment[1].sent == []


def test_revert_body_errors(payment: tuple[Payment, Publisher]) -> None:
    path = f"/payment/{payment[0].payment_id}/revert"
    assert post(path, {"reason": 42}) == bad_request("reason: Input should be a valid string")
    assert post(path, [{"reason": "x"}]) == bad_request("body must be a JSON object")
    assert payment[1].sent == []


@pytest.mark.parametrize(
    "content_type", ["text/plain", "multipart/form-data", "application/x-www-form-urlencoded"]
)
def test_a_body_that_is_not_declared_json_is_refused(
    payment: tuple[Payment, Publisher], content_type: str
) -> None:
    path = f"/payment/{payment[0].payment_id}/release"
    code, answer = post(path, RUNNER, content_type=content_type)
    assert (code, answer) == bad_request(f"Content-Type must be application/json, not {content_type}")


def test_json_media_types_are_read_whatever_their_case(payment: tuple[Payment, Publisher]) -> None:
    path = f"/payment/{payment[0].payment_id}/release"
    assert post(path, RUNNER, content_type="Application/JSON; charset=UTF-8")[0] == 202


def test_an_undecodable_base64_body_is_a_400(payment: tuple[Payment, Publisher]) -> None:
    event = build_event(
        method="POST",
        raw_path=f"/payment/{payment[0].payment_id}/release",
        header_items=[("Content-Type", "application/json")],
        body=b"\xff\xfe not utf-8",
        source_ip="127.0.0.1",
        routes=_ROUTES,
    )
    response = api.app.resolve(event, None)  # type: ignore[arg-type]
    assert response["statusCode"] == 400
    assert json.loads(response["body"])["message"].startswith("body is not JSON")


@pytest.mark.parametrize("user_id", ["%0A", "%C2%80J", "a%00b", "%E2%98%95"])
def test_an_id_with_characters_outside_the_pattern_is_its_400_not_no_such_route(
    payment: tuple[Payment, Publisher], user_id: str
) -> None:
    code, answer = call("GET", f"/history/{user_id}")
    assert code == 400, answer
    assert answer["message"].startswith("user_id must be 1 to 255 letters")
    code, answer = call("GET", f"/payment/{user_id}/details")
    assert (code, answer["message"]) == (400, "payment_id must be a UUID")


def test_a_path_parameter_error_comes_before_the_body(payment: tuple[Payment, Publisher]) -> None:
    code, answer = post("/payment/not%20an%20id/release")
    assert (code, answer["error"]) == (400, "INVALID_REQUEST")


# ---- one list of routes --------------------------------------------------------------------


def test_the_resolver_serves_exactly_the_listed_routes() -> None:
    served = {(r.method, r.openapi_path) for r in api.app._static_routes + api.app._dynamic_routes}
    assert served == {(r.method, r.path) for r in routes.RESOLVER_ROUTES}


def test_the_local_gateways_route_with_the_list() -> None:
    assert [(r.method, r.path) for r in routes.RESOLVER_ROUTES] == ROUTES
    assert PUBLIC_ROUTES == [("GET", "/history/{user_id}"), ("OPTIONS", "/history/{user_id}")]
    assert public_api.ALLOWED_METHODS == "GET, OPTIONS"


def test_api_gateway_paths_share_one_variable_name_per_level() -> None:
    private = routes.on_api(routes.PRIVATE)
    paths = {routes.api_gateway_path(r, private) for r in private}
    assert paths == {
        "payment/{id}/status",
        "payment/{id}/details",
        "payment/{id}/release",
        "payment/{id}/revert",
        "history/{user_id}",
        "health",
    }
    assert routes.api_gateway_path(routes.WEBHOOK, routes.on_api(routes.PUBLIC)) == "api/stripe-webhook"
    assert routes.RELEASE.rule == "/payment/<payment_id>/release"


def test_the_webhook_function_serves_the_listed_webhook_route() -> None:
    from local.stack.lambda_runtime import FakeLambdaContext, load_handler

    handler = load_handler("stripe_webhook")
    event = build_event(
        method="GET", raw_path="/health", header_items=[], body=b"", source_ip="127.0.0.1", routes=_ROUTES
    )
    assert handler(event, FakeLambdaContext("stripe_webhook"))["statusCode"] == 404  # not its route
    event = build_event(
        method=routes.WEBHOOK.method,
        raw_path=routes.WEBHOOK.path,
        header_items=[],
        body=b"{}",
        source_ip="127.0.0.1",
        routes=_ROUTES,
    )
    answer = json.loads(handler(event, FakeLambdaContext("stripe_webhook"))["body"])
    assert answer["error"] == "MISSING_SIGNATURE"  # resolved: its route
