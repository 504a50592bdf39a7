"""Regression tests for issue 16, items 1-3: money left inconsistent at Stripe after a race or a
transient Stripe failure, and a settlement pass (``reconciliation.reconcile``) that must find it.

Every check is made against Stripe's own state (the strict double's ledger, localstripe),
never against the service's locking internals, so the tests hold for the per-order lease and
the settlement audit as they did for the advisory lock and the final-payment sweep:

1. a revert in one container and a release in another whose database connection dies while
   its transfer is at Stripe: never a live transfer and a refund for one order;
2. a stray hold (a second PaymentIntent of a reverted order) survives (a) a webhook whose
   cancel failed and was redelivered, (b) a sweep that only reads the recorded PaymentIntent;
3. a stray hold on a final payment survives a sweep whose Stripe call failed once.

The stack's scheduler (reconciler, relay) and API (localstripe's webhooks) are stopped for the
module: each test decides which webhook arrives and when the settlement pass runs.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from contextlib import suppress
from typing import Any

import pytest
import stripe
from conftest import CARD_OK, Card, authorize_command, command, msk_event, named_database
from payments_core.adapters.services import Services
from payments_core.adapters.stripe_api.stripe_gateway import StripeApiGateway
from payments_core.config import Settings, get_settings
from payments_core.entrypoints.commands import handle_command_batch
from payments_core.usecases import reconciliation, webhooks
from webhook_helpers import payment_intent_event

from local.doubles.http_double import Answer
from local.doubles.strict_stripe import StrictStripe
from local.doubles.stripe_wire import form_params, nested, stripe_error
from local.stack import control as stack
from local.stack.settings import LocalSettings

pytestmark = pytest.mark.integration

AMOUNT = 1299
# How long the transfer may wait at the double for the racing revert's first delivery: long
# enough for a revert that does not wait for the release, shorter than the gateway's timeout.
TRANSFER_HELD_AT_MOST_S = 6.0
DELIVERIES = 8  # a record failing transiently is re-delivered, as the mapping does
SETTLEMENT_RUNS = 3
RECENT_S = 900
_CANCEL = r"^POST /v1/payment_intents/[^/]+/cancel$"


class RaceStripe(StrictStripe):
    """The strict double, plus what these races need:
    - ``hold_transfers()``: a transfer request waits at Stripe (before it executes) until
      ``let_transfers_land()`` or TRANSFER_HELD_AT_MOST_S; ``transfer_in_flight`` is set while
      one waits;
    - ``processing_for(order_id)``: that order's PaymentIntent is shown as ``processing`` (an
      asynchronous confirmation) and its cancel is refused as Stripe refuses it, until
      ``finish_processing()``; localstripe holds it (requires_capture) all along."""

    def __init__(self, upstream: str, *, validator: str | None = None) -> None:
        super().__init__(upstream, validator=validator)
        self.transfer_in_flight = threading.Event()
        self._transfer_gate: threading.Event | None = None
        self._processing_orders: set[str] = set()
        self._processing_ids: set[str] = set()

    def hold_transfers(self) -> None:
        self._transfer_gate = threading.Event()

    def let_transfers_land(self) -> None:
        if self._transfer_gate is not None:
            self._transfer_gate.set()

    def processing_for(self, order_id: str) -> None:
        self._processing_orders.add(order_id)

    def finish_processing(self) -> None:
        self._processing_orders.clear()
        self._processing_ids.clear()

    def respond(self, method: str, path: str, headers: list[tuple[str, str]], body: bytes) -> Answer:
        route = urllib.parse.urlsplit(path).path
        gate = self._transfer_gate
        if method == "POST" and route == "/v1/transfers" and gate is not None:
            self.transfer_in_flight.set()
            gate.wait(TRANSFER_HELD_AT_MOST_S)
        parts = route.strip("/").split("/")
        if method == "POST" and len(parts) == 4 and parts[3] == "cancel" and parts[2] in self._processing_ids:
            return stripe_error(
                400,
                "You cannot cancel this PaymentIntent because it has a status of processing.",
                code="payment_intent_unexpected_state",
            )
        answer = super().respond(method, path, headers, body)
        if not self._processing_orders or not route.startswith("/v1/payment_intents"):
            return answer
        if method == "POST" and route == "/v1/payment_intents" and answer[0] == 200:
            order_id = nested(form_params(body), "metadata").get("order_id")
            if order_id in self._processing_orders:
                self._processing_ids.add(json.loads(answer[2])["id"])
        return self._show_processing(answer)

    def _show_processing(self, answer: Answer) -> Answer:
        status, headers, raw = answer
        try:
            data = json.loads(raw)
        except ValueError:
            return answer
        for obj in data.get("data", []) if data.get("object") == "list" else [data]:
            if isinstance(obj, dict) and obj.get("id") in self._processing_ids:
                obj.update(status="processing", amount_capturable=0)
        return status, headers, json.dumps(data).encode()


@pytest.fixture(scope="module", autouse=True)
def quiet_stack() -> Iterator[None]:
    """No scheduled reconciler and no webhooks from localstripe during these tests (both would
    use healthy Stripe and hide or race what a test sets up); restarted afterwards."""
    paused = [name for name in ("scheduler", "api-gateway") if stack.is_running(name)]
    if paused:
        stack.down(paused)
    yield
    if paused:
        stack.up(paused)


@pytest.fixture
def double(local_env: dict[str, str]) -> Iterator[RaceStripe]:
    proxy = RaceStripe(local_env["STRIPE_API_BASE"], validator=local_env["STRIPE_MOCK_API_BASE"])
    proxy.start()
    yield proxy
    proxy.let_transfers_land()
    proxy.stop()


@pytest.fixture
def via_double(double: RaceStripe, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The service's settings with Stripe at the double, and the settlement pass due at once
    (also for the audit scheduled when a payment becomes final, which reads the environment)."""
    monkeypatch.setenv("AUDIT_BACKOFF_SECONDS", "0")
    get_settings.cache_clear()
    settings = dataclasses.replace(get_settings(), stripe_api_base=double.url, stripe_max_network_retries=0)
    return due_at_once(settings)


