"""Stripe webhooks: verified against the raw body, deduplicated by Stripe event id in the same
transaction as the state change, applied through the one state machine.

The PaymentIntent's own status decides the new state, not the event's name: events arrive
late, twice and out of order, and localstripe sends payment_intent.succeeded for a
manual-capture authorization."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from typing import Any

from payments_core.adapters.postgres import outbox, repository
from payments_core.adapters.services import Services
from payments_core.adapters.stripe_api import secret_checks
from payments_core.adapters.stripe_api.stripe_gateway import IntentSnapshot
from payments_core.adapters.stripe_api.webhook_signatures import signature_failure
from payments_core.domain.errors import TransientError
from payments_core.observability import count, logger
from payments_core.usecases import leases, lifecycle, reconciliation

HANDLED_EVENT_TYPES = frozenset(
    {
        "payment_intent.amount_capturable_updated",
        "payment_intent.succeeded",
        "payment_intent.canceled",
        "payment_intent.payment_failed",
        "payment_intent.requires_action",
    }
)


# Why a webhook request was refused (the ``error`` of the 400 answer).
MISSING_SIGNATURE = "MISSING_SIGNATURE"
MISSING_SIGNATURE_MESSAGE = "missing Stripe-Signature header"
INVALID_SIGNATURE = "INVALID_SIGNATURE"  # forged, another secret, or older than the tolerance
INVALID_PAYLOAD = "INVALID_PAYLOAD"  # verified bytes that are not a Stripe event


class WebhookRejected(Exception):
    """The request is not a verified Stripe event: answer 400, write nothing."""

    def __init__(self, message: str, code: str = INVALID_SIGNATURE) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


@dataclass(frozen=True)
class WebhookOutcome:
    result: str  # applied | unchanged | duplicate | ignored | unknown_payment | audit_scheduled | deferred
    order_id: str | None = None


# Counted for every request whose signature none of the accepted secrets verifies (alarmed:
# a roll gone wrong rejects Stripe's own events).
SIGNATURE_REJECTED_METRIC = "WebhookSignatureRejected"
# After a signature failure the secret is read again from Secrets Manager (not the ~300 s
# cache), at most this often per container: a secret rolled at Stripe and updated in Secrets
# Manager is then accepted within seconds, while forged requests cannot drive Secrets Manager.
SECRET_REFETCH_INTERVAL_SECONDS = 30.0


class _RefetchGate:
    """Allows one fresh read of a secret per interval (monotonic clock), per container."""

    def __init__(self) -> None:
        self._last: dict[str, float] = {}
        self._lock = threading.Lock()

    def allow(self, secret_id: str, interval: float) -> bool:
        now = time.monotonic()
        with self._lock:
            last = self._last.get(secret_id)
            if last is not None and now - last < interval:
                return False
            self._last[secret_id] = now
            return True

    def reset(self) -> None:
        with self._lock:
            self._last.clear()


secret_refetch = _RefetchGate()


def verify_event(raw_body: bytes, signature_header: str | None, services: Services) -> dict[str, Any]:
    """The Stripe event, if and only if its signature verifies over the raw body with one of
    the accepted signing secrets (the current one and, during a roll, the next)."""
    if not signature_header:
        raise WebhookRejected(MISSING_SIGNATURE_MESSAGE, MISSING_SIGNATURE)
    try:
        payload = raw_body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise WebhookRejected("body is not UTF-8", INVALID_PAYLOAD) from exc
    secret_id = services.settings.stripe_webhook_secret_id
    tolerance = services.settings.webhook_tolerance_seconds
    # Never verify with a placeholder: refuses (log line, metric, 500) unless each is a whsec_ value.
    secrets = secret_checks.webhook_secrets(secret_id)
    failure = signature_failure(payload, signature_header, secrets, tolerance)
    if failure is not None and secret_refetch.allow(secret_id, SECRET_REFETCH_INTERVAL_SECONDS):
        # The secret may have been rolled since it was cached.
        fresh = secret_checks.webhook_secrets(secret_id, fresh=True)
        if fresh != secrets:
            logger.info("webhook signing secret changed in Secrets Manager", extra={"secret_id": secret_id})
            failure = signature_failure(payload, signature_header, fresh, tolerance)
    if failure is not None:
        count(SIGNATURE_REJECTED_METRIC)
        raise WebhookRejected(f"signature verification failed: {failure}")
    try:
        event = json.loads(payload)
    except json.JSONDecodeError as exc:
        raise WebhookRejected("body is not JSON", INVALID_PAYLOAD) from exc
    if (
        not isinstance(event, dict)
        or not isinstance(event.get("id"), str)
        or not isinstance(event.get("type"), str)
    ):
        raise WebhookRejected("body is not a Stripe event", INVALID_PAYLOAD)
    return event


# Stripe objects other than PaymentIntents that feed the settlement audit: a transfer or a
# refund of ours changed (reversed, failed, canceled: refund updates can come days later).
AUDITED_EVENT_TYPES = frozenset(
    {
        "transfer.created",
        "transfer.reversed",
        "transfer.updated",
        "refund.created",
        "refund.updated",
        "refund.failed",
        "charge.refund.updated",
        "charge.refunded",
    }
)
# An event we did not expect asks the audit to look soon, not at its usual first delay.
_AUDIT_SOON_SECONDS = 0


def apply_event(services: Services, event: dict[str, Any]) -> WebhookOutcome:
    """Apply a verified Stripe event. Idempotent per Stripe event id. The event is recorded as
    handled in the same transaction as its effect on the payment, or as the audit's due time
    for an effect on Stripe (a stray hold to cancel): that effect is tried now, and if it
    fails the audit does it, so an error here never loses it."""
    event_type = event["type"]
    obj = (event.get("data") or {}).get("object") or {}
    if event_type in AUDITED_EVENT_TYPES:
        return _audit_soon(services, event, obj)
    if event_type not in HANDLED_EVENT_TYPES:
        return WebhookOutcome("ignored")
    if obj.get("object") not in (None, "payment_intent") or not isinstance(obj.get("id"), str):
        return WebhookOutcome("ignored")
    intent = IntentSnapshot.from_stripe(obj)
    db = services.db
    # Our PaymentIntents name their order in metadata (the event is verified, and the row's own
    # payment_intent_id is checked below); others are looked up by id.
    order_id = intent.metadata.get("order_id")
    if not order_id:
        known = repository.get_by_payment_intent_id(db, intent.id)
        order_id = known.order_id if known else None
    if not order_id:
        logger.info("webhook for an unknown PaymentIntent", extra={"payment_intent_id": intent.id})
        return WebhookOutcome("unknown_payment")
    try:
        return _apply_leased(services, event, intent, order_id)
    except leases.LeaseBusy:
        # A command is working on the order (a release's capture announces itself this way):
        # its effect is left to the audit, due now, rather than holding Stripe's request (and an
        # API function) for the whole lease. The command usually records the same outcome itself.
        with db.transaction():
            repository.schedule_audit(
                db, order_id, _AUDIT_SOON_SECONDS, f"{event_type} while the order was busy"
            )
        count("WebhookDeferredToAudit")
        return WebhookOutcome("deferred", order_id)


def _apply_leased(
    services: Services, event: dict[str, Any], intent: IntentSnapshot, order_id: str
) -> WebhookOutcome:
    db = services.db
    event_type = event["type"]
    with leases.hold_order(services, order_id, wait_s=services.settings.webhook_lease_wait_seconds) as held:
        with db.transaction():
            payment = repository.get_by_order_id(db, order_id, for_update=True)
            # Another PaymentIntent than the payment's: ours only if its metadata names the order
            # (then it is a second hold, canceled below); it never moves the payment's status.
            foreign = payment is not None and payment.payment_intent_id not in (None, intent.id)
            if payment is None or (foreign and intent.metadata.get("order_id") != order_id):
                logger.info("webhook for an unknown PaymentIntent", extra={"payment_intent_id": intent.id})
                return WebhookOutcome("unknown_payment", order_id)
            if not repository.record_stripe_event(db, event["id"], event_type, intent.id):
                count("DuplicateWebhook")
                return WebhookOutcome("duplicate", order_id)
            # A hold on a payment that holds nothing (already final, or a second PaymentIntent
            # for the order): the state machine rightly refuses it, so it is canceled below, and
            # the audit is told in this transaction in case that cancel fails.
            stray = intent.status == "requires_capture" and (payment.status.is_final or foreign)
            if stray or foreign:
                repository.schedule_audit(db, order_id, _AUDIT_SOON_SECONDS, f"unexpected {event_type}")
            changed = not (stray or foreign) and lifecycle.apply_intent(
                db,
                payment,
                intent,
                correlation_id=payment.correlation_id,
                attempt_failed=event_type == "payment_intent.payment_failed",
            )
        if stray:
            try:
                reconciliation.cancel_stray_hold(held, payment, intent.id)
            except TransientError as exc:
                logger.warning(
                    "stray hold cancel failed; the audit retries it",
                    extra={"order_id": order_id, "reason": str(exc)},
                )
    if changed:
        outbox.publish_best_effort(db, services.publisher, [order_id])
    return WebhookOutcome("applied" if changed else "unchanged", order_id)


def _audit_soon(services: Services, event: dict[str, Any], obj: dict[str, Any]) -> WebhookOutcome:
    """A transfer or refund of one of our payments changed: the audit checks the order now."""
    order_id = (obj.get("metadata") or {}).get("order_id")
    if not isinstance(order_id, str) or not order_id:
        return WebhookOutcome("ignored")
    db = services.db
    with db.transaction():
        if repository.get_by_order_id(db, order_id) is None:
            return WebhookOutcome("unknown_payment", order_id)
        if not repository.record_stripe_event(db, event["id"], event["type"], None):
            count("DuplicateWebhook")
            return WebhookOutcome("duplicate", order_id)
        repository.schedule_audit(db, order_id, _AUDIT_SOON_SECONDS, str(event["type"]))
    return WebhookOutcome("audit_scheduled", order_id)
