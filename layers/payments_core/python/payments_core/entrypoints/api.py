"""The payment API behind API Gateway (REST): the Stripe webhook and the saga's status queries.

Route functions stay tiny: verification and state changes are in ``webhooks``, JSON shapes in
``queries``, the release and revert bodies (``Body()`` models) in ``saga_requests``. The paths
come from ``routes`` (the one list both APIs, the CDK and the local API Gateway read), and the
OpenAPI document (``make openapi``) is generated from this resolver, so it says what the
validation enforces. Errors map to answers in one place (the exception handlers below):
- an unverifiable webhook is a 400 and nothing is written;
- a ``TransientError`` (database unreachable) is a 500, so Stripe retries the delivery later;
- a malformed id is a 400 ``INVALID_REQUEST`` with the reason, an unknown one the contract's 404;
- a missing or malformed release / revert body is the contract's 400 ``BAD_REQUEST``.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from http import HTTPStatus
from typing import Annotated, Any
from uuid import UUID

from aws_lambda_powertools.event_handler import APIGatewayRestResolver, Response, content_types
from aws_lambda_powertools.event_handler.exceptions import NotFoundError
from aws_lambda_powertools.event_handler.middlewares.openapi_validation import (
    OpenAPIRequestValidationMiddleware,
)
from aws_lambda_powertools.event_handler.openapi.exceptions import (
    RequestUnsupportedContentType,
    RequestValidationError,
)
from aws_lambda_powertools.event_handler.openapi.params import Body, Header, Path
from aws_lambda_powertools.event_handler.openapi.types import OpenAPIResponse
from pydantic import BeforeValidator, Field

from payments_core.adapters.services import get_services
from payments_core.domain.errors import TransientError
from payments_core.entrypoints import routes
from payments_core.entrypoints.routes import SIGNATURE_HEADER
from payments_core.observability import count, logger
from payments_core.usecases import queries, saga_requests, webhooks

API_TITLE = "campusG payment API"
API_VERSION = "1.0.0"


class _JsonBodies(OpenAPIRequestValidationMiddleware):
    """Powertools also reads form and multipart bodies (and answers a multipart type without a
    boundary with an uncaught ValueError); the document declares application/json only, so any
    other declared Content-Type is refused before a body is read (400, ``_not_json``). No
    Content-Type at all is read as JSON, as before; media types are compared case-insensitively.
    A JSON array is refused here too: Powertools would validate its first element (form fields
    arrive as lists), accepting ``[{"reason": "…"}]`` where the document wants an object."""

    def _get_body(self, app: Any) -> dict[str, Any]:
        content_type = app.current_event.headers.get("content-type", "").strip()
        if content_type and not content_type.lower().startswith(content_types.APPLICATION_JSON):
            raise RequestUnsupportedContentType("Unsupported content type", errors=[])
        document = self._parse_json_data(app)
        if isinstance(document, list):
            not_an_object = {"type": "model_attributes_type", "loc": ("body",), "msg": "not an object"}
            raise RequestValidationError([{**not_an_object, "input": document}])
        return document


class _Resolver(APIGatewayRestResolver):
    """Powertools' REST resolver, validating, with JSON-only bodies (``_JsonBodies``) and path
    variables that take whatever one path segment holds, as API Gateway's do: Powertools' own
    pattern admits only URI-safe characters, so an id with a control character would miss its
    route (404 "No such route") instead of getting the parameter's documented 400."""

    def __init__(self) -> None:
        super().__init__(enable_validation=True)
        self._request_validation_middleware = _JsonBodies()

    @staticmethod
    def _compile_regex(rule: str, base_regex: str = "^{}/*$") -> re.Pattern[str]:
        return re.compile(base_regex.format(re.sub(r"(<\w+>)", r"(?P\1[^/]+)", rule)))


app = _Resolver()
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


def _last(value: Any) -> Any:
    # Only multiValueHeaders carries a repeated header when headers is absent: API Gateway's
    # single-value map holds the last value, so the last one counts here too.
    return value[-1] if isinstance(value, list) and value else value


Signature = Annotated[str, BeforeValidator(_last), Field(min_length=1)]


@app.route(
    routes.WEBHOOK.rule,
    method=routes.WEBHOOK.method,
    summary="Stripe webhook",
    description="A Stripe event signed with the webhook secret (Stripe-Signature header, 300 s tolerance). "
    "Deduplicated by event id; the PaymentIntent's status decides the payment's new status.",
    responses={
        200: _doc("Received (applied, unchanged, duplicate, ignored or unknown)", queries.WebhookAnswer),
        400: _doc(
            "Missing (MISSING_SIGNATURE) or invalid (INVALID_SIGNATURE) signature, stale timestamp, "
            "or not a Stripe event (INVALID_PAYLOAD)",
            queries.ErrorAnswer,
        ),
        500: _UNAVAILABLE,
    },
)
def stripe_webhook(
    signature: Annotated[Signature, Header(alias=SIGNATURE_HEADER, description="t=…,v1=… (HMAC-SHA256)")],
) -> JsonResponse:
    services = get_services()
    try:
        body = raw_body(app.current_event.raw_event)
    except UndecodableBody as exc:
        raise webhooks.WebhookRejected(str(exc), webhooks.INVALID_PAYLOAD) from exc
    event = webhooks.verify_event(body, signature, services)
    outcome = webhooks.apply_event(services, event)
    return _json(HTTPStatus.OK, queries.WebhookAnswer(result=outcome.result).model_dump())


