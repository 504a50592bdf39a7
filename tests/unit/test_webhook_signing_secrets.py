"""Rolling the webhook signing secret rejects no event: the secret may hold the current and the
next secret, the Stripe-Signature header may carry one v1 per secret Stripe signs with, and a
signature failure re-reads the secret (at most once per interval) before refusing. A request
signed with none of them is a 400, counted as WebhookSignatureRejected.

Secrets Manager is replaced at Powertools' get_secret by a fake with Powertools' cache
semantics (the cached value until force_fetch); nothing after verification is reached
(apply_event is replaced)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from payments_core.adapters import services
from payments_core.adapters.stripe_api import secret_checks
from payments_core.usecases import webhooks

from tests.integration.webhook_helpers import sign, webhook_request

OLD, NEW, FORGER = "whsec_old0123456789", "whsec_new0123456789", "whsec_forger0123456"
BODY = json.dumps(
    {"id": "evt_1", "type": "payment_intent.succeeded", "data": {"object": {"id": "pi_1"}}}
).encode()


class FakeSecretsManager:
    """Powertools' get_secret over one stored value: cached until ``force_fetch``."""

    def __init__(self, value: str) -> None:
        self.stored = value
        self.cached: str | None = None
        self.fetches = 0

    def get_secret(self, secret_id: str, max_age: int = 0, force_fetch: bool = False, **_: Any) -> str:
        if self.cached is None or force_fetch:
            self.fetches += 1
            self.cached = self.stored
        return self.cached


@pytest.fixture
def secrets_manager(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], FakeSecretsManager]]:
    from aws_lambda_powertools.utilities import parameters

    def use(value: str) -> FakeSecretsManager:
        fake = FakeSecretsManager(value)
        monkeypatch.setattr(parameters, "get_secret", fake.get_secret)
        return fake

    services.set_services(None)
    webhooks.secret_refetch.reset()
    monkeypatch.setattr(webhooks, "apply_event", lambda *a: webhooks.WebhookOutcome("ignored"))
    yield use
    webhooks.secret_refetch.reset()
    services.set_services(None)


@pytest.fixture
def deliver(
    load_function: Callable[[str], Any], lambda_context: Callable[..., Any]
) -> Callable[[str | None], tuple[int, dict[str, Any]]]:
    handler = load_function("payment_api").lambda_handler
    context = lambda_context("payment_api")

    def post(signature: str | None) -> tuple[int, dict[str, Any]]:
        answer = handler(webhook_request(BODY, signature), context)
        return answer["statusCode"], json.loads(answer["body"])

    return post


def _metrics(out: str) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for line in out.splitlines():
        if '"_aws"' in line:
            found.update({k: v for k, v in json.loads(line).items() if not k.startswith("_")})
    return found


def _two_signatures(first: str, second: str) -> str:
    """What Stripe sends during its own roll: one v1 per active secret, one timestamp."""
    t = int(time.time())
    return f"{sign(BODY, first, t)},v1={sign(BODY, second, t).split('v1=')[1]}"


# ---- what the secret may hold ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stored", "accepted"),
    [
        (OLD, (OLD,)),
        (f"  {OLD}\n", (OLD,)),
        (json.dumps({"current": OLD, "next": NEW}), (OLD, NEW)),
        (json.dumps({"current": OLD}), (OLD,)),
        (json.dumps([OLD, NEW]), (OLD, NEW)),
        (json.dumps({"current": OLD, "next": OLD}), (OLD,)),
    ],
    ids=["plain", "plain-padded", "current-next", "current-only", "list", "same-twice"],
)
def test_the_secret_holds_one_or_several_signing_secrets(
    stored: str, accepted: tuple[str, ...], secrets_manager: Callable[[str], FakeSecretsManager]
) -> None:
    secrets_manager(stored)
    assert secret_checks.webhook_secrets("id") == accepted


@pytest.mark.parametrize(
    ("stored", "why"),
    [
        (json.dumps({"current": OLD, "next": "REPLACE_ME"}), 'its "next" that still holds the placeholder'),
        (json.dumps({"current": OLD, "nxt": NEW}), "unknown keys ['nxt']"),
        (json.dumps({"next": NEW}), 'has no "current"'),
        (json.dumps({"current": OLD, "next": "sk_live_abc"}), 'its "next" that does not start with whsec_'),
        (json.dumps([OLD, 7]), "its item 1 that is not a string"),
        (json.dumps([]), "neither a JSON object nor a non-empty list"),
        ('{"current": "' + OLD, "is not valid JSON"),
    ],
    ids=["placeholder", "typo", "no-current", "wrong-kind", "not-string", "empty-list", "bad-json"],
)
def test_a_malformed_roll_is_refused_without_quoting_it(
    stored: str, why: str, secrets_manager: Callable[[str], FakeSecretsManager]
) -> None:
    secrets_manager(stored)
    with pytest.raises(secret_checks.SecretMisconfigured) as refused:
        secret_checks.webhook_secrets("id")
    assert why in str(refused.value)
    assert OLD not in str(refused.value) and NEW not in str(refused.value)


