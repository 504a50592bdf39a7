"""Stripe lookups: what an earlier attempt did at Stripe, and what Stripe says of an account.

Stripe's list endpoints cannot filter on metadata, so each list is narrowed by what Stripe can
filter on (the customer, the transfer_group, the PaymentIntent) and by ``created`` (from
shortly before the payment row was written: nothing of the order can be older), and the order's
own objects are picked out of the page by their metadata. Not Search, which lags by up to an
hour. Used by ``StripeApiGateway`` (``stripe_gateway``), whose ``_call`` sends each request.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from payments_core.adapters.stripe_api.stripe_objects import AccountSnapshot, IntentSnapshot
from payments_core.domain.errors import Rejection, TransientError

if TYPE_CHECKING:
    from payments_core.domain.payment import Payment

# How far find_hold looks through a customer's PaymentIntents before giving up (and retrying
# later) rather than risk creating a second hold.
FIND_HOLD_MAX_PAGES = 20
# How far before the payment row an object of its order may have been created (clocks).
CREATED_BOUND_SLACK = timedelta(hours=1)
# Which of an order's PaymentIntents holds (or held) its money, best first.
_HOLD_RANK = {"requires_capture": 0, "succeeded": 1, "requires_action": 2, "processing": 3}


def created_since(payment: Payment) -> int | None:
    """The earliest ``created`` (Unix seconds) an object of the payment's order can have: the
    payment row's creation less the slack; None when the row's time is unknown (a payment not
    read from the database)."""
    if not isinstance(payment.created_at, datetime):
        return None
    return int((payment.created_at - CREATED_BOUND_SLACK).timestamp())


class StripeLookups:
    """Reads only: ``request(fn, *args, **kwargs)`` sends one request (translating Stripe's
    errors), ``client()`` is stripe-python's ``StripeClient.v1``."""

    def __init__(self, request: Callable[..., Any], client: Callable[[], Any]) -> None:
        self._request = request
        self._client = client

    def _list(self, resource: str, params: dict[str, Any], since: int | None) -> Any:
        if since is not None:
            params["created"] = {"gte": since}
        return self._request(getattr(self._client(), resource).list, params=params)

    def retrieve(self, payment_intent_id: str) -> IntentSnapshot:
        return IntentSnapshot.from_stripe(
            self._request(self._client().payment_intents.retrieve, payment_intent_id)
        )

    def hold_by_metadata(self, payment: Payment) -> IntentSnapshot | None:
        """The order's PaymentIntent that holds or held money, preferring a live one."""
        intents = self.order_intents(payment)
        return min(intents, key=lambda i: (_HOLD_RANK.get(i.status, 9), -i.created), default=None)

    def order_intents(self, payment: Payment) -> list[IntentSnapshot]:
        """Every PaymentIntent of the order (its metadata names it), newest first: the
        customer's since the payment row. TransientError when there are too many to rule any out."""
        if not payment.stripe_customer_id:
            return []
        params: dict[str, Any] = {"customer": payment.stripe_customer_id, "limit": 100}
        since = created_since(payment)
        found: list[IntentSnapshot] = []
        for _ in range(FIND_HOLD_MAX_PAGES):
            page = self._list("payment_intents", params, since)
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

    def order_transfers(self, payment: Payment) -> list[dict[str, Any]]:
        """Every transfer of this payment (by the order's transfer_group and our metadata)."""
        params = {"transfer_group": payment.order_id, "limit": 100}
        page = self._list("transfers", params, created_since(payment))
        return [
            data
            for data in (transfer.to_dict() for transfer in page.data)
            if data.get("transfer_group") == payment.order_id
            and (data.get("metadata") or {}).get("payment_id") == payment.payment_id
        ]

    def refund_of(self, payment: Payment) -> str | None:
        """This payment's refund that gives (or will give) money back, if one was made."""
        if not payment.payment_intent_id:
            raise ValueError(f"payment {payment.payment_id} has no PaymentIntent")
        refunds = self.intent_refunds(payment.payment_intent_id, since=created_since(payment))
        for data in refunds:
            # A failed or canceled refund gave nothing back: it is not "the refund".
            if (data.get("metadata") or {}).get("payment_id") == payment.payment_id and data.get(
                "status"
            ) not in ("failed", "canceled"):
                return str(data["id"])
        return None

    def intent_refunds(self, payment_intent_id: str, *, since: int | None = None) -> list[dict[str, Any]]:
        """Every refund of the PaymentIntent created since ``since`` (Unix seconds), if given."""
        params = {"payment_intent": payment_intent_id, "limit": 100}
        page = self._list("refunds", params, since)
        return [refund.to_dict() for refund in page.data]

    def reversal_of(self, transfer_id: str) -> str | None:
        """A reversal of the transfer, if it was (partly) reversed already."""
        transfer = self._request(self._client().transfers.retrieve, transfer_id).to_dict()
        reversals = (transfer.get("reversals") or {}).get("data") or []
        if transfer.get("reversed") or int(transfer.get("amount_reversed") or 0) > 0:
            return str(reversals[0]["id"]) if reversals else transfer_id
        return None

    def connected_account(self, account_id: str) -> AccountSnapshot | None:
        """The platform's view of a Connect account (GET /v1/accounts/{id}); None when Stripe
        says the platform has no such account: 404, or 403 ``account_invalid`` (the account
        does not exist or is not connected to this platform). Other refusals (a restricted key
        without the accounts read permission) are configuration errors: transient."""
        import stripe

        try:
            return AccountSnapshot.from_stripe(self._request(self._client().accounts.retrieve, account_id))
        except (TransientError, Rejection) as exc:
            cause = exc.__cause__
            if isinstance(cause, stripe.StripeError) and (
                cause.http_status in (400, 404) or cause.code == "account_invalid"
            ):
                return None
            raise
