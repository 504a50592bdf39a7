"""Stripe behind a small gateway: the only module that moves money at Stripe.

Every call that moves money carries a deterministic idempotency key derived from the payment,
so a retried or redelivered request returns Stripe's first answer instead of acting twice; an
answer Stripe would replay (a 500, an idempotency_error) is followed by a lookup of what the
attempt did, and only then by the next key (see ``_keyed``). A call that an earlier attempt may
have made already (its answer lost, even days ago, past the key's 24 h) looks first, unless the
caller knows no earlier attempt of it was recorded (``attempted_before``): a first attempt is
one request. The lookups themselves are ``stripe_lookups`` (the gateway is one); how a request
is sent, and its errors translated into the service's two kinds, ``TransientError`` (retry) and
``Rejection`` (final), is ``stripe_requests``. The same code serves Stripe, localstripe and
stripe-mock: only ``STRIPE_API_BASE`` differs.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Protocol

from payments_core.adapters.stripe_api.stripe_lookups import StripeLookups
from payments_core.adapters.stripe_api.stripe_objects import AccountSnapshot, IntentSnapshot
from payments_core.adapters.stripe_api.stripe_requests import AnswerSaved, SdkClient
from payments_core.adapters.stripe_api.stripe_requests import send as send_request
from payments_core.config import Settings, get_settings
from payments_core.domain.errors import TransientError

# The snapshots are imported from here by the use cases and the tests.
__all__ = [
    "AccountSnapshot",
    "IntentSnapshot",
    "StripeApiGateway",
    "StripeGateway",
    "idempotency_key",
]

if TYPE_CHECKING:
    from payments_core.domain.payment import Payment


# How many idempotency keys one call may go through. Stripe saves its first answer for a key,
# 500s included, for 24 h: after such an answer the call looks up what the attempt did and,
# if nothing, moves on to the next key. The sequence is deterministic (attempt 0, 1, 2, ...)
# and every new key is preceded by a lookup, so a redelivery that starts again from attempt 0
# only replays answers Stripe saved; it never acts twice.
MAX_KEY_ATTEMPTS = 4


# Stripe refuses idempotency keys longer than this.
IDEMPOTENCY_KEY_MAX_LENGTH = 255


def idempotency_key(action: str, payment: Payment, attempt: int = 0) -> str:
    # Keyed by the order for the create (one hold per order, whatever the payment row), and by
    # the payment for every later step. Attempt 0 keeps the historical form. An order id too
    # long for Stripe's 255 characters is replaced by its digest (stable, so still one key).
    subject = payment.order_id if action == "authorize" else payment.payment_id
    base = f"campusg-payments:{action}:{subject}"
    key = base if attempt == 0 else f"{base}:{attempt}"
    if len(key) <= IDEMPOTENCY_KEY_MAX_LENGTH:
        return key
    digest = hashlib.sha256(subject.encode("utf-8", "surrogatepass")).hexdigest()
    base = f"campusg-payments:{action}:sha256:{digest}"
    return base if attempt == 0 else f"{base}:{attempt}"


# Whether an earlier attempt of the money call under way on this thread was recorded.
_attempts = threading.local()


@contextmanager
def attempted_before(recorded: bool) -> Iterator[None]:
    """Tell the money call made in the block whether an earlier attempt of it was recorded
    (``leases``: every money call's intent is written before it is sent). Without one, nothing
    of this call can be at Stripe: a call that would first look up what an earlier attempt did
    sends its first key at once. With one (or when nobody says), it looks first."""
    previous = getattr(_attempts, "attempted_before", None)
    _attempts.attempted_before = recorded
    try:
        yield
    finally:
        _attempts.attempted_before = previous


class StripeGateway(Protocol):
    def create_hold(self, payment: Payment) -> IntentSnapshot: ...
    def find_hold(self, payment: Payment) -> IntentSnapshot | None: ...
    def retrieve(self, payment_intent_id: str) -> IntentSnapshot: ...
    def capture(self, payment: Payment, amount_to_capture: int | None) -> IntentSnapshot: ...
    def cancel(self, payment: Payment) -> IntentSnapshot: ...
    def refund(self, payment: Payment, amount_cents: int | None = None, *, redo: int = 0) -> str: ...
    def transfer(self, payment: Payment, amount_cents: int, destination: str) -> str: ...
    def find_transfer(self, payment: Payment) -> str | None: ...
    def reverse_transfer(
        self, payment: Payment, amount_cents: int | None = None, *, transfer_id: str | None = None
    ) -> str: ...
    def order_intents(self, payment: Payment) -> list[IntentSnapshot]: ...
    def order_transfers(self, payment: Payment) -> list[dict[str, Any]]: ...
    def intent_refunds(self, payment_intent_id: str, *, since: int | None = None) -> list[dict[str, Any]]: ...
    def connected_account(self, account_id: str) -> AccountSnapshot | None: ...


class StripeApiGateway(StripeLookups):
    """The real gateway: the keyed money moves here, the lookups of ``StripeLookups``, each
    request sent by ``stripe_requests``."""

    def __init__(self, settings: Settings | None = None, api_key: str | None = None) -> None:
        super().__init__(send_request, SdkClient(settings or get_settings(), api_key).v1)

    def create_hold(self, payment: Payment) -> IntentSnapshot:
        params: dict[str, Any] = {
            "amount": payment.amount_cents,
            "currency": payment.currency,
            "customer": payment.stripe_customer_id,
            "payment_method": payment.payment_method_id,
            "capture_method": "manual",
            "confirm": True,
            "metadata": {
                "order_id": payment.order_id,
                "payment_id": payment.payment_id,
                "correlation_id": payment.correlation_id or "",
            },
        }
        if payment.return_url:
            params["return_url"] = payment.return_url
        return _keyed(
            "authorize",
            payment,
            send=lambda key: IntentSnapshot.from_stripe(
                self._request(
                    self._client().payment_intents.create, params=params, options={"idempotency_key": key}
                )
            ),
            look_up=lambda: self.hold_by_metadata(payment),
        )

    def capture(self, payment: Payment, amount_to_capture: int | None) -> IntentSnapshot:
        params = {"amount_to_capture": amount_to_capture} if amount_to_capture else {}
        intent_id = _require_intent(payment)
        return _keyed(
            "capture",
            payment,
            send=lambda key: IntentSnapshot.from_stripe(
                self._request(
                    self._client().payment_intents.capture,
                    intent_id,
                    params=params,
                    options={"idempotency_key": key},
                )
            ),
            look_up=lambda: self._if_status(intent_id, "succeeded", "canceled"),
            look_first=True,
        )

    def cancel(self, payment: Payment) -> IntentSnapshot:
        intent_id = _require_intent(payment)
        # Keyed by the PaymentIntent too: an order may have a second (stray) one to cancel, and
        # the first one's key would replay the first cancel.
        return _keyed(
            f"cancel:{intent_id}",
            payment,
            send=lambda key: IntentSnapshot.from_stripe(
                self._request(
                    self._client().payment_intents.cancel, intent_id, options={"idempotency_key": key}
                )
            ),
            look_up=lambda: self._if_status(intent_id, "canceled"),
        )

    def refund(self, payment: Payment, amount_cents: int | None = None, *, redo: int = 0) -> str:
        """Refund the payment's charge: by default all that was captured and is not refunded yet
        (Stripe's own arithmetic: never more than was captured). An earlier refund of this
        payment, by an attempt whose answer was lost even days ago, is found first. ``redo``:
        how many refunds of it Stripe canceled or failed; each redo has keys of its own (the
        first keys would replay the refund that was canceled)."""
        params: dict[str, Any] = {
            "payment_intent": _require_intent(payment),
            "metadata": {"order_id": payment.order_id, "payment_id": payment.payment_id},
        }
        if amount_cents is not None:
            params["amount"] = amount_cents
        return str(
            _keyed(
                "refund" if not redo else f"refund-redo-{redo}",
                payment,
                send=lambda key: (
                    self._request(
                        self._client().refunds.create, params=params, options={"idempotency_key": key}
                    ).id
                ),
                look_up=lambda: self.refund_of(payment),
                look_first=True,
            )
        )

    def transfer(self, payment: Payment, amount_cents: int, destination: str) -> str:
        """Pay the runner, once: a transfer made by an earlier attempt (its answer lost to a
        crash, even days ago) is found by the order's transfer_group first (when one may exist)."""
        params = {
            "amount": amount_cents,
            "currency": payment.currency,
            "destination": destination,
            "transfer_group": payment.order_id,
            "metadata": {"order_id": payment.order_id, "payment_id": payment.payment_id},
        }
        return str(
            _keyed(
                "transfer",
                payment,
                send=lambda key: (
                    self._request(
                        self._client().transfers.create, params=params, options={"idempotency_key": key}
                    ).id
                ),
                look_up=lambda: self.find_transfer(payment),
                look_first=True,
            )
        )

    def reverse_transfer(
        self, payment: Payment, amount_cents: int | None = None, *, transfer_id: str | None = None
    ) -> str:
        """Take a transfer of the payment back (by default the recorded one): all of it."""
        transfer_id = transfer_id or payment.transfer_id
        if not transfer_id:
            raise ValueError("payment has no transfer to reverse")
        params = {"amount": amount_cents} if amount_cents is not None else {}
        # Another transfer than the recorded one (a second one the audit found) has keys of its own.
        action = (
            "reverse-transfer" if transfer_id == payment.transfer_id else f"reverse-transfer:{transfer_id}"
        )
        return str(
            _keyed(
                action,
                payment,
                send=lambda key: (
                    self._request(
                        self._client().transfers.reversals.create,
                        transfer_id,
                        params=params,
                        options={"idempotency_key": key},
                    ).id
                ),
                look_up=lambda: self.reversal_of(transfer_id),
                look_first=True,
            )
        )


def _keyed(action: str, payment: Payment, *, send: Any, look_up: Any, look_first: bool = False) -> Any:
    """Send with idempotency key attempt 0, 1, ...; before each new key look up what an
    earlier attempt may have done, and before the first too with ``look_first``, unless no
    earlier attempt of this call was recorded (``attempted_before(False)``)."""
    saved: AnswerSaved | None = None
    look_first = look_first and getattr(_attempts, "attempted_before", None) is not False
    for attempt in range(MAX_KEY_ATTEMPTS):
        if attempt or look_first:
            found = look_up()
            if found is not None:
                return found
        try:
            return send(idempotency_key(action, payment, attempt))
        except AnswerSaved as exc:
            saved = exc
    raise TransientError(f"{action}: Stripe answered {MAX_KEY_ATTEMPTS} keys with errors; last: {saved}")


def _require_intent(payment: Payment) -> str:
    if not payment.payment_intent_id:
        raise ValueError(f"payment {payment.payment_id} has no PaymentIntent")
    return payment.payment_intent_id
