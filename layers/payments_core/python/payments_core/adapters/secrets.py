"""Secrets Manager access through Powertools Parameters (cached, so warm invocations
do not call Secrets Manager again). boto3 is imported on first use, not at cold start."""

from __future__ import annotations

import json
from typing import Any

SECRET_MAX_AGE_SECONDS = 300


def read_secret_string(secret_id: str, *, fresh: bool = False) -> str:
    """The secret's value, stripped; possibly empty (``secret_checks`` judges what it holds).
    ``fresh``: read Secrets Manager now, not the cache (which is then refreshed)."""
    from aws_lambda_powertools.utilities import parameters

    value = parameters.get_secret(secret_id, max_age=SECRET_MAX_AGE_SECONDS, force_fetch=fresh)
    if isinstance(value, bytes):
        value = value.decode("utf-8")
    return value.strip() if isinstance(value, str) else ""


def get_secret_string(secret_id: str) -> str:
    value = read_secret_string(secret_id)
    if not value:
        raise RuntimeError(f"secret {secret_id} is empty: fill it in Secrets Manager")
    return value


def get_secret_json(secret_id: str) -> dict[str, Any]:
    raw = get_secret_string(secret_id)
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise RuntimeError(f"secret {secret_id} is not JSON") from exc
    if not isinstance(value, dict):
        raise RuntimeError(f"secret {secret_id} must hold a JSON object")
    return value
