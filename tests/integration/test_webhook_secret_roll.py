"""Rolling the webhook signing secret on the local stack (issue 18, item 6): Secrets Manager
(moto) holds the current and the next secret, and a webhook signed with either is applied; one
signed with neither is refused and counted; a plain-string secret still works; and a roll the
running API has cached the old value of is picked up on the first failure, not after the
cache's 300 s. The secret is put back as it was after each test."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests
from payments_core.adapters.postgres.db import Database
from payments_core.adapters.services import Services
from payments_core.usecases import webhooks
from webhook_helpers import encode, payment_intent_event, seed_payment, sign, webhook_request

pytestmark = pytest.mark.integration

NEXT = "whsec_campusg_local_next"


@pytest.fixture
def webhook_secret(local_env: dict[str, str]) -> Iterator[Callable[[str], None]]:
    """``webhook_secret(value)`` puts ``value`` into the webhook secret in moto; the process's
    Powertools cache and refetch limit start empty. Restored afterwards."""
    import boto3
    from aws_lambda_powertools.utilities import parameters

    client: Any = boto3.client("secretsmanager", endpoint_url=local_env["AWS_ENDPOINT_URL"])
    secret_id = local_env["STRIPE_WEBHOOK_SECRET_ID"]
    original = client.get_secret_value(SecretId=secret_id)["SecretString"]

    def put(value: str) -> None:
        client.put_secret_value(SecretId=secret_id, SecretString=value)

    parameters.clear_caches()
    webhooks.secret_refetch.reset()
    yield put
    put(original)
    parameters.clear_caches()
    webhooks.secret_refetch.reset()


@pytest.fixture
def payment_api(load_function: Callable[[str], Any], lambda_context: Callable[..., Any]) -> Callable:
    module = load_function("payment_api")
    context = lambda_context("payment_api")

    def invoke(event: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        response = module.lambda_handler(event, context)
        return response["statusCode"], json.loads(response["body"])

    return invoke


@pytest.fixture
def db(make_services: Callable[..., Services]) -> Database:
    return make_services().db


def _authorized_event(db: Database) -> tuple[Any, bytes]:
    """A payment waiting for 3-D Secure and the signed-to-be body that authorizes it."""
    payment = seed_payment(db, "REQUIRES_ACTION")
    body = encode(
        payment_intent_event(
            "authorized", payment_intent_id=payment.payment_intent_id, order_id=payment.order_id
        )
    )
    return payment, body


def _metrics(out: str) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for line in out.splitlines():
        if '"_aws"' in line:
            found.update({k: v for k, v in json.loads(line).items() if not k.startswith("_")})
    return found


def test_during_a_roll_the_next_secret_is_accepted(webhook_secret, payment_api, db, payment_row, local_env):
    current = local_env["STRIPE_WEBHOOK_SECRET"]
    webhook_secret(json.dumps({"current": current, "next": NEXT}))
    by_next, body = _authorized_event(db)
    assert payment_api(webhook_request(body, sign(body, NEXT))) == (
        200,
        {"received": True, "result": "applied"},
    )
    assert payment_row(by_next.order_id)["status"] == "AUTHORIZED"
    by_current, body = _authorized_event(db)  # and the current one still is
    assert payment_api(webhook_request(body, sign(body, current)))[0] == 200
    assert payment_row(by_current.order_id)["status"] == "AUTHORIZED"


def test_signed_with_neither_is_refused_counted_and_changes_nothing(
    webhook_secret, payment_api, db, payment_row, pg_connection, local_env, capsys
):
    webhook_secret(json.dumps({"current": local_env["STRIPE_WEBHOOK_SECRET"], "next": NEXT}))
    payment, body = _authorized_event(db)
    capsys.readouterr()
    status, answer = payment_api(webhook_request(body, sign(body, "whsec_neither_of_ours")))
    assert status == 400 and answer["error"] == "INVALID_SIGNATURE", answer
    assert _metrics(capsys.readouterr().out).get("WebhookSignatureRejected") == [1.0]
    assert payment_row(payment.order_id)["status"] == "REQUIRES_ACTION"
    ((seen,),) = pg_connection.run(
        "SELECT count(*) FROM stripe_events WHERE payment_intent_id = :pi", pi=payment.payment_intent_id
    )
    assert seen == 0


def test_a_plain_string_secret_still_works(webhook_secret, payment_api, db, payment_row, local_env):
    webhook_secret(local_env["STRIPE_WEBHOOK_SECRET"])
    payment, body = _authorized_event(db)
    assert payment_api(webhook_request(body, sign(body, NEXT)))[0] == 400  # a plain string is one secret
    assert payment_api(webhook_request(body, sign(body, local_env["STRIPE_WEBHOOK_SECRET"])))[0] == 200
    assert payment_row(payment.order_id)["status"] == "AUTHORIZED"


def test_the_running_api_accepts_the_next_secret_without_waiting_out_its_cache(
    webhook_secret, db, payment_row, local_settings, local_env
):
    """The stack's API Gateway process cached the plain secret (localstripe's webhooks and the
    request below warm it); the roll is put into Secrets Manager behind its back."""
    url = f"{local_settings.api_url}/api/stripe-webhook"
    warm, body = _authorized_event(db)
    current = local_env["STRIPE_WEBHOOK_SECRET"]
    answer = requests.post(url, data=body, headers={"Stripe-Signature": sign(body, current)}, timeout=10)
    assert answer.status_code == 200, answer.text
    assert payment_row(warm.order_id)["status"] == "AUTHORIZED"

    webhook_secret(json.dumps({"current": current, "next": NEXT}))
    payment, body = _authorized_event(db)
    # At most one re-read per 30 s: an earlier failure in that process (another test's forged
    # request) may make this one wait for the next interval, as Stripe's retries would.
    deadline = time.monotonic() + webhooks.SECRET_REFETCH_INTERVAL_SECONDS + 10
    statuses = []
    while time.monotonic() < deadline:
        answer = requests.post(url, data=body, headers={"Stripe-Signature": sign(body, NEXT)}, timeout=10)
        statuses.append(answer.status_code)
        if answer.status_code == 200:
            break
        time.sleep(3)
    assert statuses[-1] == 200, statuses
    assert payment_row(payment.order_id)["status"] == "AUTHORIZED"
