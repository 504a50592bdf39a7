"""The gateway's lookups (issue 19): each list is bounded by ``created``, and a money call makes
its lookup first only when an earlier attempt of it may exist. A fake stripe-python client
records every request; nothing reaches Stripe."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest
from payments_core.adapters.stripe_api.stripe_gateway import StripeApiGateway, attempted_before
from payments_core.adapters.stripe_api.stripe_lookups import CREATED_BOUND_SLACK
from payments_core.config import get_settings
from payments_core.domain.payment import Payment, PaymentStatus

CREATED = datetime(2026, 12, 3, 1, 0, tzinfo=UTC)
SINCE = int((CREATED - CREATED_BOUND_SLACK).timestamp())


def _payment(created_at: datetime | None = CREATED) -> Payment:
    return Payment(
        payment_id="5b1a8a4e-4b7e-4d0e-9d53-6c5f0c3c2a11",
        order_id="order-1",
        status=PaymentStatus.AUTHORIZED,
        amount_cents=1299,
        currency="sgd",
        payment_intent_id="pi_123",
        stripe_customer_id="cus_1",
        created_at=created_at,
    )


def _page(*objects: dict[str, Any]) -> Any:
    return SimpleNamespace(
        data=[SimpleNamespace(id=o["id"], to_dict=lambda o=o: o) for o in objects], has_more=False
    )


class _Resource:
    def __init__(self, name: str, requests: list[tuple[str, Any]], listed: list[dict[str, Any]]) -> None:
        self._name = name
        self._requests = requests
        self._listed = listed

    def list(self, params: dict[str, Any]) -> Any:
        self._requests.append((f"{self._name}.list", dict(params)))
        return _page(*self._listed)

    def create(self, params: dict[str, Any], options: dict[str, Any]) -> Any:
        self._requests.append((f"{self._name}.create", options["idempotency_key"]))
        return SimpleNamespace(id=f"{self._name}_new")

    def retrieve(self, object_id: str) -> Any:
        self._requests.append((f"{self._name}.retrieve", object_id))
        return {"id": object_id, "status": "requires_capture", "object": "payment_intent"}

    def capture(self, object_id: str, params: dict[str, Any], options: dict[str, Any]) -> Any:
        self._requests.append((f"{self._name}.capture", options["idempotency_key"]))
        return {"id": object_id, "status": "succeeded", "object": "payment_intent"}


class _Client:
    def __init__(self, listed: dict[str, list[dict[str, Any]]] | None = None) -> None:
        self.requests: list[tuple[str, Any]] = []
        for name in ("payment_intents", "transfers", "refunds"):
            setattr(self, name, _Resource(name, self.requests, (listed or {}).get(name, [])))


def _gateway(client: _Client) -> StripeApiGateway:
    gateway = StripeApiGateway(get_settings(), api_key="sk_test_x")
    gateway._stripe = lambda: client  # type: ignore[method-assign]
    return gateway


def test_every_list_lookup_is_bounded_by_the_payments_creation_less_the_slack() -> None:
    client = _Client()
    gateway = _gateway(client)
    payment = _payment()
    gateway.order_transfers(payment)
    gateway.lookups.refund_of(payment)
    gateway.order_intents(payment)
    gateway.intent_refunds("pi_other", since=SINCE + 7)
    assert client.requests == [
        ("transfers.list", {"transfer_group": "order-1", "limit": 100, "created": {"gte": SINCE}}),
        ("refunds.list", {"payment_intent": "pi_123", "limit": 100, "created": {"gte": SINCE}}),
        ("payment_intents.list", {"customer": "cus_1", "limit": 100, "created": {"gte": SINCE}}),
        ("refunds.list", {"payment_intent": "pi_other", "limit": 100, "created": {"gte": SINCE + 7}}),
    ]


def test_a_payment_of_unknown_age_is_looked_up_without_a_bound() -> None:
    client = _Client()
    _gateway(client).order_transfers(_payment(created_at=None))
    assert client.requests == [("transfers.list", {"transfer_group": "order-1", "limit": 100})]


def test_the_lookup_still_picks_the_payments_own_objects_out_of_the_page() -> None:
    mine = {"payment_id": "5b1a8a4e-4b7e-4d0e-9d53-6c5f0c3c2a11"}
    client = _Client(
        {
            "transfers": [
                {"id": "tr_other", "transfer_group": "order-1", "metadata": {"payment_id": "another"}},
                {"id": "tr_mine", "transfer_group": "order-1", "metadata": mine},
            ]
        }
    )
    assert _gateway(client).find_transfer(_payment()) == "tr_mine"


@pytest.mark.parametrize(
    ("recorded", "expected"),
    [
        (False, ["transfers.create"]),
        (True, ["transfers.list", "transfers.create"]),
        (None, ["transfers.list", "transfers.create"]),  # nobody says: look first, as before
    ],
)
def test_a_transfer_looks_first_only_when_an_earlier_attempt_may_exist(
    recorded: bool | None, expected: list[str]
) -> None:
    client = _Client()
    gateway = _gateway(client)
    if recorded is None:
        gateway.transfer(_payment(), 1299, "acct_1")
    else:
        with attempted_before(recorded):
            gateway.transfer(_payment(), 1299, "acct_1")
    assert [name for name, _ in client.requests] == expected
    assert client.requests[-1][1] == "campusg-payments:transfer:5b1a8a4e-4b7e-4d0e-9d53-6c5f0c3c2a11"


@pytest.mark.parametrize(
    ("recorded", "expected"),
    [(False, ["refunds.create"]), (True, ["refunds.list", "refunds.create"])],
)
def test_a_refund_looks_first_only_after_a_recorded_attempt(recorded: bool, expected: list[str]) -> None:
    client = _Client()
    with attempted_before(recorded):
        _gateway(client).refund(_payment())
    assert [name for name, _ in client.requests] == expected


@pytest.mark.parametrize(
    ("recorded", "expected"),
    [
        (False, ["payment_intents.capture"]),
        (True, ["payment_intents.retrieve", "payment_intents.capture"]),
    ],
)
def test_a_capture_reads_the_intent_first_only_after_a_recorded_attempt(
    recorded: bool, expected: list[str]
) -> None:
    client = _Client()
    with attempted_before(recorded):
        captured = _gateway(client).capture(_payment(), None)
    assert captured.status == "succeeded"
    assert [name for name, _ in client.requests] == expected


def test_the_context_is_the_calls_own() -> None:
    client = _Client()
    gateway = _gateway(client)
    with attempted_before(False):
        pass
    gateway.transfer(_payment(), 1299, "acct_1")  # outside the block: looks first again
    assert [name for name, _ in client.requests] == ["transfers.list", "transfers.create"]