@app.route(
    routes.PAYMENT_STATUS.rule,
    method=routes.PAYMENT_STATUS.method,
    summary="A payment by order id",
    responses={200: _PAYMENT, 400: _BAD_REQUEST, 404: _NOT_FOUND, 500: _UNAVAILABLE},
)
def payment_status(
    order_id: Annotated[str, Path(pattern=queries.ORDER_ID_PATTERN, description="The order's id")],
) -> JsonResponse:
    return _json(*queries.status_by_order(get_services().db, order_id))


@app.route(
    routes.PAYMENT_DETAILS.rule,
    method=routes.PAYMENT_DETAILS.method,
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
_BAD_BODY = _doc(
    "Missing or malformed body or field, or a Content-Type other than application/json (error "
    "BAD_REQUEST); a malformed payment id (error INVALID_REQUEST)",
    queries.ErrorAnswer,
)


@app.route(
    routes.RELEASE.rule,
    method=routes.RELEASE.method,
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
)
def release_payment(
    payment_id: Annotated[str, Path(pattern=_ID, description="The payment's id (payment.authorized)")],
    body: Annotated[saga_requests.ReleaseRequest, Body(description="The runner to pay")],
) -> JsonResponse:
    return _json(*saga_requests.request_release(get_services(), payment_id, body))


@app.route(
    routes.REVERT.rule,
    method=routes.REVERT.method,
    summary="Give a payment back (compensation)",
    description="Queues a revert_payment command: cancels the hold, or refunds the capture and reverses "
    "the runner's transfer. The outcome is announced on payment_events as payment.released REVERTED.",
    responses={200: _ALREADY, 202: _QUEUED, 400: _BAD_BODY, 404: _NOT_FOUND, 500: _UNAVAILABLE},
)
def revert_payment(
    payment_id: Annotated[str, Path(pattern=_ID, description="The payment's id (payment.authorized)")],
    body: Annotated[saga_requests.RevertRequest | None, Body(description="Optional: the reason")] = None,
) -> JsonResponse:
    return _json(*saga_requests.request_revert(get_services(), payment_id, body))


@app.route(
    routes.HISTORY.rule,
    method=routes.HISTORY.method,
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


@app.route(
    routes.HEALTH.rule,
    method=routes.HEALTH.method,
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


@app.exception_handler(RequestValidationError)
def _invalid_request(exc: RequestValidationError) -> JsonResponse:
    """The resolver's validation errors as the contract's 400s (never Powertools' 422): a bad
    id first (INVALID_REQUEST, as before the body was read), then a missing signature (the
    webhook's MISSING_SIGNATURE), then the body (BAD_REQUEST, the saga's words)."""
    errors = exc.errors()
    by_place: dict[str, list[Any]] = {}
    for e in errors:
        loc = e.get("loc") or ("",)
        by_place.setdefault(str(loc[0]), []).append(e)
    if "path" in by_place:
        names = [str(e["loc"][-1]) for e in by_place["path"]]
        reasons = [_ID_REASONS.get(name, f"invalid {name}") for name in names]
        return _json(HTTPStatus.BAD_REQUEST, queries.error(queries.INVALID_REQUEST, "; ".join(reasons)))
    if "header" in by_place:  # the one declared header: Stripe's signature
        rejected = webhooks.WebhookRejected(webhooks.MISSING_SIGNATURE_MESSAGE, webhooks.MISSING_SIGNATURE)
        return _webhook_rejected(rejected)
    if "body" in by_place:
        message = saga_requests.describe_body_errors(by_place["body"], exc.body)
        return _json(HTTPStatus.BAD_REQUEST, queries.error(saga_requests.BAD_REQUEST, message))
    return _json(HTTPStatus.BAD_REQUEST, queries.error(queries.INVALID_REQUEST, "invalid request"))


@app.exception_handler(RequestUnsupportedContentType)
def _not_json(exc: RequestUnsupportedContentType) -> JsonResponse:
    content_type = app.current_event.headers.get("content-type", "")
    message = f"Content-Type must be application/json, not {content_type}"
    return _json(HTTPStatus.BAD_REQUEST, queries.error(saga_requests.BAD_REQUEST, message))


@app.exception_handler([UnicodeDecodeError, binascii.Error, RecursionError])
def _unreadable_body(exc: Exception) -> JsonResponse:
    # Raised only while the resolver reads a JSON body: base64 that is not UTF-8 text (API
    # Gateway encodes binary media types), or nesting too deep for Python's parser.
    message = f"body is not JSON: {type(exc).__name__}"
    return _json(HTTPStatus.BAD_REQUEST, queries.error(saga_requests.BAD_REQUEST, message))


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
