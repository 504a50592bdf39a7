"""Who gets paid is not the caller's choice: a release's destination is checked against
campusG's user service (the local stand-in) and Stripe (localstripe's Connect accounts) before
anything is captured. Releases run through the command batch on real PostgreSQL, Kafka and
localstripe; transfers land in stripe-mock (localstripe has none)."""

from __future__ import annotations

import dataclasses
import json
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from conftest import TransfersElsewhere, authorized_payment, command, msk_event
from payments_core.adapters.stripe_api.stripe_gateway import StripeApiGateway
from payments_core.adapters.user_service import HttpUserDirectory
from payments_core.config import get_settings
from payments_core.entrypoints.commands import handle_command_batch
from payments_core.observability import metrics

pytestmark = pytest.mark.integration

NO_FAILURES = {"batchItemFailures": []}
REFUSED = "PAYOUT_DESTINATION_REFUSED"


def _send(url: str, method: str, body: dict[str, Any]) -> dict[str, Any]:
    data = json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    request = urllib.request.Request(url, data=data, method=method, headers=headers)  # noqa: S310
    with urllib.request.urlopen(request, timeout=5) as answer:  # noqa: S310 - the local stand-in
        return json.loads(answer.read())


@pytest.fixture
def user_service(local_env: dict[str, str]) -> Iterator[str]:
    url = local_env["USER_SERVICE_URL"]
    yield url
    _send(f"{url}/_outage", "POST", {"status": None})


@pytest.fixture
def register_runner(user_service: str, localstripe_client: Any) -> Callable[..., tuple[str, str]]:
    """``register_runner(transfers=True, customer=None) -> (runner_id, account_id)``: a fresh
    Connect account at localstripe, registered on the user service for a fresh runner as
    campusG's onboarding does (PUT connect-account)."""

    def register(transfers: bool = True, customer: str | None = None) -> tuple[str, str]:
        params: dict[str, Any] = {"type": "express", "country": "SG"}
        if transfers:
            params["capabilities"] = {"transfers": {"requested": True}}
        account = localstripe_client.v1.accounts.create(params=params).id
        runner = f"user_runner_{uuid.uuid4().hex[:10]}"
        if customer:
            _send(f"{user_service}/_users/{runner}", "PUT", {"stripeCustomerId": customer})
        _send(
            f"{user_service}/api/user/{runner}/connect-account", "PUT", {"stripe_connect_account_id": account}
        )
        return runner, account

    return register


@pytest.fixture
def paying_stripe(
    stripe_mock_gateway: Callable[[str], StripeApiGateway], local_env: dict[str, str]
) -> TransfersElsewhere:
    return TransfersElsewhere(
        StripeApiGateway(get_settings()), stripe_mock_gateway(local_env["STRIPE_MOCK_API_BASE"])
    )


@pytest.fixture
def authorized(new_card, authorize_handler, payment_row) -> dict[str, Any]:
    return authorized_payment(new_card, authorize_handler, payment_row)


def _release(row: dict[str, Any], runner: str | None, account: str | None) -> dict[str, Any]:
    payload = {"order_id": row["order_id"], "runner_id": runner}
    if account is not None:
        payload["runner_connect_account_id"] = account
    return command("release_payment", **payload)


def _failed(published_events: Callable, order_id: str) -> dict[str, Any]:
    (event,) = [e for e in published_events(order_id) if e["type"] == "payment.failed"]
    return event["payload"]


def _assert_nothing_moved(
    stripe: TransfersElsewhere, localstripe_client: Any, row: dict[str, Any], payment_row
) -> None:
    assert stripe.calls["capture"] == 0 and stripe.calls["transfer"] == 0, stripe.calls
    assert (
        localstripe_client.v1.payment_intents.retrieve(row["payment_intent_id"]).status == "requires_capture"
    )
    stored = payment_row(row["order_id"])
    assert stored["status"] == "AUTHORIZED", "the hold stays as it is: reverting it is the saga's call"
    assert stored["runner_id"] is None and stored["runner_connect_account_id"] is None, "nothing recorded"