def due_at_once(settings: Settings) -> Settings:
    """Every uncertain payment is due for its settlement check now, and again at once after a
    check that failed or fixed something."""
    return dataclasses.replace(settings, audit_backoff_seconds=(0,), reconcile_batch_size=500)


@pytest.fixture
def container(
    make_services: Callable[..., Services], via_double: Settings, local_settings: LocalSettings
) -> Callable[..., Services]:
    """``container(name=None) -> Services``: one simulated Lambda container with its own
    database session(s) and the real Stripe gateway at the double. ``name`` tags its sessions
    (``application_name``) so a test can kill them."""

    def make(name: str | None = None) -> Services:
        db = None
        if name is not None:
            db = named_database(
                via_double, local_settings.postgres_port, name, timeout=via_double.db_timeout_seconds
            )
        services = make_services(db=db, stripe=StripeApiGateway(via_double))
        return dataclasses.replace(services, settings=via_double)

    return make


@pytest.fixture
def double_client(double: RaceStripe, local_env: dict[str, str]) -> Any:
    """A Stripe client at the double: what another process (the frontend, a duplicate create)
    does at Stripe, recorded in the double's ledger."""
    return stripe.StripeClient(
        local_env["STRIPE_SECRET_KEY"], base_addresses={"api": double.url}, max_network_retries=0
    )


def deliver(services: Services, cmd: dict[str, Any], offset: int) -> bool:
    """One delivery of a command as the event source mapping makes it; True when handled."""
    return not handle_command_batch(msk_event(cmd, first_offset=offset), None, services)["batchItemFailures"]


def deliver_until_handled(
    services: Services, cmd: dict[str, Any], offset: int, first: bool | None = None
) -> bool:
    handled = first if first is not None else deliver(services, cmd, offset)
    for _ in range(DELIVERIES - 1):
        if handled:
            return True
        time.sleep(1.0)
        handled = deliver(services, cmd, offset)
    return handled


