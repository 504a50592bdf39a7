"""API Gateway REST proxy events: the routes, the event a handler gets, the response read back.

API Gateway's REST proxy integration as a Lambda handler sees it: the routes (read from
``payments_core.entrypoints.routes``), the proxy event built from an HTTP request, and the
handler's proxy response read back into one. Used by the local API Gateway and by tests and
benches that build the same events in-process."""

from __future__ import annotations

import base64
import fnmatch
import re
import time
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from payments_core.entrypoints import routes as api_routes

from local.stack.settings import AWS_ACCOUNT_ID, HOST

# The private face: payment_api's resolver's routes (the webhook too: localstripe posts here).
ROUTES: list[tuple[str, str]] = [(r.method, r.path) for r in api_routes.RESOLVER_ROUTES]
# The public face: the frontend's history route and its preflight.
PUBLIC_ROUTES: list[tuple[str, str]] = [
    (r.method, r.path) for r in api_routes.served_by(api_routes.PUBLIC_HISTORY)
]
DEFAULT_BINARY_MEDIA_TYPES = ("application/octet-stream", "image/*", "application/pdf", "application/zip")
STAGE = "local"


def _template_regex(template: str) -> re.Pattern[str]:
    parts = re.split(r"(\{[^}/]+\})", template)
    pattern = "".join(
        f"(?P<{p[1:-1].rstrip('+')}>[^/]+)" if p.startswith("{") else re.escape(p) for p in parts
    )
    return re.compile(f"^{pattern}$")


@dataclass(frozen=True)
class Route:
    method: str
    template: str
    regex: re.Pattern[str]


def compile_routes(routes: list[tuple[str, str]]) -> list[Route]:
    return [Route(m.upper(), t, _template_regex(t)) for m, t in routes]


def match_route(routes: list[Route], method: str, path: str) -> tuple[str, dict[str, str] | None]:
    """(resource, pathParameters): the template whose method and path match, else one whose
    path matches, else the path itself (forwarded unchanged)."""
    by_path = [(r, m) for r in routes if (m := r.regex.match(path))]
    for route, found in by_path:
        if route.method == method:
            return route.template, {k: unquote(v) for k, v in found.groupdict().items()} or None
    if by_path:
        route, found = by_path[0]
        return route.template, {k: unquote(v) for k, v in found.groupdict().items()} or None
    return path, None


def is_binary(content_type: str, binary_media_types: tuple[str, ...]) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return bool(media) and any(fnmatch.fnmatch(media, pattern) for pattern in binary_media_types)


def build_event(
    *,
    method: str,
    raw_path: str,
    header_items: list[tuple[str, str]],
    body: bytes,
    source_ip: str,
    routes: list[Route],
    binary_media_types: tuple[str, ...] = DEFAULT_BINARY_MEDIA_TYPES,
    host: str = f"{HOST}:3000",
) -> dict[str, Any]:
    split = urlsplit(raw_path)
    path = unquote(split.path) or "/"
    resource, path_parameters = match_route(routes, method, split.path or "/")

    headers: dict[str, str] = {}
    multi_headers: dict[str, list[str]] = {}
    for name, value in header_items:
        headers[name] = value  # the last one wins, as in API Gateway's single-value map
        multi_headers.setdefault(name, []).append(value)

    multi_query = parse_qs(split.query, keep_blank_values=True) if split.query else {}
    query = {k: v[-1] for k, v in multi_query.items()}

    content_type = next((v for k, v in header_items if k.lower() == "content-type"), "")
    text_body: str | None = None
    encoded = False
    if body:
        try:
            if is_binary(content_type, binary_media_types):
                raise UnicodeDecodeError("utf-8", body, 0, 1, "binary media type")
            text_body = body.decode("utf-8")
        except UnicodeDecodeError:
            text_body = base64.b64encode(body).decode("ascii")
            encoded = True

    now = time.time()
    request_id = str(uuid.uuid4())
    user_agent = headers.get("User-Agent") or headers.get("user-agent")
    return {
        "resource": resource,
        "path": path,
        "httpMethod": method,
        "headers": headers or None,
        "multiValueHeaders": multi_headers or None,
        "queryStringParameters": query or None,
        "multiValueQueryStringParameters": multi_query or None,
        "pathParameters": path_parameters,
        "stageVariables": None,
        "requestContext": {
            "accountId": AWS_ACCOUNT_ID,
            "apiId": "local",
            "domainName": host,
            "extendedRequestId": request_id,
            "httpMethod": method,
            "identity": {"sourceIp": source_ip, "userAgent": user_agent},
            "path": f"/{STAGE}{path}",
            "protocol": "HTTP/1.1",
            "requestId": request_id,
            "requestTime": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(now)),
            "requestTimeEpoch": int(now * 1000),
            "resourceId": "local",
            "resourcePath": resource,
            "stage": STAGE,
        },
        "body": text_body,
        "isBase64Encoded": encoded,
    }


def proxy_response(response: Any) -> tuple[int, list[tuple[str, str]], bytes]:
    if not isinstance(response, dict):
        raise TypeError("the handler did not return a dict")
    status = int(response.get("statusCode", 200))
    pairs: list[tuple[str, str]] = []
    multi = response.get("multiValueHeaders") or {}
    for name, values in multi.items():
        pairs.extend((str(name), str(v)) for v in (values or []))
    seen = {name.lower() for name, _ in pairs}
    for name, value in (response.get("headers") or {}).items():
        if str(name).lower() not in seen:  # multiValueHeaders take precedence, as in API Gateway
            pairs.append((str(name), str(value)))
    body = response.get("body")
    if body is None:
        data = b""
    elif response.get("isBase64Encoded"):
        data = base64.b64decode(body)
    else:
        data = str(body).encode("utf-8")
    return status, pairs, data
