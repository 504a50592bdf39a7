"""Placeholder or malformed Stripe secrets are refused, never used: a webhook signed with the
placeholder (or with an empty secret) gets a 500 (Stripe redelivers once the operator fixes the
secret), one log line that says which secret and what to do, and the SecretMisconfigured metric
that the stack alarms on. Secrets Manager is replaced at Powertools' get_secret; nothing else
is mocked before the refusal (no database or Kafka is reached)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from payments_core.adapters import services
from payments_core.adapters.stripe_api import secret_checks
from payments_core.adapters.stripe_api.stripe_gateway import StripeApiGateway
from payments_core.domain.errors import TransientError
from payments_core.observability import logger
from payments_core.usecases import webhooks

from tests.integration.webhook_helpers import sign, webhook_request

BODY = json.dumps(
    {
        "id": "evt_1",
        "type": "payment_intent.succeeded",
        "data": {"object": {"id": "pi_1", "object": "payment_intent"}},
    }
).encode()


@pytest.fixture
def secret_value(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], None]]:
    """Make every Secrets Manager read return the given value (as Powertools would)."""
    from aws_lambda_powertools.utilities import parameters

    def use(value: str) -> None:
        monkeypatch.setattr(parameters, "get_secret", lambda secret_id, **_: value)

    services.set_services(None)
    yield use
    services.set_services(None)


@pytest.fixture
def log_records() -> Iterator[list[logging.LogRecord]]:
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep()
    target = logging.getLogger(logger.name)
    target.addHandler(handler)
    yield records
    target.removeHandler(handler)


def _emitted_metrics(out: str) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for line in out.splitlines():
        if '"_aws"' in line:
            found.update({k: v for k, v in json.loads(line).items() if not k.startswith("_")})
    return found


@pytest.mark.parametrize(
    ("stored", "signing_secret", "why"),
    [
        ("REPLACE_ME", "REPLACE_ME", "still holds the placeholder REPLACE_ME"),
        ("", "", "is empty"),
        ("sk_test_notawebhooksecret", "sk_test_notawebhooksecret", "does not start with whsec_"),
    ],
    ids=["placeholder", "empty", "wrong-kind"],
)
def test_webhook_signed_with_a_placeholder_is_refused(
    stored: str,
    signing_secret: str,
    why: str,
    secret_value: Callable[[str], None],
    log_records: list[logging.LogRecord],
    load_function: Callable[[str], Any],
    lambda_context: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    secret_value(stored)
    applied: list[Any] = []
    monkeypatch.setattr(webhooks, "apply_event", lambda *a: applied.append(a))
    handler = load_function("payment_api").lambda_handler

    answer = handler(webhook_request(BODY, sign(BODY, signing_secret)), lambda_context("payment_api"))

    assert answer["statusCode"] == 500, answer  # refused; Stripe retries after the fix
    assert applied == []  # the forged event changed nothing
    refusals = [r.getMessage() for r in log_records if r.levelno == logging.ERROR]
    assert len(refusals) == 1, refusals
    assert refusals[0].startswith("refusing to use secret ") and why in refusals[0]
    assert "whsec_" in refusals[0]  # says what belongs there
    if stored:
        assert stored not in refusals[0].replace(secret_checks.PLACEHOLDER, "")  # never the value
    assert _emitted_metrics(capsys.readouterr().out).get(secret_checks.METRIC) == [1.0]  # alarmed on


def test_a_real_signing_secret_verifies_and_applies(
    secret_value: Callable[[str], None],
    load_function: Callable[[str], Any],
    lambda_context: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    secret_value("whsec_abcdef0123456789")
    monkeypatch.setattr(webhooks, "apply_event", lambda *a: webhooks.WebhookOutcome("ignored"))
    handler = load_function("payment_api").lambda_handler
    good = handler(webhook_request(BODY, sign(BODY, "whsec_abcdef0123456789")), lambda_context("payment_api"))
    forged = handler(webhook_request(BODY, sign(BODY, "REPLACE_ME")), lambda_context("payment_api"))
    assert good["statusCode"] == 200, good
    assert forged["statusCode"] == 400  # a real secret: a forged signature is simply invalid
    assert secret_checks.METRIC not in _emitted_metrics(capsys.readouterr().out)


@pytest.mark.parametrize("key", ["REPLACE_ME", "", "pk_test_publishable", "whsec_x1", "sk_"])
def test_stripe_calls_refuse_anything_but_a_secret_or_restricted_key(
    key: str, secret_value: Callable[[str], None]
) -> None:
    secret_value(key)
    with pytest.raises(secret_checks.SecretMisconfigured) as refused:
        StripeApiGateway()._stripe()
    assert isinstance(refused.value, TransientError)  # commands are retried, not failed
    assert "sk_" in str(refused.value)


@pytest.mark.parametrize("key", ["sk_test_abc123", "sk_live_abc123", "rk_live_abc123"])
def test_real_keys_are_used(key: str, secret_value: Callable[[str], None]) -> None:
    secret_value(key)
    assert StripeApiGateway()._stripe() is not None