def settle(services: Services, runs: int = SETTLEMENT_RUNS) -> list[dict[str, int]]:
    """The scheduled settlement pass, run as the scheduler would, a few times."""
    outcomes = []
    for run in range(runs):
        if run:
            time.sleep(1.0)
        outcomes.append(reconciliation.reconcile(services))
    return outcomes


def authorized(services: Services, card: Card, payment_row: Callable[[str], Any]) -> dict[str, Any]:
    order_id = str(uuid.uuid4())
    assert deliver(services, authorize_command(card, order_id=order_id, amount=AMOUNT), 0)
    row = payment_row(order_id)
    assert row is not None and row["status"] == "AUTHORIZED", row
    return dict(row)


def runner_release(order_id: str) -> dict[str, Any]:
    """A release paying the seeded runner (its account registered at the user-service stand-in)."""
    return command(
        "release_payment",
        order_id=order_id,
        runner_id="user_runner",
        runner_connect_account_id="acct_runner1",
    )


def hold_params(card: Card, order_id: str, payment_id: str) -> dict[str, Any]:
    """A hold for the order exactly as the service creates one (its metadata names the order)."""
    return {
        "amount": AMOUNT,
        "currency": "sgd",
        "customer": card.customer_id,
        "payment_method": card.payment_method_id,
        "capture_method": "manual",
        "confirm": True,
        "metadata": {"order_id": order_id, "payment_id": payment_id},
    }


def held_intents(localstripe_client: Any, card: Card, order_id: str) -> dict[str, str]:
    """Every PaymentIntent of the order at Stripe, by id: its status."""
    page = localstripe_client.v1.payment_intents.list(params={"customer": card.customer_id, "limit": 100})
    return {
        pi.id: pi.status
        for pi in page.data
        if (pi.to_dict().get("metadata") or {}).get("order_id") == order_id
    }


# ---- 1: a release whose connection dies while its transfer is at Stripe, and a revert ---------


def test_a_revert_racing_a_release_whose_connection_died_never_leaves_a_transfer_and_a_refund(
    container, double, new_card, payment_row, pg_connection
):
    """Issue 16, item 1. Container A releases (capture, then the runner's transfer, slow at
    Stripe); A's database sessions are killed while the transfer is in flight; container B
    reverts the same order meanwhile (the saga's revert and an HTTP-queued release sit on
    different partitions). Both commands are re-delivered until handled, the transfer lands,
    the settlement pass runs. Stripe must then hold a consistent outcome: REVERTED with the
    customer refunded and every transfer reversed, or SUCCEEDED with one live transfer and no
    refund; never a live transfer and a refund."""
    name_a = f"release-{uuid.uuid4().hex[:8]}"
    a, b = container(name_a), container()
    row = authorized(a, new_card(CARD_OK), payment_row)
    order_id, pi = row["order_id"], row["payment_intent_id"]
    release = runner_release(order_id)
    revert = command("revert_payment", order_id=order_id, reason="order cancelled")

    double.hold_transfers()
    release_handled: list[bool] = []
    releasing = threading.Thread(
        target=lambda: release_handled.append(deliver_until_handled(a, release, 1)), name="container-A"
    )
    releasing.start()
    try:
        assert double.transfer_in_flight.wait(30), "the release never reached its transfer"
        killed = pg_connection.run(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = :n", n=name_a
        )
        # (an implementation holding no session while Stripe works has none to lose)
        assert all(r[0] for r in killed or []), "container A's database session could not be killed"
        first = deliver(b, revert, 2)  # during the transfer, from the other container
    finally:
        double.let_transfers_land()
        releasing.join(120)
    revert_handled = deliver_until_handled(b, revert, 2, first=first)
    assert not releasing.is_alive()

    settle(container())
    status = payment_row(order_id)["status"]
    captured = double.ledger.captured(pi) or 0
    refunded = double.ledger.refunded(pi)
    transfers = double.ledger.transfers_for(order_id)
    live = [t["id"] for t in transfers if int(t["amount_reversed"]) < int(t["amount"])]
    seen = (
        f"payment {status}; Stripe: captured {captured}, refunded {refunded}, "
        f"transfers {[t['id'] for t in transfers]}, of which not reversed {live}"
    )
    assert not (live and refunded), (
        f"the runner is paid and the customer refunded: {seen} (the revert found no transfer while "
        "the release's was in flight, and nothing reversed it once it landed)"
    )
    if status == "REVERTED":
        assert captured == 0 or refunded == captured, f"REVERTED but not refunded in full: {seen}"
        assert not live, f"REVERTED but the runner keeps a transfer: {seen}"
    else:
        assert status == "SUCCEEDED", f"neither released nor reverted: {seen}"
        assert refunded == 0 and len(transfers) == 1 and live == [transfers[0]["id"]], seen
    assert release_handled == [True] and revert_handled, "both commands are answered in the end"