def test_an_account_that_is_not_the_runners_is_refused_and_nothing_moves(
    authorized, make_services, paying_stripe, payment_row, published_events, localstripe_client
):
    metrics.clear_metrics()
    # acct_runner2 is a real, connected account at Stripe, just not user_runner's (acct_runner1)
    release = _release(authorized, "user_runner", "acct_runner2")
    assert handle_command_batch(msk_event(release), None, make_services(stripe=paying_stripe)) == NO_FAILURES

    failed = _failed(published_events, authorized["order_id"])
    assert failed["error"] == REFUSED and "not the runner's Connect account" in failed["message"]
    assert failed["status"] == "AUTHORIZED"
    _assert_nothing_moved(paying_stripe, localstripe_client, authorized, payment_row)
    assert metrics.metric_set["PayoutDestinationRefused"]["Value"] == [1.0]
    metrics.clear_metrics()


def test_the_runners_own_account_is_paid_once(
    authorized, make_services, paying_stripe, payment_row, published_events, register_runner
):
    runner, account = register_runner()
    release = _release(authorized, runner, account)
    for offset in (0, 1):  # a copy after success re-announces, never pays again
        assert (
            handle_command_batch(
                msk_event(release, first_offset=offset), None, make_services(stripe=paying_stripe)
            )
            == NO_FAILURES
        )
    assert paying_stripe.calls["capture"] == 1 and paying_stripe.calls["transfer"] == 1, paying_stripe.calls
    stored = payment_row(authorized["order_id"])
    assert stored["status"] == "SUCCEEDED" and stored["transfer_id"].startswith("tr_")
    assert stored["runner_connect_account_id"] == account and stored["transferred_at"] is not None
    released = [e for e in published_events(authorized["order_id"]) if e["type"] == "payment.released"]
    assert {e["payload"]["status"] for e in released} == {"SUCCEEDED"}


@pytest.mark.parametrize("how", ["clerk user id", "stripe customer"])
def test_a_runner_who_is_the_orders_customer_is_refused(
    how,
    new_card,
    authorize_handler,
    make_services,
    paying_stripe,
    payment_row,
    published_events,
    localstripe_client,
    register_runner,
):
    row = authorized_payment(new_card, authorize_handler, payment_row)
    if how == "clerk user id":
        _, account = register_runner()
        runner = row["clerk_user_id"]  # the customer (user_2abc) naming an account as runner
    else:
        runner, account = register_runner(customer=row["stripe_customer_id"])
    assert (
        handle_command_batch(
            msk_event(_release(row, runner, account)), None, make_services(stripe=paying_stripe)
        )
        == NO_FAILURES
    )
    failed = _failed(published_events, row["order_id"])
    assert failed["error"] == REFUSED and "customer" in failed["message"]
    _assert_nothing_moved(paying_stripe, localstripe_client, row, payment_row)


def test_an_unknown_runner_and_an_account_that_cannot_receive_transfers_are_refused(
    new_card,
    authorize_handler,
    make_services,
    paying_stripe,
    payment_row,
    published_events,
    localstripe_client,
    register_runner,
):
    unknown = authorized_payment(new_card, authorize_handler, payment_row)
    release = _release(unknown, f"user_nobody_{uuid.uuid4().hex[:8]}", "acct_runner1")
    assert handle_command_batch(msk_event(release), None, make_services(stripe=paying_stripe)) == NO_FAILURES
    assert "unknown" in _failed(published_events, unknown["order_id"])["message"]

    inactive = authorized_payment(new_card, authorize_handler, payment_row)
    runner, account = register_runner(transfers=False)
    release = _release(inactive, runner, account)
    assert handle_command_batch(msk_event(release), None, make_services(stripe=paying_stripe)) == NO_FAILURES
    failed = _failed(published_events, inactive["order_id"])
    assert failed["error"] == REFUSED and "cannot receive transfers" in failed["message"]
    for row in (unknown, inactive):
        _assert_nothing_moved(paying_stripe, localstripe_client, row, payment_row)


def test_a_release_naming_no_account_captures_and_pays_nobody(
    authorized, make_services, paying_stripe, payment_row, user_service
):
    _send(f"{user_service}/_outage", "POST", {"status": 503})  # not even asked
    release = _release(authorized, "user_runner", None)
    assert handle_command_batch(msk_event(release), None, make_services(stripe=paying_stripe)) == NO_FAILURES
    assert paying_stripe.calls["capture"] == 1 and paying_stripe.calls["transfer"] == 0
    stored = payment_row(authorized["order_id"])
    assert stored["status"] == "SUCCEEDED" and stored["transfer_id"] is None


