"""Idempotency keys and refund lookups of the Stripe gateway (issue 16 item 6), without Stripe."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from payments_core.adapters.stripe_api.stripe_gateway import (
    IDEMPOTENCY_KEY_MAX_LENGTH,
    StripeApiGateway,
    idempotency_key,
)
from payments_core.config import get_settings
from payments_core.domain.payment import Payment, PaymentStatus


def _payment(order_id: str) -> Payment:
    return Payment(
        payment_id="5b1a8a4e-4b7e-4d0e-9d53-6c5f0c3c2a11",
        order_id=order_id,
        status=PaymentStatus.AUTHORIZED,
        amount_cents=1299,
        currency="sgd",
        payment_intent_id="pi_123",
    )


def test_keys_fit_stripes_limit_for_the_longest_order_id_and_stay_distinct_and_stable() -> None:
    longest = _payment("o" * 255)
    keys = {idempotency_key("authorize", longest, attempt) for attempt in range(4)}
    assert all(len(key) <= IDEMPOTENCY_KEY_MAX_LENGTH for key in keys)
    assert len(keys) == 4, "every attempt has its own key"
    assert idempotency_key("authorize", longest) == idempotency_key("authorize", _payment("o" * 255))
    assert idempotency_key("authorize", longest) != idempotency_key("authorize", _payment("o" * 254 + "p"))


def test_a_short_order_keeps_its_historical_key() -> None:
    assert idempotency_key("authorize", _payment("order-1")) == "campusg-payments:authorize:order-1"


class _Refunds:
    def __init__(self, refunds: list[dict[str, Any]]) -> None:
        self._refunds = refunds

    def list(self, params: dict[str, Any]) -> Any:
        return SimpleNamespace(data=[SimpleNamespace(to_dict=lambda r=r: r) for r in self._refunds])


def test_a_canceled_or_failed_refund_is_not_taken_for_the_refund() -> None:
    payment = _payment("order-1")
    gateway = StripeApiGateway(get_settings(), api_key="sk_test_x")
    mine = {"payment_id": payment.payment_id}
    refunds = [
        {"id": "re_failed", "status": "failed", "metadata": mine},
        {"id": "re_canceled", "status": "canceled", "metadata": mine},
    ]
    gateway._stripe = lambda: SimpleNamespace(refunds=_Refunds(refunds))  # type: ignore[method-assign]
    assert gateway.lookups.refund_of(payment) is None
    refunds.append({"id": "re_pending", "status": "pending", "metadata": mine})
    assert gateway.lookups.refund_of(payment) == "re_pending"
