"""Stripe requests per released order (issue 19), counted on the wire at the strict Stripe double
(``local/doubles/strict_stripe.py``, in front of localstripe) with the real gateway, the real command
path, PostgreSQL and the user-service stand-in:

- on a first attempt an order costs create, capture and transfer, nothing else (the payout
  account's verdict is kept for a while; no lookup before a call nobody attempted before);
- a retry after a recorded attempt looks first, and the runner is never paid twice: after a
  timeout whose transfer landed anyway, and after a holder that died with its transfer recorded
  as started and no outcome.

The stack's scheduler and API (localstripe's webhooks) are paused for the module: they would
take the order's lease or move its row while a test counts."""

from __future__ import annotations

import dataclasses
import json
import re
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import stripe
from conftest import Card, authorize_command, command, msk_event
from payments_core.adapters.services import Services
from payments_core.adapters.stripe_api.stripe_gateway import StripeApiGateway
from payments_core.config import Settings, get_settings
from payments_core.entrypoints.commands import handle_command_batch

from local.doubles.strict_stripe import StrictStripe
from local.stack import control as stack

pytestmark = pytest.mark.integration

AMOUNT = 1299
DELIVERIES = 6
_IDS = re.compile(r"/(pi|acct|tr|trr|re|ch)_[A-Za-z0-9]+")
CREATE, CAPTURE, TRANSFER = (
    "POST /v1/payment_intents",
    "POST /v1/payment_intents/{id}/capture",
    "POST /v1/transfers",
)
RETRIEVE, LIST_TRANSFERS, ACCOUNT = (
    "GET /v1/payment_intents/{id}",
    "GET /v1/transfers",
    "GET /v1/accounts/{id}",
)


@pytest.fixture(scope="module", autouse=True)
def quiet_stack() -> Iterator[None]:
    paused = [name for name in ("scheduler", "api-gateway") if stack.is_running(name)]
    if paused:
        stack.down(paused)
    yield
    if paused:
        stack.up(paused)


@pytest.fixture
def double(local_env: dict[str, str]) -> Iterator[StrictStripe]:
    proxy = StrictStripe(local_env["STRIPE_API_BASE"], validator=local_env["STRIPE_MOCK_API_BASE"]).start()
    yield proxy
    proxy.stop()


@pytest.fixture
def via_double(double: StrictStripe) -> Settings:
    # a 2 s client timeout: a request held longer at the double is one whose answer was lost
    return dataclasses.replace(
        get_settings(), stripe_api_base=double.url, stripe_max_network_retries=0, stripe_timeout_seconds=2
    )


@pytest.fixture
def services(make_services: Callable[..., Services], via_double: Settings) -> Services:
    made = make_services(stripe=StripeApiGateway(via_double))
    return dataclasses.replace(made, settings=via_double)


@pytest.fixture
def fresh_runner(local_env: dict[str, str], localstripe_client: Any) -> Callable[[], tuple[str, str]]:
    """A new runner with a new Connect account (transfers active), registered at the user
    service: an account whose verdict nobody has kept yet."""

    def make() -> tuple[str, str]:
        account = localstripe_client.v1.accounts.create(
            params={"type": "express", "country": "SG", "capabilities": {"transfers": {"requested": True}}}
        ).id
        runner = f"user_runner_{uuid.uuid4().hex[:10]}"
        body = json.dumps({"stripe_connect_account_id": account}).encode()
        request = urllib.request.Request(  # noqa: S310 - the local stand-in
            f"{local_env['USER_SERVICE_URL']}/api/user/{runner}/connect-account",
            data=body,
            method="PUT",
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=5):  # noqa: S310
            pass
        return runner, account

    return make


def requests_seen(double: StrictStripe) -> Counter[str]:
    """Every request the double received so far, by method and route (object ids as {id})."""
    with double._lock:
        seen = dict(double.stats.by_path)
    counted: Counter[str] = Counter()
    for route, n in seen.items():
        counted[_IDS.sub("/{id}", route)] += n
    return counted


def deliver(services: Services, cmd: dict[str, Any], offset: int) -> bool:
    return not handle_command_batch(msk_event(cmd, first_offset=offset), None, services)["batchItemFailures"]


def deliver_until_handled(services: Services, cmd: dict[str, Any], offset: int) -> None:
    for _ in range(DELIVERIES):
        if deliver(services, cmd, offset):
            return
        time.sleep(0.5)
    raise AssertionError(f"{cmd['type']} still not handled after {DELIVERIES} deliveries")