def test_a_user_service_that_is_down_is_transient_then_the_release_completes(
    authorized,
    make_services,
    paying_stripe,
    payment_row,
    published_events,
    localstripe_client,
    user_service,
    local_env,
):
    release = _release(authorized, "user_runner", "acct_runner1")
    _send(f"{user_service}/_outage", "POST", {"status": 503})
    first = handle_command_batch(
        msk_event(release, first_offset=3), None, make_services(stripe=paying_stripe)
    )
    assert first["batchItemFailures"], "re-delivered, not refused"
    # connection refused: a user service that is not there at all
    closed = dataclasses.replace(get_settings(), user_service_url="http://127.0.0.1:9")
    second = handle_command_batch(
        msk_event(release, first_offset=3),
        None,
        make_services(stripe=paying_stripe, users=HttpUserDirectory(closed)),
    )
    assert second["batchItemFailures"]
    _assert_nothing_moved(paying_stripe, localstripe_client, authorized, payment_row)
    assert not [
        e for e in published_events(authorized["order_id"], settle=0.5) if e["type"] != "payment.authorized"
    ]

    _send(f"{user_service}/_outage", "POST", {"status": None})
    assert (
        handle_command_batch(msk_event(release, first_offset=3), None, make_services(stripe=paying_stripe))
        == NO_FAILURES
    )
    stored = payment_row(authorized["order_id"])
    assert stored["status"] == "SUCCEEDED" and stored["transfer_id"]
    assert paying_stripe.calls["capture"] == 1 and paying_stripe.calls["transfer"] == 1


def test_payout_velocity_above_the_limit_is_flagged_not_blocked(
    new_card, authorize_handler, make_services, paying_stripe, payment_row, register_runner
):
    runner, account = register_runner()
    metrics.clear_metrics()
    for n in range(2):
        row = authorized_payment(new_card, authorize_handler, payment_row)
        services = make_services(stripe=paying_stripe)
        services.settings = dataclasses.replace(services.settings, payout_velocity_max_per_hour=1)
        assert handle_command_batch(msk_event(_release(row, runner, account)), None, services) == NO_FAILURES
        assert payment_row(row["order_id"])["transfer_id"], "the payout is made regardless"
        flagged = metrics.metric_set.get("PayoutVelocityHigh", {}).get("Value")
        assert flagged == ([1.0] if n == 1 else None), (n, flagged)
    metrics.clear_metrics()


def test_stripes_verdict_on_an_account_is_kept_for_a_while_then_read_again(
    new_card,
    authorize_handler,
    make_services,
    paying_stripe,
    payment_row,
    published_events,
    localstripe_client,
    register_runner,
    pg_connection,
):
    """Issue 19: a release to an account Stripe called able to receive transfers within
    PAYOUT_ACCOUNT_CHECK_TTL_SECONDS reads nothing from Stripe; a verdict older than that, or a
    negative one, is read again, and an account that lost its transfers capability is then
    refused with nothing captured."""
    runner, account = register_runner()

    def release_one() -> dict[str, Any]:
        row = authorized_payment(new_card, authorize_handler, payment_row)
        batch = handle_command_batch(
            msk_event(_release(row, runner, account)), None, make_services(stripe=paying_stripe)
        )
        assert batch == NO_FAILURES
        return row

    for _ in range(2):
        assert payment_row(release_one()["order_id"])["transfer_id"]
    assert paying_stripe.calls["connected_account"] == 1, "the second release trusted the kept verdict"
    kept = pg_connection.run(
        "SELECT transfers_capability, payouts_enabled FROM connected_accounts WHERE account_id = :a",
        a=account,
    )
    assert kept == [["active", True]]

    localstripe_client.v1.accounts.update(
        account, params={"capabilities": {"transfers": {"requested": False}}}
    )
    pg_connection.run(
        "UPDATE connected_accounts SET verified_at = now() - interval '2 hours' WHERE account_id = :a",
        a=account,
    )
    captures = paying_stripe.calls["capture"]
    stale = release_one()
    assert paying_stripe.calls["connected_account"] == 2, "a verdict past its hour is read again"
    failed = _failed(published_events, stale["order_id"])
    assert failed["error"] == REFUSED and "cannot receive transfers" in failed["message"]
    assert (
        paying_stripe.calls["capture"] == captures
        and payment_row(stale["order_id"])["status"] == "AUTHORIZED"
    )

    release_one()
    assert paying_stripe.calls["connected_account"] == 3, "a negative verdict is never trusted"
