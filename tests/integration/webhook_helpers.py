"""Acting as Stripe: signed webhook bodies and the API Gateway events that carry them.
Shared by the webhook tests and the webhook benchmark."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from typing import Any

# The payment object of the contract's status and details answers, key for key.
CONTRACT_KEYS = {
    "paymentId",
    "orderId",
    "customerId",
    "runnerId",
    "amount",
    "status",
    "description",
    "paymentIntentId",
    "transferId",
    "createdAt",
    "updatedAt",
}
EXTENSION_KEYS = {"amountCents", "currency", "failureCode", "failureMessage"}
NOT_FOUND = {"success": False, "error": "NOT_FOUND", "message": "Payment not found"}


def sign(payload: bytes, secret: str, timestamp: int | None = None) -> str:
    """The ``Stripe-Signature`` header Stripe would send for these exact bytes."""
    t = int(time.time()) if timestamp is None else timestamp
    digest = hmac.new(secret.encode("utf-8"), f"{t}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={t},v1={digest}"


# What each kind of event says about a manual-capture PaymentIntent: (event type, PI status).
INTENT_EVENTS: dict[str, tuple[str, str]] = {
    "authorized": ("payment_intent.amount_capturable_updated", "requires_capture"),
    "captured": ("payment_intent.succeeded", "succeeded"),
    "canceled": ("payment_intent.canceled", "canceled"),
    "failed": ("payment_intent.payment_failed", "requires_payment_method"),
    "requires_action": ("payment_intent.requires_action", "requires_action"),
}


def payment_intent_event(
    kind: str,
    *,
    payment_intent_id: str,
    order_id: str | None = None,
    amount: int = 1999,
    currency: str = "sgd",
    event_id: str | None = None,
    created: int | None = None,
) -> dict[str, Any]:
    """A Stripe event about a PaymentIntent, shaped like Stripe's (and localstripe's)."""
    event_type, status = INTENT_EVENTS[kind]
    failed = kind == "failed"
    intent = {
        "id": payment_intent_id,
        "object": "payment_intent",
        "amount": amount,
        "amount_capturable": amount if status == "requires_capture" else 0,
        "amount_received": amount if status == "succeeded" else 0,
        "capture_method": "manual",
        "currency": currency,
        "status": status,
        "metadata": {"order_id": order_id} if order_id else {},
        "last_payment_error": (
            {"code": "card_declined", "decline_code": "generic_decline", "message": "Your card was declined."}
            if failed
            else None
        ),
        "next_action": (
            {"type": "redirect_to_url", "redirect_to_url": {"url": "https://hooks.stripe.com/3ds"}}
            if status == "requires_action"
            else None
        ),
    }
    return {
        "id": event_id or f"evt_{uuid.uuid4().hex}",
        "object": "event",
        "type": event_type,
        "created": int(time.time()) if created is None else created,
        "livemode": False,
        "data": {"object": intent},
    }


def encode(event: dict[str, Any]) -> bytes:
    """Stripe's own layout: pretty-printed JSON (the signature covers these exact bytes)."""
    return json.dumps(event, indent=2, sort_keys=True).encode("utf-8")


def webhook_request(
    body: bytes,
    signature: str | None,
    *,
    base64_body: bool = False,
    header_name: str = "Stripe-Signature",
    multi_value_only: bool = False,
) -> dict[str, Any]:
    """An API Gateway REST proxy event for ``POST /api/stripe-webhook``."""
    headers: dict[str, str] = {"Content-Type": "application/json; charset=utf-8"}
    if signature is not None:
        headers[header_name] = signature
    return {
        "resource": "/api/stripe-webhook",
        "path": "/api/stripe-webhook",
        "httpMethod": "POST",
        "headers": None if multi_value_only else headers,
        "multiValueHeaders": {k: [v] for k, v in headers.items()},
        "queryStringParameters": None,
        "multiValueQueryStringParameters": None,
        "pathParameters": None,
        "stageVariables": None,
        "requestContext": {
            "resourcePath": "/api/stripe-webhook",
            "httpMethod": "POST",
            "path": "/prod/api/stripe-webhook",
            "stage": "prod",
            "requestId": str(uuid.uuid4()),
            "identity": {"sourceIp": "127.0.0.1"},
        },
        "body": base64.b64encode(body).decode("ascii") if base64_body else body.decode("utf-8"),
        "isBase64Encoded": base64_body,
    }


def get_request(path: str, resource: str, path_parameters: dict[str, str]) -> dict[str, Any]:
    """An API Gateway REST proxy event for a GET."""
    return {
        "resource": resource,
        "path": path,
        "httpMethod": "GET",
        "headers": {"Accept": "application/json"},
        "multiValueHeaders": {"Accept": ["application/json"]},
        "queryStringParameters": None,
        "multiValueQueryStringParameters": None,
        "pathParameters": path_parameters,
        "stageVariables": None,
        "requestContext": {
            "resourcePath": resource,
            "httpMethod": "GET",
            "path": f"/prod{path}",
            "stage": "prod",
            "requestId": str(uuid.uuid4()),
            "identity": {"sourceIp": "127.0.0.1"},
        },
        "body": None,
        "isBase64Encoded": False,
    }


def seed_payment(
    db: Any,
    status: str = "REQUIRES_ACTION",
    *,
    amount_cents: int = 1999,
    payment_intent_id: str | None = None,
    **columns: Any,
) -> Any:
    """A payment row in ``status`` written straight to the database (no Stripe, no outbox
    event), so whatever a webhook then changes is the only thing announced."""
    from payments_core.adapters.postgres import repository
    from payments_core.domain.payment import Payment, PaymentStatus

    payment = Payment(
        payment_id=str(uuid.uuid4()),
        order_id=str(uuid.uuid4()),
        status=PaymentStatus.PENDING,
        amount_cents=amount_cents,
        currency="sgd",
        correlation_id=str(uuid.uuid4()),
        clerk_user_id="user_2abc",
        stripe_customer_id="cus_seeded",
        payment_method_id="pm_seeded",
        description="Payment for a seeded order",
    )
    if status != "PENDING" and payment_intent_id is None:
        payment_intent_id = f"pi_{uuid.uuid4().hex[:24]}"
    with db.transaction():
        repository.insert_pending(db, payment)
        if status != "PENDING":
            repository.update(
                db,
                payment.payment_id,
                expected_status=PaymentStatus.PENDING,
                status=PaymentStatus(status),
                payment_intent_id=payment_intent_id,
                **columns,
            )
    stored = repository.get_by_order_id(db, payment.order_id)
    assert stored is not None
    return stored
