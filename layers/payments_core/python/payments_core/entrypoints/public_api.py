"""The frontend's history route on the public API: ``GET /history/{user_id}`` from the browser,
with a Clerk session token (``Authorization: Bearer <token>``), and its CORS preflight.

The answers:
- ``200``: the same body as the private route (``queries.history``), when the token verifies
  and its ``sub`` is ``{user_id}``;
- ``401`` (``WWW-Authenticate: Bearer``): no token, or one that is malformed, expired, not a
  session token, from another issuer or origin, or signed by a key the issuer does not publish;
- ``403``: a valid token of another user;
- ``400``: a malformed ``{user_id}`` (of the token's own user);
- ``503``: the issuer's keys or the database cannot be reached (the token may be fine: retry).

CORS is answered only to the configured frontend origins: ``Access-Control-Allow-Origin`` with
that origin and ``Vary: Origin`` on every answer; a preflight (``OPTIONS``) gets the methods and
the ``Authorization`` header allowed. Another origin gets no CORS header at all, so the browser
keeps the answer from the page. Nothing is cached (``Cache-Control: no-store``): the totals are
one user's.

The verifier (PyJWT and cryptography) is imported on the first request that carries a token,
not at the function's cold start: preflights and token-less requests never load it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from payments_core.config import Settings, get_settings
from payments_core.domain.errors import TransientError
from payments_core.entrypoints import routes
from payments_core.observability import count, logger
from payments_core.usecases import queries

if TYPE_CHECKING:
    from payments_core.adapters.session_tokens import SessionTokenVerifier

ALLOWED_METHODS = routes.methods(routes.served_by(routes.PUBLIC_HISTORY))  # "GET, OPTIONS"
ALLOWED_HEADERS = "Authorization, Content-Type"
PREFLIGHT_MAX_AGE_SECONDS = 600
MISSING_TOKEN = "MISSING_TOKEN"  # noqa: S105 (an error code)
INVALID_TOKEN = "INVALID_TOKEN"  # noqa: S105 (an error code)
FORBIDDEN = "FORBIDDEN"
METHOD_NOT_ALLOWED = "METHOD_NOT_ALLOWED"
NOT_CONFIGURED = "NOT_CONFIGURED"

_ID = re.compile(queries.ID_PATTERN)

_verifier: SessionTokenVerifier | None = None
_verifier_settings: tuple[Any, ...] = ()


def verifier(settings: Settings) -> SessionTokenVerifier:
    """The container's verifier (its JWKS cache lives as long as the container)."""
    global _verifier, _verifier_settings
    wanted = (
        settings.clerk_issuer,
        settings.clerk_jwks_url,
        settings.frontend_origins,
        settings.session_token_leeway_seconds,
    )
    if _verifier is None or _verifier_settings != wanted:
        from payments_core.adapters.session_tokens import JwksCache, SessionTokenVerifier

        _verifier = SessionTokenVerifier(
            issuer=settings.clerk_issuer,
            jwks=JwksCache(settings.clerk_jwks_url),
            origins=settings.frontend_origins,
            leeway_seconds=settings.session_token_leeway_seconds,
        )
        _verifier_settings = wanted
    return _verifier


def set_verifier(value: SessionTokenVerifier | None) -> None:
    """Replace the container's verifier (tests); None: built again from the settings."""
    global _verifier, _verifier_settings
    _verifier = value
    if value is not None:
        settings = get_settings()
        _verifier_settings = (
            settings.clerk_issuer,
            settings.clerk_jwks_url,
            settings.frontend_origins,
            settings.session_token_leeway_seconds,
        )


def history_answer(event: Mapping[str, Any]) -> dict[str, Any]:
    """The API Gateway proxy response to one request of the public history route."""
    settings = get_settings()
    origin = header(event, "Origin")
    cors = cors_headers(origin, settings.frontend_origins)
    method = str(event.get("httpMethod") or "").upper()
    if method == routes.BROWSER_HISTORY_PREFLIGHT.method:
        if cors:
            cors.update(
                {
                    "Access-Control-Allow-Methods": ALLOWED_METHODS,
                    "Access-Control-Allow-Headers": ALLOWED_HEADERS,
                    "Access-Control-Max-Age": str(PREFLIGHT_MAX_AGE_SECONDS),
                }
            )
        return _response(HTTPStatus.NO_CONTENT, None, cors)
    if method != routes.BROWSER_HISTORY.method:
        return _response(
            HTTPStatus.METHOD_NOT_ALLOWED,
            queries.error(METHOD_NOT_ALLOWED, f"only {routes.BROWSER_HISTORY.method}"),
            {**cors, "Allow": ALLOWED_METHODS},
        )
    status, body, extra = _history(event, settings)
    return _response(status, body, {**cors, **extra})