# ---- verification during a roll -------------------------------------------------------------


@pytest.mark.parametrize("signer", [OLD, NEW])
def test_either_secret_of_a_roll_verifies(
    signer: str, secrets_manager: Callable[[str], FakeSecretsManager], deliver: Callable[..., Any]
) -> None:
    secrets_manager(json.dumps({"current": OLD, "next": NEW}))
    assert deliver(sign(BODY, signer)) == (200, {"received": True, "result": "ignored"})


def test_stripes_two_signatures_verify_against_either_secret(
    secrets_manager: Callable[[str], FakeSecretsManager], deliver: Callable[..., Any]
) -> None:
    secrets_manager(NEW)  # only the new one is ours; Stripe still signs with the old one too
    assert deliver(_two_signatures(FORGER, NEW))[0] == 200
    assert deliver(_two_signatures(NEW, FORGER))[0] == 200


def test_signed_with_neither_is_400_and_counted(
    secrets_manager: Callable[[str], FakeSecretsManager],
    deliver: Callable[..., Any],
    capsys: pytest.CaptureFixture[str],
) -> None:
    secrets_manager(json.dumps({"current": OLD, "next": NEW}))
    capsys.readouterr()
    status, answer = deliver(_two_signatures(FORGER, "whsec_other9876543"))
    assert status == 400
    assert answer["error"] == "INVALID_SIGNATURE"
    assert "No signatures found matching" in answer["message"]
    metrics = _metrics(capsys.readouterr().out)
    assert metrics.get(webhooks.SIGNATURE_REJECTED_METRIC) == [1.0]
    assert webhooks.SIGNATURE_REJECTED_METRIC == "WebhookSignatureRejected"


def test_a_verified_or_unsigned_request_is_not_counted_as_a_signature_rejection(
    secrets_manager: Callable[[str], FakeSecretsManager],
    deliver: Callable[..., Any],
    capsys: pytest.CaptureFixture[str],
) -> None:
    secrets_manager(OLD)
    capsys.readouterr()
    assert deliver(sign(BODY, OLD))[0] == 200
    assert deliver(None)[1]["error"] == "MISSING_SIGNATURE"
    assert webhooks.SIGNATURE_REJECTED_METRIC not in _metrics(capsys.readouterr().out)


def test_a_stale_signature_by_a_known_secret_says_so(
    secrets_manager: Callable[[str], FakeSecretsManager], deliver: Callable[..., Any]
) -> None:
    secrets_manager(json.dumps({"current": OLD, "next": NEW}))
    status, answer = deliver(sign(BODY, NEW, timestamp=int(time.time()) - 301))
    assert status == 400 and "Timestamp outside the tolerance zone" in answer["message"]


# ---- a roll that the cache has not seen yet ----------------------------------------------------


def test_a_secret_rolled_since_it_was_cached_is_read_again_once_per_interval(
    secrets_manager: Callable[[str], FakeSecretsManager],
    deliver: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sm = secrets_manager(OLD)
    assert deliver(sign(BODY, OLD))[0] == 200  # cached: OLD
    assert sm.fetches == 1
    sm.stored = json.dumps({"current": OLD, "next": NEW})  # the operator adds the next secret

    assert deliver(sign(BODY, NEW))[0] == 200  # not in the cache: read again, then verified
    assert sm.fetches == 2
    assert deliver(sign(BODY, NEW))[0] == 200 and sm.fetches == 2  # the cache now holds both

    # Forged requests re-read the secret at most once per interval.
    clock = [time.monotonic()]
    monkeypatch.setattr(webhooks.time, "monotonic", lambda: clock[0])
    webhooks.secret_refetch.reset()
    for _ in range(5):
        assert deliver(sign(BODY, FORGER))[0] == 400
    assert sm.fetches == 3
    clock[0] += webhooks.SECRET_REFETCH_INTERVAL_SECONDS - 1
    assert deliver(sign(BODY, FORGER))[0] == 400 and sm.fetches == 3
    clock[0] += 2
    assert deliver(sign(BODY, FORGER))[0] == 400 and sm.fetches == 4


def test_within_the_interval_a_rolled_secret_waits_for_the_cache(
    secrets_manager: Callable[[str], FakeSecretsManager], deliver: Callable[..., Any]
) -> None:
    """The rate limit is real: a second roll inside the interval is seen only by the next read."""
    sm = secrets_manager(OLD)
    assert deliver(sign(BODY, FORGER))[0] == 400  # uses this interval's fresh read
    sm.stored = NEW
    assert deliver(sign(BODY, NEW))[0] == 400
    webhooks.secret_refetch.reset()  # the interval passed
    assert deliver(sign(BODY, NEW))[0] == 200