# ---- 2: a second hold of a reverted order ----------------------------------------------------


def _reverted_with_a_second_hold(
    services: Services,
    card: Card,
    payment_row: Callable[[str], Any],
    double_client: Any,
    localstripe_client: Any,
    second: str,
) -> tuple[dict[str, Any], str]:
    """A REVERTED payment whose recorded PaymentIntent is canceled, and a second hold of the
    same order (its metadata names the order) still on the card: created before the
    authorize (``older``) or landing after the revert (``newer``: a create still executing at
    Stripe when the revert looked)."""
    order_id, payment_id = str(uuid.uuid4()), str(uuid.uuid4())
    stray = None
    if second == "older":
        stray = double_client.v1.payment_intents.create(params=hold_params(card, order_id, payment_id)).id
    assert deliver(services, authorize_command(card, order_id=order_id, amount=AMOUNT), 0)
    row = payment_row(order_id)
    assert row["status"] == "AUTHORIZED"
    assert deliver(services, command("revert_payment", order_id=order_id, reason="order cancelled"), 1)
    if stray is None:
        stray = double_client.v1.payment_intents.create(params=hold_params(card, order_id, payment_id)).id
    row = payment_row(order_id)
    intents = held_intents(localstripe_client, card, order_id)
    assert row["status"] == "REVERTED" and row["payment_intent_id"] != stray, row
    assert intents == {row["payment_intent_id"]: "canceled", stray: "requires_capture"}, intents
    return row, stray


def test_a_stray_hold_whose_webhook_cancel_failed_is_canceled_after_the_redelivery(
    container, double, new_card, payment_row, double_client, localstripe_client
):
    """Issue 16, item 2 (a). Stripe reports the second hold of a reverted order; canceling it
    fails for that whole delivery (Stripe 5xx); Stripe redelivers the same event, then the
    settlement pass runs. The hold must end canceled at Stripe (it stays 7 days otherwise)."""
    services, card = container(), new_card(CARD_OK)
    row, stray = _reverted_with_a_second_hold(
        services, card, payment_row, double_client, localstripe_client, "newer"
    )
    event = payment_intent_event(
        "authorized", payment_intent_id=stray, order_id=row["order_id"], amount=AMOUNT
    )
    double.fail_next(1000, "refuse", match=_CANCEL)  # every cancel of this delivery fails
    with suppress(Exception):  # the API answers 500: Stripe will redeliver
        webhooks.apply_event(services, event)
    double.heal()
    with suppress(Exception):
        webhooks.apply_event(services, event)  # Stripe's redelivery of the same event
    settle(container())
    intents = held_intents(localstripe_client, card, row["order_id"])
    assert intents[stray] == "canceled", (
        f"the stray hold {stray} of REVERTED order {row['order_id']} is still {intents[stray]} after a "
        f"failed cancel, the webhook's redelivery and {SETTLEMENT_RUNS} settlement runs: {intents}"
    )
    assert payment_row(row["order_id"])["status"] == "REVERTED"


