"""Stripe behind a small gateway: the only module that talks to Stripe.

Every call that moves money carries a deterministic idempotency key derived from the payment,
so a retried or redelivered request returns Stripe's first answer instead of acting twice; an
answer Stripe would replay (a 500, an idempotency_error) is followed by a lookup of what the
attempt did, and only then by the next key (see ``_keyed``). A call that an earlier attempt may
have made already (its answer lost, even days ago, past the key's 24 h) looks first, unless the
caller knows no earlier attempt of it was recorded (``attempted_before``): a first attempt is
one request. The lookups themselves are ``stripe_lookups``.
Errors are translated into the service's two kinds: ``TransientError`` (retry) and
``Rejection`` (final). The same code serves Stripe, localstripe and stripe-mock: only
``STRIPE_API_BASE`` differs.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Protocol

from payments_core.adapters.stripe_api import secret_checks
from payments_core.adapters.stripe_api.stripe_lookups import StripeLookups
from payments_core.adapters.stripe_api.stripe_objects import AccountSnapshot, IntentSnapshot
from payments_core.config import Settings, get_settings
from payments_core.domain.contracts import STRIPE_API_ERROR, STRIPE_CARD_ERROR
from payments_core.domain.errors import Rejection, TransientError

# The snapshots are imported from here by the use cases and the tests.
__all__ = ["AccountSnapshot", "IntentSnapshot", "StripeApiGateway", "StripeGateway", "idempotency_key"]

if TYPE_CHECKING:
    from payments_core.domain.payment import Payment


class CardDeclined(Rejection):
    def __init__(
        self,
        message: str,
        *,
        stripe_code: str | None,
        decline_code: str | None,
        payment_intent_id: str | None,
    ):
        super().__init__(STRIPE_CARD_ERROR, message, stripe_code=stripe_code, decline_code=decline_code)
        self.payment_intent_id = payment_intent_id


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


# What the calls on this thread need to know: the hooks run before every request to Stripe (an
# order's lease renews itself there, so a holder that dies mid-request keeps the order until that
# request has ended; the command pool's pacer waits there for the request's turn), and whether
# an earlier attempt of the money call under way was recorded.
_hooks = threading.local()


@contextmanager
def before_each_request(hook: Callable[[], None]) -> Iterator[None]:
    """Run ``hook`` before every request to Stripe made on this thread in the block; hooks
    nest, the innermost running first (so the lease is renewed last, closest to the request)."""
    previous: tuple[Callable[[], None], ...] = getattr(_hooks, "before", ())
    _hooks.before = (hook, *previous)
    try:
        yield
    finally:
        _hooks.before = previous


def _before_request() -> None:
    for hook in getattr(_hooks, "before", ()):
        hook()


@contextmanager
def attempted_before(recorded: bool) -> Iterator[None]:
    """Tell the money call made in the block whether an earlier attempt of it was recorded
    (``leases``: every money call's intent is written before it is sent). Without one, nothing
    of this call can be at Stripe: a call that would first look up what an earlier attempt did
    sends its first key at once. With one (or when nobody says), it looks first."""
    previous = getattr(_hooks, "attempted_before", None)
    _hooks.attempted_before = recorded
    try:
        yield
    finally:
        _hooks.attempted_before = previous


class StripeRateLimited(TransientError):
    """Stripe answered 429 (its rate or concurrency limit, or a lock timeout): nothing was
    processed, so the same key may be sent again after a backoff."""


class StripeUnreachable(TransientError):
    """The request timed out or the connection dropped: Stripe, or the way to it, is struggling."""


class _AnswerSaved(TransientError):
    """Stripe answered this key with an error it will replay for a day (a 5xx, or
    ``idempotency_error``: the same key with other parameters): retrying the key cannot help."""


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


class StripeApiGateway:
    """The real gateway: stripe-python's StripeClient, with explicit timeouts."""

    def __init__(self, settings: Settings | None = None, api_key: str | None = None) -> None:
        self._settings = settings or get_settings()
        self._api_key = api_key
        self._client: Any = None
        self._client_key: str | None = None
        self.lookups = StripeLookups(self._call, lambda: self._stripe())

    def _stripe(self) -> Any:
        import stripe  # imported on first use: keeps the handlers' cold start short

        key = self._api_key or secret_checks.api_key(self._settings.stripe_secret_key_secret_id)
        if self._client is None or key != self._client_key:  # rebuilt when the secret rotates
            self._client = stripe.StripeClient(
                key,
                base_addresses={"api": self._settings.stripe_api_base},
                max_network_retries=self._settings.stripe_max_network_retries,
                http_client=stripe.RequestsClient(timeout=self._settings.stripe_timeout_seconds),
            )
            self._client_key = key
        return self._client.v1

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        import stripe

        _before_request()
        try:
            return fn(*args, **kwargs)
        except stripe.CardError as exc:
            err = exc.error
            pi = getattr(err, "payment_intent", None) if err is not None else None
            raise CardDeclined(
                exc.user_message or str(exc),
                stripe_code=exc.code,
                decline_code=getattr(err, "decline_code", None) if err is not None else None,
                payment_intent_id=getattr(pi, "id", None) if pi else None,
            ) from exc
        except stripe.RateLimitError as exc:
            raise StripeRateLimited(f"stripe unavailable: RateLimitError: {exc.user_message or exc}") from exc
        except stripe.APIConnectionError as exc:  # stripe-python raises it for timeouts too
            raise StripeUnreachable(
                f"stripe unavailable: APIConnectionError: {exc.user_message or exc}"
            ) from exc
        except (stripe.AuthenticationError, stripe.PermissionError) as exc:
            raise TransientError(
                f"stripe unavailable: {type(exc).__name__}: {exc.user_message or exc}"
            ) from exc
        except stripe.IdempotencyError as exc:
            raise _AnswerSaved(f"stripe idempotency_error: {exc.user_message or exc}") from exc
        except stripe.StripeError as exc:
            status = exc.http_status or 0
            if status >= 500:
                raise _AnswerSaved(f"stripe error {status}: {exc.user_message or exc}") from exc
            if status == 429:
                raise StripeRateLimited(f"stripe error 429: {exc.user_message or exc}") from exc
            if status in (0, 409):  # 409: the key's first request is still executing
                raise TransientError(f"stripe error {status}: {exc.user_message or exc}") from exc
            raise Rejection(STRIPE_API_ERROR, exc.user_message or str(exc), stripe_code=exc.code) from exc

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
        return self._keyed(
            "authorize",
            payment,
            send=lambda key: IntentSnapshot.from_stripe(
                self._call(
                    self._stripe().payment_intents.create, params=params, options={"idempotency_key": key}
                )
            ),
            look_up=lambda: self.lookups.hold_by_metadata(payment),
        )

    def _keyed(
        self, action: str, payment: Payment, *, send: Any, look_up: Any, look_first: bool = False
    ) -> Any:
        """Send with idempotency key attempt 0, 1, ...; before each new key look up what an
        earlier attempt may have done, and before the first too with ``look_first``, unless no
        earlier attempt of this call was recorded (``attempted_before(False)``)."""
        saved: _AnswerSaved | None = None
        look_first = look_first and getattr(_hooks, "attempted_before", None) is not False
        for attempt in range(MAX_KEY_ATTEMPTS):
            if attempt or look_first:
                found = look_up()
                if found is not None:
                    return found
            try:
                return send(idempotency_key(action, payment, attempt))
            except _AnswerSaved as exc:
                saved = exc
        raise TransientError(f"{action}: Stripe answered {MAX_KEY_ATTEMPTS} keys with errors; last: {saved}")

    def find_hold(self, payment: Payment) -> IntentSnapshot | None:
        """The PaymentIntent an earlier, interrupted attempt created for this order, if any.
        Real Stripe would also return it for the same idempotency key; emulators that ignore
        keys are covered by this lookup through the order's metadata."""
        if payment.payment_intent_id:
            return self.retrieve(payment.payment_intent_id)
        return self.lookups.hold_by_metadata(payment)

    def order_intents(self, payment: Payment) -> list[IntentSnapshot]:
        return self.lookups.order_intents(payment)

    def retrieve(self, payment_intent_id: str) -> IntentSnapshot:
        return self.lookups.retrieve(payment_intent_id)

    def capture(self, payment: Payment, amount_to_capture: int | None) -> IntentSnapshot:
        params = {"amount_to_capture": amount_to_capture} if amount_to_capture else {}
        intent_id = _require_intent(payment)
        return self._keyed(
            "capture",
            payment,
            send=lambda key: IntentSnapshot.from_stripe(
                self._call(
                    self._stripe().payment_intents.capture,
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
        return self._keyed(
            f"cancel:{intent_id}",
            payment,
            send=lambda key: IntentSnapshot.from_stripe(
                self._call(self._stripe().payment_intents.cancel, intent_id, options={"idempotency_key": key})
            ),
            look_up=lambda: self._if_status(intent_id, "canceled"),
        )

    def _if_status(self, intent_id: str, *done: str) -> IntentSnapshot | None:
        """The PaymentIntent if an earlier attempt already took it where the call would."""
        intent = self.retrieve(intent_id)
        return intent if intent.status in done else None

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
            self._keyed(
                "refund" if not redo else f"refund-redo-{redo}",
                payment,
                send=lambda key: (
                    self._call(
                        self._stripe().refunds.create, params=params, options={"idempotency_key": key}
                    ).id
                ),
                look_up=lambda: self.lookups.refund_of(payment),
                look_first=True,
            )
        )

    def intent_refunds(self, payment_intent_id: str, *, since: int | None = None) -> list[dict[str, Any]]:
        return self.lookups.intent_refunds(payment_intent_id, since=since)

    def connected_account(self, account_id: str) -> AccountSnapshot | None:
        return self.lookups.connected_account(account_id)

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
            self._keyed(
                "transfer",
                payment,
                send=lambda key: (
                    self._call(
                        self._stripe().transfers.create, params=params, options={"idempotency_key": key}
                    ).id
                ),
                look_up=lambda: self.find_transfer(payment),
                look_first=True,
            )
        )

    def find_transfer(self, payment: Payment) -> str | None:
        """This payment's transfer, if one was made (by its group and metadata)."""
        transfers = self.order_transfers(payment)
        return str(transfers[0]["id"]) if transfers else None

    def order_transfers(self, payment: Payment) -> list[dict[str, Any]]:
        return self.lookups.order_transfers(payment)

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
            self._keyed(
                action,
                payment,
                send=lambda key: (
                    self._call(
                        self._stripe().transfers.reversals.create,
                        transfer_id,
                        params=params,
                        options={"idempotency_key": key},
                    ).id
                ),
                look_up=lambda: self.lookups.reversal_of(transfer_id),
                look_first=True,
            )
        )


def _require_intent(payment: Payment) -> str:
    if not payment.payment_intent_id:
        raise ValueError(f"payment {payment.payment_id} has no PaymentIntent")
    return payment.payment_intent_id
