"""The payment API behind API Gateway (REST): the Stripe webhook and the saga's status queries.

Route functions stay tiny: verification and state changes are in ``webhooks``, JSON shapes in
``queries``. Errors map to answers in one place (the exception handlers below):
- an unverifiable webhook is a 400 and nothing is written;
- a ``TransientError`` (database unreachable) is a 500, so Stripe retries the delivery later;
- a malformed id is a 400 with the reason, an unknown one the contract's 404.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from http import HTTPStatus
from typing import Annotated, Any
from uuid import UUID

from aws_lambda_powertools.event_handler import APIGatewayRestResolver, Response, content_types
from aws_lambda_powertools.event_handler.exceptions import NotFoundError
from aws_lambda_powertools.event_handler.openapi.exceptions import RequestValidationError
from aws_lambda_powertools.event_handler.openapi.params import Path
from aws_lambda_powertools.event_handler.openapi.types import OpenAPIResponse

from payments_core import queries, saga_requests, webhooks
from payments_core.errors import TransientError
from payments_core.observability import count, logger
from payments_core.services import get_services

API_TITLE = "campusG payment API"
API_VERSION = "1.0.0"
SIGNATURE_HEADER = "Stripe-Signature"

app = APIGatewayRestResolver(enable_validation=True)
JsonResponse = Response[dict[str, Any]]


def _json(status: int, body: dict[str, Any]) -> JsonResponse:
    return Response(status_code=status, content_type=content_types.APPLICATION_JSON, body=body)


def _doc(description: str, model: Any) -> OpenAPIResponse:
    return {"description": description, "content": {"application/json": {"model": model}}}


_BAD_REQUEST = _doc("Malformed request", queries.ErrorAnswer)
_NOT_FOUND = _doc("No such payment", queries.ErrorAnswer)
_UNAVAILABLE = _doc("Database unreachable: retry later", queries.ErrorAnswer)
_PAYMENT = _doc("The payment", queries.PaymentAnswer)


# ---- routes ------------------------------------------------------------------------------


@app.post(
    "/api/stripe-webhook",
    summary="Stripe webhook",
    description="A Stripe event signed with the webhook secret (Stripe-Signature header, 300 s tolerance). "
    "Deduplicated by event id; the PaymentIntent's status decides the payment's new status.",
    responses={
        200: _doc("Received (applied, unchanged, duplicate, ignored or unknown)", queries.WebhookAnswer),
        400: _doc(
            "Missing or invalid signature, stale timestamp, or not a Stripe event", queries.ErrorAnswer
        ),
        500: _UNAVAILABLE,
    },
)
def stripe_webhook() -> JsonResponse:
    services = get_services()
    try:
        body = raw_body(app.current_event.raw_event)
    except UndecodableBody as exc:
        raise webhooks.WebhookRejected(str(exc), webhooks.INVALID_PAYLOAD) from exc
    event = webhooks.verify_event(body, signature_of(app.current_event.raw_event), services)
    outcome = webhooks.apply_event(services, event)
    return _json(HTTPStatus.OK, queries.WebhookAnswer(result=outcome.result).model_dump())


@app.get(
    "/payment/<order_id>/status",
    summary="A payment by order id",
    responses={200: _PAYMENT, 400: _BAD_REQUEST, 404: _NOT_FOUND, 500: _UNAVAILABLE},
)
def payment_status(
    order_id: Annotated[str, Path(pattern=queries.ORDER_ID_PATTERN, description="The order's id")],
) -> JsonResponse:
    return _json(*queries.status_by_order(get_services().db, order_id))


@app.get(
    "/payment/<payment_id>/details",
    summary="A payment by payment id",
    responses={200: _PAYMENT, 400: _BAD_REQUEST, 404: _NOT_FOUND, 500: _UNAVAILABLE},
)
def payment_details(
    payment_id: Annotated[UUID, Path(description="The payment's id (a UUID)")],
) -> JsonResponse:
    return _json(*queries.details_by_payment(get_services().db, str(payment_id)))


_ID = queries.ID_PATTERN
_QUEUED = _doc(
    "Queued: the outcome follows on payment_events as payment.released or payment.failed",
    saga_requests.QueuedAnswer,
)
_ALREADY = _doc(
    "Nothing to do: the payment is already there (nothing queued, nothing re-announced)",
    saga_requests.QueuedAnswer,
)
_BAD_BODY = _doc("Missing or malformed body or field (error BAD_REQUEST)", queries.ErrorAnswer)


@app.post(
    "/payment/<payment_id>/release",
    summary="Release a held payment to the runner",
    description="Queues a release_payment command (capture, then transfer to the runner's connected "
    "account), keyed by the order. The saga continues on the 2xx; the outcome is announced on payment_events.",
    responses={
        200: _ALREADY,
        202: _QUEUED,
        400: _BAD_BODY,
        404: _NOT_FOUND,
        409: _doc(
            "The payment is FAILED or REVERTED: it can no longer be released", saga_requests.ConflictAnswer
        ),
        500: _UNAVAILABLE,
    },
    openapi_extensions={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": saga_requests.ReleaseRequest.model_json_schema()}},
        }
    },
)
def release_payment(
    payment_id: Annotated[str, Path(pattern=_ID, description="The payment's id (payment.authorized)")],
) -> JsonResponse:
    return _json(*saga_requests.request_release(get_services(), payment_id, _saga_body()))


@app.post(
    "/payment/<payment_id>/revert",
    summary="Give a payment back (compensation)",
    description="Queues a revert_payment command: cancels the hold, or refunds the capture and reverses "
    "the runner's transfer. The outcome is announced on payment_events as payment.released REVERTED.",
    responses={200: _ALREADY, 202: _QUEUED, 400: _BAD_BODY, 404: _NOT_FOUND, 500: _UNAVAILABLE},
    openapi_extensions={
        "requestBody": {
            "required": False,
            "content": {"application/json": {"schema": saga_requests.RevertRequest.model_json_schema()}},
        }
    },
)
def revert_payment(
    payment_id: Annotated[str, Path(pattern=_ID, description="The payment's id (payment.authorized)")],
) -> JsonResponse:
    return _json(*saga_requests.request_revert(get_services(), payment_id, _saga_body()))


@app.get(
    "/history/<user_id>",
    summary="A user's payment totals",
    description="Spent as customer (AUTHORIZED or SUCCEEDED) and earned as runner (SUCCEEDED).",
    responses={
        200: _doc("Totals (zeros for an unknown user)", queries.HistoryAnswer),
        400: _BAD_REQUEST,
        500: _UNAVAILABLE,
    },
)
def user_history(
    user_id: Annotated[str, Path(pattern=_ID, description="The user's Clerk id")],
) -> JsonResponse:
    return _json(*queries.history(get_services().db, user_id))


@app.get(
    "/health",
    summary="Health",
    responses={
        200: _doc("Up", queries.HealthAnswer),
        503: _doc("The database is unreachable", queries.HealthAnswer),
    },
)
def health() -> JsonResponse:
    return _json(*queries.health(get_services().db))


# ---- request parts -------------------------------------------------------------------------


class UndecodableBody(ValueError):
    """API Gateway said the body is base64, and it is not."""


def raw_body(event: Mapping[str, Any]) -> bytes:
    """The body exactly as API Gateway received it (the webhook's signature covers these bytes):
    base64-decoded when API Gateway encoded it (a binary media type)."""
    body = event.get("body") or ""
    if event.get("isBase64Encoded"):
        try:
            return base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise UndecodableBody("body is not valid base64") from exc
    return body.encode("utf-8")


def _saga_body() -> bytes:
    try:
        return raw_body(app.current_event.raw_event)
    except UndecodableBody as exc:
        raise saga_requests.BadRequest(str(exc)) from exc


def signature_of(event: Mapping[str, Any]) -> str | None:
    """The Stripe-Signature header, whatever its case. API Gateway puts a repeated header's
    last value in ``headers``; ``multiValueHeaders`` is the fallback when ``headers`` is absent."""
    wanted = SIGNATURE_HEADER.lower()
    for name, value in (event.get("headers") or {}).items():
        if name.lower() == wanted and value:
            return str(value)
    for name, values in (event.get("multiValueHeaders") or {}).items():
        if name.lower() == wanted and values:
            return str(values[-1])
    return None


# ---- errors --------------------------------------------------------------------------------

_ID_REASONS = {
    "payment_id": "payment_id must be a UUID",
    "order_id": "order_id must be 1 to 255 letters, digits or '_', '.', ':', '@', '-'",
    "user_id": "user_id must be 1 to 255 letters, digits or '_', '.', ':', '@', '-'",
}


@app.exception_handler(webhooks.WebhookRejected)
def _webhook_rejected(exc: webhooks.WebhookRejected) -> JsonResponse:
    count("WebhookRejected")
    logger.warning("webhook rejected", extra={"error": exc.code, "reason": exc.message})
    return _json(HTTPStatus.BAD_REQUEST, queries.error(exc.code, exc.message))


@app.exception_handler(saga_requests.BadRequest)
def _bad_saga_request(exc: saga_requests.BadRequest) -> JsonResponse:
    return _json(HTTPStatus.BAD_REQUEST, queries.error(saga_requests.BAD_REQUEST, exc.reason))


@app.exception_handler(RequestValidationError)
def _invalid_request(exc: RequestValidationError) -> JsonResponse:
    names = [str(e.get("loc", ("", ""))[-1]) for e in exc.errors()]
    reasons = [_ID_REASONS.get(name, f"invalid {name}") for name in names] or ["invalid request"]
    return _json(HTTPStatus.BAD_REQUEST, queries.error(queries.INVALID_REQUEST, "; ".join(reasons)))


@app.exception_handler(TransientError)
def _unavailable(exc: TransientError) -> JsonResponse:
    # A 5xx makes Stripe redeliver the event later; nothing was committed.
    logger.warning("request failed transiently", extra={"reason": str(exc)})
    count("ApiTransientError")
    return _json(
        HTTPStatus.INTERNAL_SERVER_ERROR, queries.error(queries.SERVICE_UNAVAILABLE, "Try again later")
    )


@app.not_found
def _no_route(exc: NotFoundError) -> JsonResponse:
    return _json(HTTPStatus.NOT_FOUND, queries.error(queries.NOT_FOUND, "No such route"))


def openapi_document() -> str:
    """The OpenAPI document of these routes (``make openapi`` writes it to docs/openapi.json).
    Powertools documents a 422 for request validation; this API answers 400 instead (see
    ``_invalid_request``), so the 422 entries and their schemas are left out."""
    document = json.loads(
        app.get_openapi_json_schema(
            title=API_TITLE,
            version=API_VERSION,
            description="Stripe webhook and payment status queries of the campusG payment service.",
        )
    )
    for operations in document.get("paths", {}).values():
        for operation in operations.values():
            operation.get("responses", {}).pop("422", None)
    schemas = document.get("components", {}).get("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):  # referenced only by the 422s
        schemas.pop(name, None)
    return json.dumps(document, indent=2, sort_keys=False) + "\n"