def _history(event: Mapping[str, Any], settings: Settings) -> tuple[int, dict[str, Any], dict[str, str]]:
    user_id = str((event.get("pathParameters") or {}).get("user_id") or "")
    token = bearer_token(header(event, "Authorization"))
    if token is None:
        count("SessionTokenMissing")
        return (
            HTTPStatus.UNAUTHORIZED,
            queries.error(MISSING_TOKEN, "an Authorization: Bearer <Clerk session token> header is required"),
            # RFC 6750 section 3.1: a request without credentials gets no error code
            {"WWW-Authenticate": 'Bearer realm="campusg-payments"'},
        )
    if not settings.clerk_issuer:
        logger.error("CLERK_ISSUER is not set: no session token can be verified")
        return HTTPStatus.SERVICE_UNAVAILABLE, queries.error(NOT_CONFIGURED, "Try again later"), {}

    from payments_core.adapters.session_tokens import InvalidToken, KeysUnavailable

    tokens = verifier(settings)
    try:
        claims = tokens.verify(token)
    except InvalidToken as exc:
        count("SessionTokenRejected")
        logger.info("session token rejected", extra={"reason": exc.reason})
        description = exc.reason.replace('"', "'")
        return (
            HTTPStatus.UNAUTHORIZED,
            queries.error(INVALID_TOKEN, exc.reason),
            {"WWW-Authenticate": f'Bearer error="invalid_token", error_description="{description}"'},
        )
    except KeysUnavailable as exc:
        logger.warning(
            "issuer keys unavailable", extra={"reason": str(exc), "error": repr(tokens.jwks.last_error)}
        )
        count("SessionKeysUnavailable")
        return (
            HTTPStatus.SERVICE_UNAVAILABLE,
            queries.error(queries.SERVICE_UNAVAILABLE, "Try again later"),
            {},
        )
    if claims.user_id != user_id:
        count("HistoryOfAnotherUser")
        return HTTPStatus.FORBIDDEN, queries.error(FORBIDDEN, "a user can read only their own history"), {}
    if not _valid_id(user_id):
        return (
            HTTPStatus.BAD_REQUEST,
            queries.error(
                queries.INVALID_REQUEST, "user_id must be 1 to 255 letters, digits or '_', '.', ':', '@', '-'"
            ),
            {},
        )
    from payments_core.adapters.postgres.db import get_database

    try:
        status, body = queries.history(get_database(), user_id)
    except TransientError as exc:
        logger.warning("history unavailable", extra={"reason": str(exc)})
        count("ApiTransientError")
        return (
            HTTPStatus.SERVICE_UNAVAILABLE,
            queries.error(queries.SERVICE_UNAVAILABLE, "Try again later"),
            {},
        )
    return status, body, {}


def cors_headers(origin: str | None, allowed: tuple[str, ...]) -> dict[str, str]:
    """CORS for an allowed origin; nothing for any other (or none)."""
    if origin is None or origin not in allowed:
        return {}
    return {
        "Access-Control-Allow-Origin": origin,
        "Vary": "Origin",
        # a 401's reason is in the body; the header says which kind, if the page wants it
        "Access-Control-Expose-Headers": "WWW-Authenticate",
    }


def bearer_token(value: str | None) -> str | None:
    """The token of ``Authorization: Bearer <token>`` (scheme in any case); None without one."""
    if not value:
        return None
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def header(event: Mapping[str, Any], name: str) -> str | None:
    """A request header, whatever its case (``headers``, then ``multiValueHeaders``' last)."""
    wanted = name.lower()
    for key, value in (event.get("headers") or {}).items():
        if str(key).lower() == wanted and value is not None:
            return str(value)
    for key, values in (event.get("multiValueHeaders") or {}).items():
        if str(key).lower() == wanted and values:
            return str(values[-1])
    return None


def _valid_id(user_id: str) -> bool:
    return _ID.fullmatch(user_id) is not None


def _response(status: int, body: dict[str, Any] | None, headers: dict[str, str]) -> dict[str, Any]:
    all_headers = {"Cache-Control": "no-store", **headers}
    if body is not None:
        all_headers["Content-Type"] = "application/json"
    return {
        "statusCode": int(status),
        "headers": all_headers,
        "body": json.dumps(body, separators=(",", ":")) if body is not None else "",
        "isBase64Encoded": False,
    }
