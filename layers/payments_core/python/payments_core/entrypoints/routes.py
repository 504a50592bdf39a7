"""The HTTP routes of both REST APIs: one list, read by everything that routes a request.

- ``payments_core.entrypoints.api`` registers its resolver's routes from it (and the OpenAPI document,
  docs/openapi.json, is generated from that resolver);
- ``payments_core.entrypoints.public_api`` (the ``public_history`` function) answers the methods listed here;
- the CDK (``infra/components/api.py``) declares the API Gateway resources and methods from it;
- the local API Gateway (``local/stack/api_gateway.py``) routes with it, and answers anything else
  as API Gateway does (403 ``Missing Authentication Token``).

Paths are OpenAPI / API Gateway templates (``/payment/{payment_id}/release``). Two APIs: the
**private** one (the saga's routes, reachable only through the VPC endpoint) and the **public**
one (the Stripe webhook and the frontend's history route). Nothing here imports Powertools:
the CDK app and the local tooling read it without loading the API.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

PRIVATE = "private"
PUBLIC = "public"

PAYMENT_API = "payment_api"  # functions/payment_api: payments_core.entrypoints.api's resolver
STRIPE_WEBHOOK = "stripe_webhook"  # functions/stripe_webhook: the same resolver, one route
PUBLIC_HISTORY = "public_history"  # functions/public_history: payments_core.entrypoints.public_api

SIGNATURE_HEADER = "Stripe-Signature"

_VARIABLE = re.compile(r"\{([^}/]+)\}")


@dataclass(frozen=True)
class Route:
    method: str
    path: str  # /payment/{payment_id}/release
    api: str  # PRIVATE or PUBLIC
    function: str  # the Lambda function behind it in AWS
    required_headers: tuple[str, ...] = ()  # API Gateway refuses a request without them

    @property
    def rule(self) -> str:
        """The path in Powertools' form: ``/payment/<payment_id>/release``."""
        return _VARIABLE.sub(r"<\1>", self.path)

    @property
    def variables(self) -> tuple[str, ...]:
        return tuple(_VARIABLE.findall(self.path))


WEBHOOK = Route("POST", "/api/stripe-webhook", PUBLIC, STRIPE_WEBHOOK, (SIGNATURE_HEADER,))
PAYMENT_STATUS = Route("GET", "/payment/{order_id}/status", PRIVATE, PAYMENT_API)
PAYMENT_DETAILS = Route("GET", "/payment/{payment_id}/details", PRIVATE, PAYMENT_API)
RELEASE = Route("POST", "/payment/{payment_id}/release", PRIVATE, PAYMENT_API)
REVERT = Route("POST", "/payment/{payment_id}/revert", PRIVATE, PAYMENT_API)
HISTORY = Route("GET", "/history/{user_id}", PRIVATE, PAYMENT_API)
HEALTH = Route("GET", "/health", PRIVATE, PAYMENT_API)
# The frontend's history route: the same path on the public API, its own function (Clerk token).
BROWSER_HISTORY = Route("GET", "/history/{user_id}", PUBLIC, PUBLIC_HISTORY)
BROWSER_HISTORY_PREFLIGHT = Route("OPTIONS", "/history/{user_id}", PUBLIC, PUBLIC_HISTORY)

ROUTES: tuple[Route, ...] = (
    WEBHOOK,
    PAYMENT_STATUS,
    PAYMENT_DETAILS,
    RELEASE,
    REVERT,
    HISTORY,
    HEALTH,
    BROWSER_HISTORY,
    BROWSER_HISTORY_PREFLIGHT,
)


def served_by(*functions: str) -> tuple[Route, ...]:
    """The routes the named functions serve, in the list's order."""
    return tuple(r for r in ROUTES if r.function in functions)


RESOLVER_ROUTES = served_by(PAYMENT_API, STRIPE_WEBHOOK)  # payments_core.entrypoints.api's resolver


def on_api(api: str) -> tuple[Route, ...]:
    return tuple(r for r in ROUTES if r.api == api)


def methods(routes: tuple[Route, ...]) -> str:
    """``GET, OPTIONS``: the Allow / Access-Control-Allow-Methods form."""
    return ", ".join(dict.fromkeys(r.method for r in routes))


def api_gateway_path(route: Route, routes: tuple[Route, ...]) -> str:
    """The route's resource path on API Gateway, without the leading slash. API Gateway allows
    one variable name per level under a parent resource, so variables that differ between
    sibling routes (``/payment/{order_id}/status``, ``/payment/{payment_id}/details``) become
    one ``{id}``; the function still routes on the request path."""
    original = route.path.strip("/").split("/")
    parts = list(original)
    for index, part in enumerate(original):
        if not _VARIABLE.fullmatch(part):
            continue
        names = {
            other[index]
            for r in routes
            if len(other := r.path.strip("/").split("/")) > index
            and other[:index] == original[:index]
            and _VARIABLE.fullmatch(other[index])
        }
        if len(names) > 1:
            parts[index] = "{id}"
    return "/".join(parts)
