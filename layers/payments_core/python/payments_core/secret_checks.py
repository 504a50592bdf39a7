"""The Stripe credentials must be real before anything uses them.

The stack creates both secrets with a placeholder that the operator replaces after the first
deploy. Until then the service refuses to work rather than run on it: a webhook "verified"
with a guessable secret would let anyone forge payment events. A refusal is one log line that
says what to fix (never the value itself), the ``SecretMisconfigured`` metric (alarmed) and a
``SecretMisconfigured`` error, a ``TransientError``: the webhook answers 500 so Stripe
redelivers once the secret is fixed, and commands are retried rather than failed.
"""

from __future__ import annotations

from payments_core.errors import TransientError
from payments_core.observability import count, logger
from payments_core.secrets import read_secret_string

METRIC = "SecretMisconfigured"
PLACEHOLDER = "REPLACE_ME"  # what infra/components/secrets.py stores on creation
WEBHOOK_SECRET_PREFIXES = ("whsec_",)
API_KEY_PREFIXES = ("sk_", "rk_")  # secret or restricted key, live or test


class SecretMisconfigured(TransientError):
    """A Stripe credential is missing, a placeholder or of the wrong kind."""


def webhook_secret(secret_id: str) -> str:
    """The webhook signing secret, if it is one (``whsec_…``)."""
    return _require(secret_id, "the Stripe webhook signing secret (whsec_…)", WEBHOOK_SECRET_PREFIXES)


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
    value = read_secret_string(secret_id)
    wrong = problem(value, prefixes)
    if wrong is None:
        return value
    message = (
        f"refusing to use secret {secret_id}: it {wrong}; put {expected} into it "
        "(aws secretsmanager put-secret-value)"
    )
    logger.error(message, extra={"secret_id": secret_id, "metric": METRIC})
    count(METRIC)
    raise SecretMisconfigured(message)
