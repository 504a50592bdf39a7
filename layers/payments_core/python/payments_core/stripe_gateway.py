"""Stripe behind a small gateway: the only module that talks to Stripe.

Every call that moves money carries a deterministic idempotency key derived from the payment,
so a retried or redelivered request returns Stripe's first answer instead of acting twice; an
answer Stripe would replay (a 500, an idempotency_error) is followed by a lookup of what the
attempt did, and only then by the next key (see ``_keyed``).
Errors are translated into the service's two kinds: ``TransientError`` (retry) and
``Rejection`` (final). The same code serves Stripe, localstripe and stripe-mock: only
``STRIPE_API_BASE`` differs.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

from payments_core import secret_checks
from payments_core.config import Settings, get_settings
from payments_core.contracts import STRIPE_API_ERROR, STRIPE_CARD_ERROR
from payments_core.errors import Rejection, TransientError

if TYPE_CHECKING:
    from payments_core.domain import Payment


@dataclass(frozen=True)
class IntentSnapshot:
    """What the service needs to know of a PaymentIntent (never its client secret)."""

    id: str
    status: str
    amount: int = 0
    amount_capturable: int = 0
    amount_received: int = 0
    metadata: dict[str, str] = field(default_factory=dict)
    failure_code: str | None = None
    decline_code: str | None = None
    failure_message: str | None = None
    next_action_url: str | None = None
    latest_charge: str | None = None
    created: int = 0

    @classmethod
    def from_stripe(cls, obj: Any) -> IntentSnapshot:
        data = obj.to_dict() if hasattr(obj, "to_dict") else dict(obj)
        error = data.get("last_payment_error") or {}
        next_action = data.get("next_action") or {}
        redirect = next_action.get("redirect_to_url") or {}
        charge = data.get("latest_charge")
        if isinstance(charge, dict):
            charge = charge.get("id")
        return cls(
            id=data["id"],
            status=data.get("status") or "",
            amount=int(data.get("amount") or 0),
            amount_capturable=int(data.get("amount_capturable") or 0),
            amount_received=int(data.get("amount_received") or 0),
            metadata={str(k): str(v) for k, v in (data.get("metadata") or {}).items()},
            failure_code=error.get("code"),
            decline_code=error.get("decline_code"),
            failure_message=error.get("message"),
            next_action_url=redirect.get("url"),
            latest_charge=charge,
            created=int(data.get("created") or 0),
        )


@dataclass(frozen=True)
class AccountSnapshot:
    """What a payout needs to know of a connected account: can it receive a transfer?"""

    id: str
    transfers_capability: str | None  # Stripe's capabilities.transfers: active, inactive, pending
    payouts_enabled: bool = False

    @property
    def can_receive_transfers(self) -> bool:
        # Stripe accepts a transfer to a connected account only while its transfers
        # capability is active; payouts_enabled is about the account's own bank payouts.
        return self.transfers_capability == "active"

    @classmethod
    def from_stripe(cls, obj: Any) -> AccountSnapshot:
        data = obj.to_dict() if hasattr(obj, "to_dict") else dict(obj)
        capabilities = data.get("capabilities") or {}
        transfers = capabilities.get("transfers") if isinstance(capabilities, dict) else None
        return cls(
            id=str(data["id"]),
            transfers_capability=transfers if isinstance(transfers, str) else None,
            payouts_enabled=bool(data.get("payouts_enabled")),
        )


# How far find_hold looks through a customer's PaymentIntents before giving up (and retrying
# later) rather than risk creating a second hold.
FIND_HOLD_MAX_PAGES = 20


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
# How far before the payment row a PaymentIntent of its order may have been created (clocks).
CREATED_BOUND_SLACK = timedelta(hours=1)


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


# Called on this thread before every request to Stripe (an order's lease renews itself here, so
# a holder that dies mid-request keeps the order until that request has ended).
_hooks = threading.local()


@contextmanager
def before_each_request(hook: Callable[[], None]) -> Iterator[None]:
    previous = getattr(_hooks, "before", None)
    _hooks.before = hook
    try:
        yield
    finally:
        _hooks.before = previous


def _before_request() -> None:
    hook = getattr(_hooks, "before", None)
    if hook is not None:
        hook()


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
    def intent_refunds(self, payment_intent_id: str) -> list[dict[str, Any]]: ...
    def connected_account(self, account_id: str) -> AccountSnapshot | None: ...


class StripeApiGateway:
    """The real gateway: stripe-python's StripeClient, with explicit timeouts."""

    def __init__(self, settings: Settings | None = None, api_key: str | None = None) -> None:
        self._settings = settings or get_settings()
        self._api_key = api_key
        self._client: Any = None
        self._client_key: str | None = None

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
        except (
            stripe.RateLimitError,
            stripe.APIConnectionError,
            stripe.AuthenticationError,
            stripe.PermissionError,
        ) as exc:
            raise TransientError(
                f"stripe unavailable: {type(exc).__name__}: {exc.user_message or exc}"
            ) from exc
        except stripe.IdempotencyError as exc:
            raise _AnswerSaved(f"stripe idempotency_error: {exc.user_message or exc}") from exc
        except stripe.StripeError as exc:
            status = exc.http_status or 0
            if status >= 500:
                raise _AnswerSaved(f"stripe error {status}: {exc.user_message or exc}") from exc
            if status in (0, 409, 429):  # 409: the key's first request is still executing
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
            look_up=lambda: self._find_hold_by_metadata(payment),
        )

    def _keyed(
        self, action: str, payment: Payment, *, send: Any, look_up: Any, look_first: bool = False
    ) -> Any:
        """Send with idempotency key attempt 0, 1, ...; before each new key (and before the
        first, with ``look_first``) look up what an earlier attempt may have done."""
        saved: _AnswerSaved | None = None
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
        return self._find_hold_by_metadata(payment)

    def _find_hold_by_metadata(self, payment: Payment) -> IntentSnapshot | None:
        """The order's PaymentIntent that holds or held money, preferring a live one."""
        intents = self.order_intents(payment)
        rank = {"requires_capture": 0, "succeeded": 1, "requires_action": 2, "processing": 3}
        return min(intents, key=lambda i: (rank.get(i.status, 9), -i.created), default=None)

    def order_intents(self, payment: Payment) -> list[IntentSnapshot]:
        """Every PaymentIntent of the order (its metadata names it), newest first: the
        customer's, listed from shortly before the payment row was written (not Search, which
        lags by up to an hour). TransientError when there are too many to rule any out."""
        if not payment.stripe_customer_id:
            return []
        params: dict[str, Any] = {"customer": payment.stripe_customer_id, "limit": 100}
        if isinstance(payment.created_at, datetime):
            params["created"] = {"gte": int((payment.created_at - CREATED_BOUND_SLACK).timestamp())}
        found: list[IntentSnapshot] = []
        for _ in range(FIND_HOLD_MAX_PAGES):
            page = self._call(self._stripe().payment_intents.list, params=params)
            for intent in page.data:
                snapshot = IntentSnapshot.from_stripe(intent)
                if snapshot.metadata.get("order_id") == payment.order_id:
                    found.append(snapshot)
            if not page.has_more or not page.data:
                return found
            params["starting_after"] = page.data[-1].id
        raise TransientError(
            f"customer has more than {FIND_HOLD_MAX_PAGES * 100} PaymentIntents since the order: "
            "cannot rule out an earlier hold"
        )

    def retrieve(self, payment_intent_id: str) -> IntentSnapshot:
        return IntentSnapshot.from_stripe(
            self._call(self._stripe().payment_intents.retrieve, payment_intent_id)
        )

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
                look_up=lambda: self._find_refund(payment),
                look_first=True,
            )
        )

    def _find_refund(self, payment: Payment) -> str | None:
        page = self._call(
            self._stripe().refunds.list, params={"payment_intent": _require_intent(payment), "limit": 100}
        )
        for refund in page.data:
            data = refund.to_dict()
            # A failed or canceled refund gave nothing back: it is not "the refund".
            if (data.get("metadata") or {}).get("payment_id") == payment.payment_id and data.get(
                "status"
            ) not in ("failed", "canceled"):
                return str(data["id"])
        return None

    def intent_refunds(self, payment_intent_id: str) -> list[dict[str, Any]]:
        """Every refund of the PaymentIntent: id, status, amount, metadata."""
        page = self._call(
            self._stripe().refunds.list, params={"payment_intent": payment_intent_id, "limit": 100}
        )
        return [refund.to_dict() for refund in page.data]

    def connected_account(self, account_id: str) -> AccountSnapshot | None:
        """The platform's view of a Connect account (GET /v1/accounts/{id}); None when Stripe
        says the platform has no such account: 404, or 403 ``account_invalid`` (the account
        does not exist or is not connected to this platform). Other refusals (a restricted key
        without the accounts read permission) are configuration errors: transient."""
        import stripe

        try:
            return AccountSnapshot.from_stripe(self._call(self._stripe().accounts.retrieve, account_id))
        except (TransientError, Rejection) as exc:
            cause = exc.__cause__
            if isinstance(cause, stripe.StripeError) and (
                cause.http_status in (400, 404) or cause.code == "account_invalid"
            ):
                return None
            raise

    def transfer(self, payment: Payment, amount_cents: int, destination: str) -> str:
        """Pay the runner, once: a transfer made by an earlier attempt (its answer lost to a
        crash, even days ago) is found by the order's transfer_group first."""
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
        """Every transfer of this payment (by the order's transfer_group and our metadata)."""
        page = self._call(
            self._stripe().transfers.list, params={"transfer_group": payment.order_id, "limit": 100}
        )
        return [
            data
            for data in (transfer.to_dict() for transfer in page.data)
            if data.get("transfer_group") == payment.order_id
            and (data.get("metadata") or {}).get("payment_id") == payment.payment_id
        ]

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
                look_up=lambda: self._find_reversal(transfer_id),
                look_first=True,
            )
        )

    def _find_reversal(self, transfer_id: str) -> str | None:
        transfer = self._call(self._stripe().transfers.retrieve, transfer_id).to_dict()
        reversals = (transfer.get("reversals") or {}).get("data") or []
        if transfer.get("reversed") or int(transfer.get("amount_reversed") or 0) > 0:
            return str(reversals[0]["id"]) if reversals else transfer_id
        return None


def _require_intent(payment: Payment) -> str:
    if not payment.payment_intent_id:
        raise ValueError(f"payment {payment.payment_id} has no PaymentIntent")
    return payment.payment_intent_id
