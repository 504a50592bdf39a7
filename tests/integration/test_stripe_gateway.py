"""The Stripe gateway against localstripe: what the other tests do not reach directly."""

from __future__ import annotations

import uuid

import pytest
from payments_core.adapters.stripe_api.stripe_gateway import StripeApiGateway
from payments_core.config import get_settings
from payments_core.domain.payment import Payment, PaymentStatus

pytestmark = pytest.mark.integration


def test_find_hold_looks_past_the_first_page_of_a_customers_intents(new_card, localstripe_client):
    """An interrupted attempt's PaymentIntent is found even when the customer has more than one
    page (100) of PaymentIntents: missing it would mean a second hold on the card."""
    card = new_card()
    for _ in range(100):
        localstripe_client.v1.payment_intents.create(
            params={
                "amount": 1000,
                "currency": "sgd",
                "customer": card.customer_id,
                "metadata": {"order_id": "other"},
            }
        )
    order_id = str(uuid.uuid4())
    target = localstripe_client.v1.payment_intents.create(
        params={
            "amount": 1299,
            "currency": "sgd",
            "customer": card.customer_id,
            "metadata": {"order_id": order_id},
        }
    )
    payment = Payment(
        payment_id=str(uuid.uuid4()),
        order_id=order_id,
        status=PaymentStatus.PENDING,
        amount_cents=1299,
        currency="sgd",
        stripe_customer_id=card.customer_id,
        payment_method_id=card.payment_method_id,
        stripe_create_attempts=1,
    )
    found = StripeApiGateway(get_settings()).find_hold(payment)
    assert found is not None and found.id == target.id

    payment.order_id = str(uuid.uuid4())  # an order with no PaymentIntent at all
    assert StripeApiGateway(get_settings()).find_hold(payment) is None
