"""The strict Stripe double (local/doubles/strict_stripe.py) behaves as Stripe does where localstripe
is lenient, and the service recovers from what Stripe really answers (issue 12, item 4).

The first group checks the double itself against localstripe and stripe-mock. The second drives
the service's own use cases (the authorize function's batch handler with the real Stripe
gateway pointed at the double): Stripe saved a 500 for a key, so a retry with that key gets the
same 500 for a day; the only way out is to look the object up and, if it is not there, retry
with a new key. With one fixed key per payment and action, those tests fail.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import stripe
from conftest import CARD_OK, Card, authorize_command, command, msk_event
from payments_core.adapters.services import Services
from payments_core.adapters.stripe_api.stripe_gateway import StripeApiGateway
from payments_core.config import get_settings
from payments_core.entrypoints.commands import handle_command_batch

from local.doubles.strict_stripe import StrictStripe

pytestmark = pytest.mark.integration

# How many times a failing record is handed back (the mapping re-delivers it): more than
# enough for a recovery that takes one lookup and one new key.
REDELIVERIES = 4


@pytest.fixture
def double(local_env: dict[str, str]) -> Iterator[StrictStripe]:
    proxy = StrictStripe(local_env["STRIPE_API_BASE"], validator=local_env["STRIPE_MOCK_API_BASE"]).start()
    yield proxy
    proxy.stop()


@pytest.fixture
def client(double: StrictStripe, local_env: dict[str, str]) -> Any:
    return stripe.StripeClient(
        local_env["STRIPE_SECRET_KEY"], base_addresses={"api": double.url}, max_network_retries=0
    )


def _hold_params(card: Card, order_id: str, amount: int = 1299) -> dict[str, Any]:
    return {
        "amount": amount,
        "currency": "sgd",
        "customer": card.customer_id,
        "payment_method": card.payment_method_id,
        "capture_method": "manual",
        "confirm": True,
        "metadata": {"order_id": order_id},
    }


# ---- the double -----------------------------------------------------------------------------------


def test_same_key_same_parameters_replays_the_first_answer(
    client: Any, new_card: Callable[[str], Card], double: StrictStripe
) -> None:
    card, order_id = new_card(CARD_OK), str(uuid.uuid4())
    first = client.v1.payment_intents.create(
        params=_hold_params(card, order_id), options={"idempotency_key": "k-same"}
    )
    again = client.v1.payment_intents.create(
        params=_hold_params(card, order_id), options={"idempotency_key": "k-same"}
    )
    assert again.id == first.id
    assert again.last_response.headers.get("Idempotent-Replayed") == "true"
    assert double.ledger.intents_by_order[order_id] == [first.id]
    # localstripe's amount fields are filled in as Stripe fills them
    assert first.amount_capturable == 1299 and first.amount_received == 0


def test_same_key_other_parameters_is_an_idempotency_error(
    client: Any, new_card: Callable[[str], Card], double: StrictStripe
) -> None:
    card, order_id = new_card(CARD_OK), str(uuid.uuid4())
    client.v1.payment_intents.create(
        params=_hold_params(card, order_id), options={"idempotency_key": "k-other"}
    )
    with pytest.raises(stripe.IdempotencyError) as raised:
        client.v1.payment_intents.create(
            params=_hold_params(card, order_id, amount=1300), options={"idempotency_key": "k-other"}
        )
    assert raised.value.http_status == 400
    assert raised.value.error is not None and raised.value.error.type == "idempotency_error"
    assert "same parameters" in str(raised.value.user_message)
    with pytest.raises(stripe.IdempotencyError, match="same endpoint"):
        client.v1.transfers.create(
            params={"amount": 100, "currency": "sgd", "destination": "acct_x"},
            options={"idempotency_key": "k-other"},
        )
    assert len(double.ledger.intents_by_order[order_id]) == 1


def test_a_saved_500_is_replayed_for_the_same_key_and_a_new_key_acts(
    client: Any, new_card: Callable[[str], Card], double: StrictStripe
) -> None:
    card, order_id = new_card(CARD_OK), str(uuid.uuid4())
    double.fail_next(1, "error", match=r"^POST /v1/payment_intents$")
    for _ in range(3):
        with pytest.raises(stripe.APIError) as raised:
            client.v1.payment_intents.create(
                params=_hold_params(card, order_id), options={"idempotency_key": "k-500"}
            )
        assert raised.value.http_status == 500
    # the request was executed once (Stripe acted, then failed): its PaymentIntent exists
    assert len(double.ledger.intents_by_order[order_id]) == 1
    assert double.strict.saved_500 == 1 and double.strict.replayed_500 == 2


def test_a_key_poisoned_before_any_effect_creates_nothing(
    client: Any, new_card: Callable[[str], Card], double: StrictStripe
) -> None:
    card, order_id = new_card(CARD_OK), str(uuid.uuid4())
    double.fail_next(1, "error_before_effect", match=r"^POST /v1/payment_intents$")
    for _ in range(2):
        with pytest.raises(stripe.APIError):
            client.v1.payment_intents.create(
                params=_hold_params(card, order_id), options={"idempotency_key": "k-p"}
            )
    assert order_id not in double.ledger.intents_by_order
    created = client.v1.payment_intents.create(
        params=_hold_params(card, order_id), options={"idempotency_key": "k-p2"}
    )
    assert created.status == "requires_capture"


def test_a_lost_answer_is_replayed_truthfully(
    client: Any, new_card: Callable[[str], Card], double: StrictStripe
) -> None:
    card, order_id = new_card(CARD_OK), str(uuid.uuid4())
    double.fail_next(1, "lose", match=r"^POST /v1/payment_intents$")
    with pytest.raises(stripe.APIError):
        client.v1.payment_intents.create(
            params=_hold_params(card, order_id), options={"idempotency_key": "k-lost"}
        )
    again = client.v1.payment_intents.create(
        params=_hold_params(card, order_id), options={"idempotency_key": "k-lost"}
    )
    assert double.ledger.intents_by_order[order_id] == [again.id]


def test_transfers_and_reversals_as_stripe_shapes_them(client: Any, double: StrictStripe) -> None:
    group = str(uuid.uuid4())
    params = {
        "amount": 1000,
        "currency": "sgd",
        "destination": "acct_runner",
        "transfer_group": group,
        "metadata": {"order_id": group},
    }
    transfer = client.v1.transfers.create(params=params, options={"idempotency_key": f"t-{group}"})
    assert (
        transfer.id.startswith("tr_") and transfer.transfer_group == group and transfer.amount_reversed == 0
    )
    other = client.v1.transfers.create(params={**params, "transfer_group": "elsewhere"})
    listed = client.v1.transfers.list(params={"transfer_group": group})
    assert [t.id for t in listed.data] == [transfer.id] and other.id not in [t.id for t in listed.data]
    reversal = client.v1.transfers.reversals.create(transfer.id, params={"amount": 400})
    assert reversal.object == "transfer_reversal" and reversal.transfer == transfer.id
    with pytest.raises(stripe.InvalidRequestError, match="greater than the amount remaining"):
        client.v1.transfers.reversals.create(transfer.id, params={"amount": 700})
    client.v1.transfers.reversals.create(transfer.id)  # the rest
    reread = client.v1.transfers.retrieve(transfer.id)
    assert reread.reversed is True and reread.amount_reversed == 1000
    assert double.ledger.transfers_for(group)[0]["reversed"] is True
    with pytest.raises(stripe.InvalidRequestError, match="destination"):  # stripe-mock's schema
        client.v1.transfers.create(params={"amount": 1000, "currency": "sgd"})
    with pytest.raises(stripe.InvalidRequestError, match="No such transfer"):
        client.v1.transfers.retrieve("tr_unknown")


def test_refunds_never_exceed_what_was_captured(
    client: Any, new_card: Callable[[str], Card], double: StrictStripe
) -> None:
    card, order_id = new_card(CARD_OK), str(uuid.uuid4())
    intent = client.v1.payment_intents.create(params=_hold_params(card, order_id, amount=2000))
    captured = client.v1.payment_intents.capture(intent.id, params={"amount_to_capture": 1500})
    assert captured.amount_received == 1500
    with pytest.raises(stripe.InvalidRequestError, match="greater than unrefunded amount"):
        client.v1.refunds.create(params={"payment_intent": intent.id, "amount": 2000})
    client.v1.refunds.create(params={"payment_intent": intent.id, "amount": 1500})
    with pytest.raises(stripe.InvalidRequestError) as raised:
        client.v1.refunds.create(params={"payment_intent": intent.id, "amount": 1})
    assert raised.value.code == "charge_already_refunded"
    assert double.ledger.refunded(intent.id) == 1500
    # Stripe lists refunds by charge or PaymentIntent, never by metadata
    with pytest.raises(stripe.InvalidRequestError, match="validation"):
        client.v1.refunds.list(params={"metadata": {"order_id": order_id}})
    assert client.v1.refunds.list(params={"payment_intent": intent.id}).data


def test_latency_is_added_to_every_answer(local_env: dict[str, str]) -> None:
    proxy = StrictStripe(local_env["STRIPE_API_BASE"], latency_ms=300).start()
    try:
        client = stripe.StripeClient(local_env["STRIPE_SECRET_KEY"], base_addresses={"api": proxy.url})
        started = time.monotonic()
        client.v1.customers.create(params={"email": "latency@campus.test"})
        assert time.monotonic() - started >= 0.3
    finally:
        proxy.stop()


# ---- the service against Stripe's real replay -----------------------------------------------------


@pytest.fixture
def service_via_double(
    double: StrictStripe, make_services: Callable[..., Services], lambda_context: Callable[..., Any]
) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """``run(command) -> batch response``: the authorize function's batch handler with the real
    Stripe gateway talking to the strict double."""
    settings = dataclasses.replace(get_settings(), stripe_api_base=double.url, stripe_max_network_retries=0)
    services = make_services(stripe=StripeApiGateway(settings))
    context = lambda_context("authorize_payment")

    def run(cmd: dict[str, Any]) -> dict[str, Any]:
        return handle_command_batch(msk_event(cmd), context, services)

    return run


def _until_handled(run: Callable[[dict[str, Any]], dict[str, Any]], cmd: dict[str, Any]) -> int:
    """Deliver a command as the mapping does until it is handled; returns the deliveries."""
    for delivery in range(1, REDELIVERIES + 1):
        if not run(cmd).get("batchItemFailures"):
            return delivery
    return REDELIVERIES + 1


def _authorized(
    run: Callable[[dict[str, Any]], dict[str, Any]], card: Card, payment_row: Callable[[str], Any]
) -> dict[str, Any]:
    order_id = str(uuid.uuid4())
    assert _until_handled(run, authorize_command(card, order_id=order_id)) == 1
    row = payment_row(order_id)
    assert row is not None and row["status"] == "AUTHORIZED"
    return dict(row)


def _release(row: dict[str, Any], account: str = "acct_runner1") -> dict[str, Any]:
    return command(
        "release_payment",
        payment_id=str(row["payment_id"]),
        runner_id="user_runner",
        runner_connect_account_id=account,
    )


def test_authorize_recovers_after_stripe_saved_a_500_for_its_create(
    service_via_double: Any, new_card: Callable[[str], Card], double: StrictStripe, payment_row: Any
) -> None:
    """Stripe executed the create, then answered 500 and saved it: the retry must find the
    PaymentIntent (by the order's metadata) instead of replaying the key."""
    order_id = str(uuid.uuid4())
    double.fail_next(1, "error", match=r"^POST /v1/payment_intents$")
    deliveries = _until_handled(service_via_double, authorize_command(new_card(CARD_OK), order_id=order_id))
    row = payment_row(order_id)
    assert deliveries <= REDELIVERIES, f"authorize never recovered from the saved 500: {row}"
    assert row["status"] == "AUTHORIZED"
    assert double.ledger.intents_by_order[order_id] == [row["payment_intent_id"]]


def test_authorize_recovers_when_stripe_saved_a_500_before_creating_anything(
    service_via_double: Any, new_card: Callable[[str], Card], double: StrictStripe, payment_row: Any
) -> None:
    """The key is poisoned for a day and no PaymentIntent exists: after looking (nothing
    found), the attempt must move on to a new key. Fails with one fixed key per order."""
    order_id = str(uuid.uuid4())
    double.fail_next(1, "error_before_effect", match=r"^POST /v1/payment_intents$")
    deliveries = _until_handled(service_via_double, authorize_command(new_card(CARD_OK), order_id=order_id))
    row = payment_row(order_id)
    assert deliveries <= REDELIVERIES, (
        f"authorize still failing after {REDELIVERIES} deliveries: every retry re-sent the poisoned "
        f"key and got Stripe's saved 500 again (replayed {double.strict.replayed_500} times); row {row['status']}"
    )
    assert row["status"] == "AUTHORIZED"
    assert len(double.ledger.intents_by_order[order_id]) == 1


def test_release_recovers_after_stripe_saved_a_500_for_its_transfer(
    service_via_double: Any, new_card: Callable[[str], Card], double: StrictStripe, payment_row: Any
) -> None:
    """The transfer was made, then Stripe answered 500 and saved it: the retry must find the
    transfer by its transfer_group, record it, and never transfer twice."""
    row = _authorized(service_via_double, new_card(CARD_OK), payment_row)
    double.fail_next(1, "error", match=r"^POST /v1/transfers$")
    deliveries = _until_handled(service_via_double, _release(row))
    after = payment_row(row["order_id"])
    transfers = double.ledger.transfers_for(row["order_id"])
    assert deliveries <= REDELIVERIES, (
        f"release still failing after {REDELIVERIES} deliveries: the transfer's fixed key replays "
        f"Stripe's saved 500 (replayed {double.strict.replayed_500} times); payment is {after['status']}, "
        f"Stripe holds transfers {[t['id'] for t in transfers]} for the order"
    )
    assert after["status"] == "SUCCEEDED"
    assert [t["id"] for t in transfers] == [after["transfer_id"]]


def test_release_with_another_runner_account_finds_the_earlier_transfer(
    service_via_double: Any, new_card: Callable[[str], Card], double: StrictStripe, payment_row: Any
) -> None:
    """The transfer's answer was lost (Stripe made it, then answered 500 and saved that); a
    release naming another connected account follows (the saga corrected it). The service
    must look the transfer up by transfer_group, never record a failed transfer while Stripe
    holds one, and never pay a second account."""
    row = _authorized(service_via_double, new_card(CARD_OK), payment_row)
    double.fail_next(1, "lose", match=r"^POST /v1/transfers$")
    # The saved 500 is followed by the lookup, which finds the transfer within the delivery.
    assert _until_handled(service_via_double, _release(row, "acct_runner1")) == 1
    _until_handled(service_via_double, _release(row, "acct_runner2"))
    after = payment_row(row["order_id"])
    transfers = double.ledger.transfers_for(row["order_id"])
    assert len(transfers) == 1
    assert after["transfer_id"] == transfers[0]["id"], (
        f"Stripe holds transfer {transfers[0]['id']} but the payment records transfer_id="
        f"{after['transfer_id']} and transfer_failure={after['transfer_failure']!r} "
        f"(idempotency errors seen: {double.strict.idempotency_errors})"
    )


def test_revert_recovers_after_stripe_saved_a_500_for_its_refund(
    service_via_double: Any, new_card: Callable[[str], Card], double: StrictStripe, payment_row: Any
) -> None:
    """The refund was made, then Stripe answered 500 and saved it: the retry must find the
    refund (by the PaymentIntent) and finish the revert, refunding once."""
    row = _authorized(service_via_double, new_card(CARD_OK), payment_row)
    assert _until_handled(service_via_double, _release(row)) == 1
    double.fail_next(1, "error", match=r"^POST /v1/refunds$")
    revert = command("revert_payment", payment_id=str(row["payment_id"]), reason="order cancelled")
    deliveries = _until_handled(service_via_double, revert)
    after = payment_row(row["order_id"])
    pi = row["payment_intent_id"]
    assert deliveries <= REDELIVERIES, (
        f"revert still failing after {REDELIVERIES} deliveries: the refund's fixed key replays Stripe's "
        f"saved 500; payment is {after['status']}, Stripe refunded {double.ledger.refunded(pi)} of {pi}"
    )
    assert after["status"] == "REVERTED"
    assert len(double.ledger.refunds[pi]) == 1
    assert all(t["reversed"] for t in double.ledger.transfers_for(row["order_id"]))
