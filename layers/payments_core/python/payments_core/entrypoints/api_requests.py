"""How the payment API reads a request where Powertools' REST resolver alone would read it
otherwise: JSON bodies only, path variables that hold whatever one path segment holds, a
repeated header's last value, and the body's exact bytes for the webhook's signature.

Apart from the routes (``api``) because these are the rules of API Gateway and of the contract
for every route, not the answer of any one: each is here with the request Powertools would
have read differently.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from typing import Annotated, Any

from aws_lambda_powertools.event_handler import APIGatewayRestResolver, content_types
from aws_lambda_powertools.event_handler.middlewares.openapi_validation import (
    OpenAPIRequestValidationMiddleware,
)
from aws_lambda_powertools.event_handler.openapi.exceptions import (
    RequestUnsupportedContentType,
    RequestValidationError,
)
from pydantic import BeforeValidator, Field


class JsonBodies(OpenAPIRequestValidationMiddleware):
    """Powertools also reads form and multipart bodies (and answers a multipart type without a
    boundary with an uncaught ValueError); the document declares application/json only, so any
    other declared Content-Type is refused before a body is read (400, ``api._not_json``). No
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


class Resolver(APIGatewayRestResolver):
    """Powertools' REST resolver, validating, with JSON-only bodies (``JsonBodies``) and path
    variables that take whatever one path segment holds, as API Gateway's do: Powertools' own
    pattern admits only URI-safe characters, so an id with a control character would miss its
    route (404 "No such route") instead of getting the parameter's documented 400."""

    def __init__(self) -> None:
        super().__init__(enable_validation=True)
        self._request_validation_middleware = JsonBodies()

    @staticmethod
    def _compile_regex(rule: str, base_regex: str = "^{}/*$") -> re.Pattern[str]:
        return re.compile(base_regex.format(re.sub(r"(<\w+>)", r"(?P\1[^/]+)", rule)))


def _last(value: Any) -> Any:
    # Only multiValueHeaders carries a repeated header when headers is absent: API Gateway's
    # single-value map holds the last value, so the last one counts here too.
    return value[-1] if isinstance(value, list) and value else value


Signature = Annotated[str, BeforeValidator(_last), Field(min_length=1)]


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