def authorized(services: Services, card: Card, payment_row: Callable[[str], Any]) -> dict[str, Any]:
    order_id = str(uuid.uuid4())
    deliver_until_handled(services, authorize_command(card, order_id=order_id, amount=AMOUNT), 0)
    row = payment_row(order_id)
    assert row is not None and row["status"] == "AUTHORIZED", row
    return dict(row)


def release_to(order_id: str, runner: str, account: str) -> dict[str, Any]:
    return command("release_payment", order_id=order_id, runner_id=runner, runner_connect_account_id=account)


def test_a_released_order_makes_three_stripe_calls_on_a_first_attempt(
    services, double, new_card, payment_row, fresh_runner
):
    runner, account = fresh_runner()
    card = new_card()
    # The first release to a new account reads the account at Stripe, once.
    before = requests_seen(double)
    first = authorized(services, card, payment_row)
    deliver_until_handled(services, release_to(first["order_id"], runner, account), 1)
    assert (requests_seen(double) - before)[ACCOUNT] == 1

    # A known-good account: the whole order is create, capture and transfer.
    before = requests_seen(double)
    row = authorized(services, card, payment_row)
    deliver_until_handled(services, release_to(row["order_id"], runner, account), 1)
    calls = requests_seen(double) - before
    assert calls == Counter({CREATE: 1, CAPTURE: 1, TRANSFER: 1}), calls
    assert sum(calls.values()) <= 3

    (transfer,) = double.ledger.transfers_for(row["order_id"])
    stored = payment_row(row["order_id"])
    assert stored["status"] == "SUCCEEDED" and stored["transfer_id"] == transfer["id"]
    assert transfer["destination"] == account and transfer["amount"] == AMOUNT


def test_a_retry_after_a_transfer_whose_answer_was_lost_looks_first_and_pays_once(
    services, double, new_card, payment_row, fresh_runner
):
    runner, account = fresh_runner()
    row = authorized(services, new_card(), payment_row)
    order_id = row["order_id"]
    # The transfer executes at Stripe, but only after the client gave up on it (2 s timeout).
    double.fail_matching(r"^POST /v1/transfers$", 1, "timeout", timeout_s=3)
    release = release_to(order_id, runner, account)
    assert not deliver(services, release, 1), "the lost answer makes the release transient"
    deadline = time.monotonic() + 10
    while not double.ledger.transfers_for(order_id) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(double.ledger.transfers_for(order_id)) == 1, "the request landed after the timeout"

    before = requests_seen(double)
    deliver_until_handled(services, release, 1)
    calls = requests_seen(double) - before
    assert calls[RETRIEVE] == 1 and calls[CAPTURE] == 0, f"the recorded capture is looked up: {calls}"
    assert calls[LIST_TRANSFERS] == 1 and calls[TRANSFER] == 0, f"the recorded transfer is found: {calls}"
    (transfer,) = double.ledger.transfers_for(order_id)
    stored = payment_row(order_id)
    assert stored["status"] == "SUCCEEDED" and stored["transfer_id"] == transfer["id"]


def test_a_transfer_recorded_as_started_by_a_holder_that_died_is_found_not_repeated(
    services, double, new_card, payment_row, fresh_runner, pg_connection, local_env
):
    """The holder recorded its transfer's intent, sent it, and died before any outcome was
    written: nothing says whether it landed. It did, under a key the retry does not use (a day
    later, Stripe has forgotten the key): only a lookup can find it."""
    runner, account = fresh_runner()
    row = authorized(services, new_card(), payment_row)
    order_id, payment_id = row["order_id"], str(row["payment_id"])
    pg_connection.run(
        "INSERT INTO stripe_money_calls (order_id, action, lease_token) VALUES (:o, 'transfer', 0)",
        o=order_id,
    )
    client = stripe.StripeClient(
        local_env["STRIPE_SECRET_KEY"], base_addresses={"api": double.url}, max_network_retries=0
    )
    landed = client.v1.transfers.create(
        params={
            "amount": AMOUNT,
            "currency": "sgd",
            "destination": account,
            "transfer_group": order_id,
            "metadata": {"order_id": order_id, "payment_id": payment_id},
        },
        options={"idempotency_key": f"a-dead-holders-key-long-forgotten:{order_id}"},
    )

    deliver_until_handled(services, release_to(order_id, runner, account), 1)
    assert [t["id"] for t in double.ledger.transfers_for(order_id)] == [landed.id], "paid once"
    assert payment_row(order_id)["transfer_id"] == landed.id
