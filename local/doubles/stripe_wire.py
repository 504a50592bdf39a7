"""Stripe's wire format for the doubles: form bodies read, error and list answers written.

One parser of Stripe's form-encoded bodies and one set of its answers, for every Stripe double."""

from __future__ import annotations

import json
import re
import secrets
import urllib.parse
from typing import Any

from local.doubles.http_double import Answer

JSON_HEADERS = [("Content-Type", "application/json")]


def stripe_error(status: int, message: str, *, type_: str = "invalid_request_error", **extra: Any) -> Answer:
    body = {"error": {"message": message, "type": type_, **{k: v for k, v in extra.items() if v is not None}}}
    return status, list(JSON_HEADERS), json.dumps(body).encode()


def idempotency_error(key: str, *, endpoint: tuple[str, str] | None = None) -> Answer:
    """Stripe's answer to a key reused with other parameters (or on another endpoint)."""
    if endpoint is not None:
        message = (
            f"Keys for idempotent requests can only be used for the same endpoint they were first "
            f"used for ('{endpoint[0]}' vs '{endpoint[1]}'). Try using a key other than '{key}' if "
            f"you meant to execute a different request."
        )
    else:
        message = (
            f"Keys for idempotent requests can only be used with the same parameters they were first "
            f"used with. Try using a key other than '{key}' if you meant to execute a different request."
        )
    return stripe_error(400, message, type_="idempotency_error")


def form_params(body: bytes) -> list[tuple[str, str]]:
    return sorted(urllib.parse.parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))


def nested(params: list[tuple[str, str]], name: str) -> dict[str, str]:
    """``metadata[order_id]=x`` pairs as ``{"order_id": "x"}``."""
    prefix = name + "["
    return {k[len(prefix) : -1]: v for k, v in params if k.startswith(prefix) and k.endswith("]")}


def new_id(prefix: str) -> str:
    return prefix + secrets.token_hex(8)


def form_tree(params: list[tuple[str, str]]) -> dict[str, Any]:
    """Stripe's bracketed names (``metadata[order_id]=...``) as nested dicts."""
    out: dict[str, Any] = {}
    for name, value in params:
        parts = re.findall(r"[^\[\]]+", name)
        where = out
        for part in parts[:-1]:
            where = where.setdefault(part, {})
        if parts:
            where[parts[-1]] = value
    return out


def ok(obj: dict[str, Any]) -> Answer:
    return 200, list(JSON_HEADERS), json.dumps(obj).encode()


def page(objects: list[dict[str, Any]], url: str, values: dict[str, str]) -> dict[str, Any]:
    """One page of a Stripe list (``objects`` newest first), with ``limit`` and ``starting_after``."""
    ordered = list(objects)
    after = values.get("starting_after")
    if after:
        ids = [o["id"] for o in ordered]
        ordered = ordered[ids.index(after) + 1 :] if after in ids else []
    limit = max(1, min(100, int(values.get("limit") or 10)))
    return {"object": "list", "data": ordered[:limit], "has_more": len(ordered) > limit, "url": url}
