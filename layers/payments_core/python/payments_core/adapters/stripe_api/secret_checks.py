"""The Stripe credentials must be real before anything uses them.

The stack creates both secrets with a placeholder that the operator replaces after the first
deploy. Until then the service refuses to work rather than run on it: a webhook "verified"
with a guessable secret would let anyone forge payment events. A refusal is one log line that
says what to fix (never the value itself), the ``SecretMisconfigured`` metric (alarmed) and a
``SecretMisconfigured`` error, a ``TransientError``: the webhook answers 500 so Stripe
redelivers once the secret is fixed, and commands are retried rather than failed.
"""

from __future__ import annotations

import json
from typing import NoReturn

from payments_core.adapters.secrets import read_secret_string
from payments_core.domain.errors import TransientError
from payments_core.observability import count, logger

METRIC = "SecretMisconfigured"
PLACEHOLDER = "REPLACE_ME"  # what infra/components/secrets.py stores on creation
WEBHOOK_SECRET_PREFIXES = ("whsec_",)
API_KEY_PREFIXES = ("sk_", "rk_")  # secret or restricted key, live or test


class SecretMisconfigured(TransientError):
    """A Stripe credential is missing, a placeholder or of the wrong kind."""


WEBHOOK_SIGNING_HINT = (
    'the Stripe webhook signing secret (whsec_…), or during a roll {"current": "whsec_…", "next": "whsec_…"}'
)
# The keys of a webhook secret held as a JSON object: the one Stripe signs with now and the
# one it will sign with after the roll. Another key is refused (a typo would drop a secret).
WEBHOOK_SECRET_KEYS = ("current", "next")


def webhook_secrets(secret_id: str, *, fresh: bool = False) -> tuple[str, ...]:
    """The webhook signing secrets to accept, each a ``whsec_…`` value: the secret's value as
    a plain string, or during a roll a JSON object ``{"current": …, "next": …}`` ("next"
    optional) or a JSON list of them. ``fresh``: read Secrets Manager, not the cache."""
    value = read_secret_string(secret_id, fresh=fresh)
    if not value.startswith(("{", "[")):
        return (_checked(secret_id, value, WEBHOOK_SECRET_PREFIXES, WEBHOOK_SIGNING_HINT),)
    try:
        document = json.loads(value)
    except json.JSONDecodeError:
        _refuse(secret_id, "is not valid JSON", WEBHOOK_SIGNING_HINT)
    if isinstance(document, dict):
        unknown = sorted(set(document) - set(WEBHOOK_SECRET_KEYS))
        if unknown or "current" not in document:
            what = f"has unknown keys {unknown}" if unknown else 'has no "current"'
            _refuse(secret_id, what, WEBHOOK_SIGNING_HINT)
        members = [(f'its "{key}"', document[key]) for key in WEBHOOK_SECRET_KEYS if key in document]
    elif isinstance(document, list) and document:
        members = [(f"its item {i}", item) for i, item in enumerate(document)]
    else:
        _refuse(secret_id, "is neither a JSON object nor a non-empty list", WEBHOOK_SIGNING_HINT)
    secrets: list[str] = []
    for name, member in members:
        if not isinstance(member, str):
            _refuse(secret_id, f"holds {name} that is not a string", WEBHOOK_SIGNING_HINT)
        wrong = problem(member.strip(), WEBHOOK_SECRET_PREFIXES)
        if wrong is not None:
            _refuse(secret_id, f"holds {name} that {wrong}", WEBHOOK_SIGNING_HINT)
        secrets.append(member.strip())
    return tuple(dict.fromkeys(secrets))


def api_key(secret_id: str) -> str:
    """The Stripe API key, if it is one (``sk_…`` or ``rk_…``)."""
    return _require(secret_id, "a Stripe secret or restricted key (sk_… / rk_…)", API_KEY_PREFIXES)


def problem(value: str, prefixes: tuple[str, ...]) -> str | None:
    """What is wrong with ``value``, or None. Never quotes the value."""
    if not value:
        return "is empty"
    if value == PLACEHOLDER:
        return f"still holds the placeholder {PLACEHOLDER}"
    if not value.startswith(prefixes):
        return f"does not start with {' or '.join(prefixes)}"
    if len(value) <= max(len(p) for p in prefixes):
        return "holds only a prefix"
    return None


def _require(secret_id: str, expected: str, prefixes: tuple[str, ...]) -> str:
    return _checked(secret_id, read_secret_string(secret_id), prefixes, expected)


def _checked(secret_id: str, value: str, prefixes: tuple[str, ...], expected: str) -> str:
    wrong = problem(value, prefixes)
    if wrong is None:
        return value
    _refuse(secret_id, wrong, expected)


def _refuse(secret_id: str, wrong: str, expected: str) -> NoReturn:
    message = (
        f"refusing to use secret {secret_id}: it {wrong}; put {expected} into it "
        "(aws secretsmanager put-secret-value)"
    )
    logger.error(message, extra={"secret_id": secret_id, "metric": METRIC})
    count(METRIC)
    raise SecretMisconfigured(message)