@pytest.mark.parametrize("second", ["older", "newer"])
def test_the_settlement_pass_cancels_every_hold_of_a_reverted_order(
    container, double, new_card, payment_row, double_client, localstripe_client, second
):
    """Issue 16, item 2 (b). No webhook came for the second hold. The recorded PaymentIntent
    is canceled; the settlement pass must find the other one by the order's metadata (not
    only the newest match) and cancel it."""
    services, card = container(), new_card(CARD_OK)
    row, stray = _reverted_with_a_second_hold(
        services, card, payment_row, double_client, localstripe_client, second
    )
    outcomes = settle(container())
    intents = held_intents(localstripe_client, card, row["order_id"])
    assert intents[stray] == "canceled", (
        f"the {second} second hold {stray} of REVERTED order {row['order_id']} is still "
        f"{intents[stray]} after {SETTLEMENT_RUNS} settlement runs (outcomes {outcomes}): {intents}"
    )
    assert all(status == "canceled" for status in intents.values()), intents


# ---- 3: a settlement check whose Stripe call failed ------------------------------------------


def test_a_stray_hold_is_canceled_by_the_run_after_one_whose_stripe_call_failed(
    container, double, new_card, payment_row, localstripe_client
):
    """Issue 16, item 3. Stripe answered the authorize with ``processing`` and refused to cancel
    it (as it does while processing), so the payment FAILED with its PaymentIntent recorded;
    the PaymentIntent then finished as a hold. The first settlement run finds Stripe failing
    (5xx); a later run must cancel the hold, not count the payment as checked."""
    services, card = container(), new_card(CARD_OK)
    order_id = str(uuid.uuid4())
    double.processing_for(order_id)
    deliver_until_handled(services, authorize_command(card, order_id=order_id, amount=AMOUNT), 0)
    double.finish_processing()
    row = payment_row(order_id)
    pi = row["payment_intent_id"]
    assert row["status"] in ("FAILED", "REVERTED") and pi, f"set-up: a final payment naming its hold: {row}"
    assert held_intents(localstripe_client, card, order_id) == {pi: "requires_capture"}

    double.fail_next(1000, "refuse")  # Stripe down for the whole first run
    first = reconciliation.reconcile(container())
    double.heal()
    assert held_intents(localstripe_client, card, order_id)[pi] == "requires_capture"
    later = settle(container(), runs=SETTLEMENT_RUNS - 1)
    intents = held_intents(localstripe_client, card, order_id)
    assert intents[pi] == "canceled", (
        f"the hold {pi} on {row['status']} order {order_id} is still {intents[pi]}: the run that met "
        f"Stripe failing ({first}) was the last to look; later runs: {later}"
    )
    assert payment_row(order_id)["status"] == row["status"]


def test_the_audit_settles_a_declined_payment_instead_of_waiting_on_it(
    new_card, authorize_handler, payment_row, make_services, pg_connection, monkeypatch
):
    """A declined PaymentIntent stays requires_payment_method: it moves no money unless we
    confirm it again, which we never do. The audit settles it (found by the crash drill: it
    used to answer "waiting" on every check, for ever)."""
    from conftest import CARD_DECLINED_ON_CHARGE

    monkeypatch.setenv("AUDIT_BACKOFF_SECONDS", "0")
    get_settings.cache_clear()
    cmd = authorize_command(new_card(CARD_DECLINED_ON_CHARGE))
    order_id = cmd["payload"]["order_id"]
    assert authorize_handler(msk_event(cmd)) == {"batchItemFailures": []}
    row = payment_row(order_id)
    assert row["status"] == "FAILED" and row["audit_due_at"] is not None, "a final payment is audited"
    services = make_services()
    outcomes = reconciliation.reconcile(
        dataclasses.replace(services, settings=due_at_once(services.settings))
    )
    assert outcomes.get("settled", 0) >= 1, outcomes
    assert payment_row(order_id)["audit_due_at"] is None, "settled: no longer uncertain"


