"""Stripe behind a small gateway: the only module that talks to Stripe.

Every call that moves money carries a deterministic idempotency key derived from the payment,
so a retried or redelivered request returns Stripe's first answer instead of acting twice.
Errors are translated into the service's two kinds: ``TransientError`` (retry) and
``Rejection`` (final). The same code serves Stripe, localstripe and stripe-mock: only
``STRIPE_API_BASE`` differs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
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


def idempotency_key(action: str, payment: Payment) -> str:
    # Keyed by the order for the create (one hold per order, whatever the payment row), and by
    # the payment for every later step.
    subject = payment.order_id if action == "authorize" else payment.payment_id
    return f"campusg-payments:{action}:{subject}"


class StripeGateway(Protocol):
    def create_hold(self, payment: Payment) -> IntentSnapshot: ...
    def find_hold(self, payment: Payment) -> IntentSnapshot | None: ...
    def retrieve(self, payment_intent_id: str) -> IntentSnapshot: ...
    def capture(self, payment: Payment, amount_to_capture: int | None) -> IntentSnapshot: ...
    def cancel(self, payment: Payment) -> IntentSnapshot: ...
    def refund(self, payment: Payment, amount_cents: int) -> str: ...
    def transfer(self, payment: Payment, amount_cents: int, destination: str) -> str: ...
    def reverse_transfer(self, payment: Payment, amount_cents: int) -> str: ...


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
        except stripe.StripeError as exc:
            status = exc.http_status or 0
            if status >= 500 or status in (0, 409, 429):
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
        options = {"idempotency_key": idempotency_key("authorize", payment)}
        intent = self._call(self._stripe().payment_intents.create, params=params, options=options)
        return IntentSnapshot.from_stripe(intent)

    def find_hold(self, payment: Payment) -> IntentSnapshot | None:
        """The PaymentIntent an earlier, interrupted attempt created for this order, if any.
        Real Stripe would also return it for the same idempotency key; emulators that ignore
        keys are covered by this lookup through the order's metadata."""
        if payment.payment_intent_id:
            return self.retrieve(payment.payment_intent_id)
        if not payment.stripe_customer_id:
            return None
        params: dict[str, Any] = {"customer": payment.stripe_customer_id, "limit": 100}
        for _ in range(FIND_HOLD_MAX_PAGES):
            page = self._call(self._stripe().payment_intents.list, params=params)
            for intent in page.data:
                snapshot = IntentSnapshot.from_stripe(intent)
                if snapshot.metadata.get("order_id") == payment.order_id:
                    return snapshot
            if not page.has_more or not page.data:
                return None
            params["starting_after"] = page.data[-1].id
        raise TransientError(
            f"customer has more than {FIND_HOLD_MAX_PAGES * 100} PaymentIntents: cannot rule out an earlier hold"
        )

    def retrieve(self, payment_intent_id: str) -> IntentSnapshot:
        return IntentSnapshot.from_stripe(
            self._call(self._stripe().payment_intents.retrieve, payment_intent_id)
        )

    def capture(self, payment: Payment, amount_to_capture: int | None) -> IntentSnapshot:
        params = {"amount_to_capture": amount_to_capture} if amount_to_capture else {}
        intent = self._call(
            self._stripe().payment_intents.capture,
            _require_intent(payment),
            params=params,
            options={"idempotency_key": idempotency_key("capture", payment)},
        )
        return IntentSnapshot.from_stripe(intent)

    def cancel(self, payment: Payment) -> IntentSnapshot:
        intent = self._call(
            self._stripe().payment_intents.cancel,
            _require_intent(payment),
            options={"idempotency_key": idempotency_key("cancel", payment)},
        )
        return IntentSnapshot.from_stripe(intent)

    def refund(self, payment: Payment, amount_cents: int) -> str:
        refund = self._call(
            self._stripe().refunds.create,
            params={"payment_intent": _require_intent(payment), "amount": amount_cents},
            options={"idempotency_key": idempotency_key("refund", payment)},
        )
        return str(refund.id)

    def transfer(self, payment: Payment, amount_cents: int, destination: str) -> str:
        transfer = self._call(
            self._stripe().transfers.create,
            params={
                "amount": amount_cents,
                "currency": payment.currency,
                "destination": destination,
                "transfer_group": payment.order_id,
                "metadata": {"order_id": payment.order_id, "payment_id": payment.payment_id},
            },
            options={"idempotency_key": idempotency_key("transfer", payment)},
        )
        return str(transfer.id)

    def reverse_transfer(self, payment: Payment, amount_cents: int) -> str:
        if not payment.transfer_id:
            raise ValueError("payment has no transfer to reverse")
        reversal = self._call(
            self._stripe().transfers.reversals.create,
            payment.transfer_id,
            params={"amount": amount_cents},
            options={"idempotency_key": idempotency_key("reverse-transfer", payment)},
        )
        return str(reversal.id)


def _require_intent(payment: Payment) -> str:
    if not payment.payment_intent_id:
        raise ValueError(f"payment {payment.payment_id} has no PaymentIntent")
    return payment.payment_intent_id