def test_a_transfer_that_lands_after_the_audit_looked_is_still_reversed(
    container, double, new_card, payment_row, via_double, make_services
):
    """Found by the crash drill (seed 223874). A release's transfer is still at Stripe when its
    client gives up (the outcome is unknown); a revert refunds the customer; the audit looks
    before the transfer lands and finds none. The transfer then lands. The audit must not have
    called the payment settled while a money call of it could still land: a later run reverses
    the transfer."""
    impatient = dataclasses.replace(via_double, stripe_timeout_seconds=2.0)
    a = dataclasses.replace(make_services(stripe=StripeApiGateway(impatient)), settings=impatient)
    b = container()
    row = authorized(a, new_card(CARD_OK), payment_row)
    order_id, pi = row["order_id"], row["payment_intent_id"]
    release = runner_release(order_id)
    double.hold_transfers()
    try:
        assert not deliver(a, release, 1), "set-up: the release's transfer times out at the client"
        assert double.transfer_in_flight.is_set()
        assert deliver_until_handled(b, command("revert_payment", order_id=order_id, reason="cancelled"), 2)
        assert payment_row(order_id)["status"] == "REVERTED"
        before = settle(container(), runs=1)  # the transfer is still in flight at Stripe
        assert not double.ledger.transfers_for(order_id), "set-up: the audit looked before it landed"
    finally:
        double.let_transfers_land()
    deadline = time.monotonic() + TRANSFER_HELD_AT_MOST_S + 5
    while not double.ledger.transfers_for(order_id) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert double.ledger.transfers_for(order_id), "set-up: the held transfer landed"
    after = settle(container(), runs=2)
    transfers = double.ledger.transfers_for(order_id)
    live = [t["id"] for t in transfers if int(t["amount_reversed"]) < int(t["amount"])]
    assert double.ledger.refunded(pi) == double.ledger.captured(pi)
    assert not live, (
        f"the runner keeps transfer(s) {live} of a refunded order: the audit settled the payment "
        f"while its transfer was in doubt (runs before it landed: {before}; after: {after})"
    )


def test_a_transfer_the_audit_finds_for_a_released_order_is_announced(
    container, double, new_card, payment_row, via_double, make_services, outbox_rows
):
    """Found by the crash drill (seed 808234). A release's transfer is at Stripe when its
    client gives up; the transfer lands. The audit, before any redelivery of the release, finds
    the capture (the status becomes SUCCEEDED and is announced with no transfer, none being
    known yet) and then the transfer, which it records. The saga's last word on the order must
    name that transfer: an operator told the runner was not paid would pay them again."""
    impatient = dataclasses.replace(via_double, stripe_timeout_seconds=2.0)
    a = dataclasses.replace(make_services(stripe=StripeApiGateway(impatient)), settings=impatient)
    row = authorized(a, new_card(CARD_OK), payment_row)
    order_id = row["order_id"]
    double.hold_transfers()
    try:
        assert not deliver(a, runner_release(order_id), 1), "set-up: the transfer times out at the client"
        assert double.transfer_in_flight.is_set()
    finally:
        double.let_transfers_land()
    deadline = time.monotonic() + TRANSFER_HELD_AT_MOST_S + 5
    while not double.ledger.transfers_for(order_id) and time.monotonic() < deadline:
        time.sleep(0.2)
    (transfer,) = double.ledger.transfers_for(order_id)
    outcomes = settle(container())
    assert payment_row(order_id)["transfer_id"] == transfer["id"], outcomes
    released = [
        json.loads(r["envelope"]) for r in outbox_rows(order_id) if r["event_type"] == "payment.released"
    ]
    assert released, f"no payment.released for {order_id}: {outcomes}"
    last = released[-1]
    assert last["payload"]["status"] == "SUCCEEDED"
    assert last["payload"].get("transfer_id") == transfer["id"], (
        f"the last payment.released of {order_id} names transfer {last['payload'].get('transfer_id')}, "
        f"Stripe holds {transfer['id']} (audit runs: {outcomes})"
    )
