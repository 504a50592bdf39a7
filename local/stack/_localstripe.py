"""Run localstripe bound to 127.0.0.1 only (its own ``start()`` binds every interface).

Same behaviour as ``localstripe --from-scratch``: the pickled state of an earlier run is
never loaded, so each start is a clean Stripe account.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

from aiohttp import web
from localstripe import resources, server  # type: ignore[import-untyped]
from localstripe.errors import UserError  # type: ignore[import-untyped]
from localstripe.webhooks import schedule_webhook  # type: ignore[import-untyped]

from local.stack.campus_users import seed_accounts
from local.stack.settings import HOST

# Parameters real Stripe accepts on a PaymentIntent that localstripe rejects as "Unexpected".
# return_url is what Stripe redirects to after 3-D Secure; localstripe has no redirects (its
# `_authenticate` endpoint completes authentication), so it can safely ignore it.
_IGNORED_PAYMENT_INTENT_PARAMS = ("return_url",)


def _accept_real_stripe_parameters() -> None:
    original_init = resources.PaymentIntent.__init__

    def __init__(self: object, *args: object, **kwargs: object) -> None:
        for name in _IGNORED_PAYMENT_INTENT_PARAMS:
            kwargs.pop(name, None)
        original_init(self, *args, **kwargs)

    resources.PaymentIntent.__init__ = __init__

    # Real Stripe filters PaymentIntents by customer; the service uses it to find the hold an
    # interrupted attempt created (localstripe ignores idempotency keys, so this matters here).
    original_list = resources.PaymentIntent._api_list_all.__func__

    # Also by creation time (created[gte]), which the service bounds its lookups with.
    def _api_list_all(
        cls: type, url: str, customer: str | None = None, created: Any = None, **kwargs: object
    ) -> object:
        listing = original_list(cls, url, **kwargs)
        if customer is not None:
            listing._list = [pi for pi in listing._list if pi.customer == customer]
        if isinstance(created, dict) and "gte" in created:
            since = int(created["gte"])
            listing._list = [pi for pi in listing._list if int(pi.created) >= since]
        return listing

    resources.PaymentIntent._api_list_all = classmethod(_api_list_all)

    # Refunds listed by PaymentIntent from a creation time (created[gte]), as the service's
    # lookups ask; localstripe refuses the parameter.
    original_refunds = resources.Refund._api_list_all.__func__

    def _refunds_list_all(cls: type, url: str, created: Any = None, **kwargs: object) -> object:
        listing = original_refunds(cls, url, **kwargs)
        if isinstance(created, dict) and "gte" in created:
            since = int(created["gte"])
            listing._list = [r for r in listing._list if int(r.created) >= since]
        return listing

    resources.Refund._api_list_all = classmethod(_refunds_list_all)

    # Real Stripe announces a successful manual-capture authorization (including one completed
    # by 3-D Secure) with payment_intent.amount_capturable_updated; localstripe sends nothing
    # until capture. Send what Stripe sends, so the local webhook path is the real one.
    original_create_charge = resources.PaymentIntent._create_charge

    def _create_charge(self: Any, *args: Any, **kwargs: Any) -> Any:
        result = original_create_charge(self, *args, **kwargs)
        if self.status == "requires_capture":
            schedule_webhook(resources.Event("payment_intent.amount_capturable_updated", self))
        return result

    resources.PaymentIntent._create_charge = _create_charge

    # Real Stripe's PaymentIntents (in answers and in webhooks) say how much is held and how
    # much was captured; localstripe's omit both, which hides a partial capture's amount.
    original_capture = resources.Charge._capture

    def _capture(self: Any, amount: Any = None, on_success: Any = None) -> Any:
        # Real Stripe captures only a PaymentIntent that requires capture; localstripe captures
        # the charge of a canceled one too (and still calls the PaymentIntent canceled).
        intent_id = getattr(self, "payment_intent", None)
        if intent_id:
            status = resources.PaymentIntent._api_retrieve(intent_id).status
            if status != "requires_capture":
                raise UserError(
                    400,
                    f"This PaymentIntent could not be captured because it has a status of {status}.",
                    contents={"code": "payment_intent_unexpected_state"},
                )
        # set first: the payment_intent.succeeded webhook is built during the capture
        self._amount_captured = self.amount if amount is None else int(amount)
        return original_capture(self, amount, on_success)

    resources.Charge._capture = _capture
    resources.PaymentIntent.amount_capturable = property(
        lambda self: self.amount if self.status == "requires_capture" else 0
    )
    resources.PaymentIntent.amount_received = property(
        lambda self: (
            getattr(self.latest_charge, "_amount_captured", self.amount) if self.status == "succeeded" else 0
        )
    )


class Account(resources.StripeObject):  # type: ignore[misc]
    """Connect accounts, which localstripe lacks: ``POST /v1/accounts``, ``GET /v1/accounts/{id}``
    (404 for an account the platform does not have, as Stripe answers), ``POST
    /v1/accounts/{id}`` (update), ``GET /v1/accounts``. As in Stripe, an account has the
    ``transfers`` capability only when it was requested (``capabilities[transfers][requested]=true``);
    here a requested capability is ``active`` at once (Stripe's test mode after onboarding with
    test data), and can be changed with ``capabilities[transfers][requested]=false`` (then
    ``inactive``). The seeded runners' accounts (``local.stack.campus_users``) exist from the start."""

    object = "account"
    _id_prefix = "acct_"

    def __init__(
        self,
        type: str | None = None,
        country: str | None = None,
        email: str | None = None,
        capabilities: dict[str, Any] | None = None,
        business_type: str | None = None,
        metadata: dict[str, str] | None = None,
        id: str | None = None,
    ) -> None:
        super().__init__(id=id)
        self.type = type or "express"
        self.country = country or "SG"
        self.email = email
        self.business_type = business_type
        self.metadata = metadata or {}
        self.capabilities: dict[str, str] = {}
        self._set_capabilities(capabilities or {})

    def _set_capabilities(self, capabilities: dict[str, Any]) -> None:
        for name, wanted in capabilities.items():
            requested = str((wanted or {}).get("requested", "")).lower() == "true"
            if requested:
                self.capabilities[name] = "active"
            elif name in self.capabilities:
                self.capabilities[name] = "inactive"
        active = self.capabilities.get("transfers") == "active"
        self.charges_enabled = active
        self.payouts_enabled = active
        self.details_submitted = active

    def _update(self, capabilities: dict[str, Any] | None = None, **data: Any) -> None:
        for key in ("email", "business_type", "metadata"):
            if key in data:
                setattr(self, key, data[key])
        self._set_capabilities(capabilities or {})

    @classmethod
    def _api_create(cls, **data: Any) -> Any:
        data.pop("id", None)
        return cls(**data)


def _add_connect_accounts() -> None:
    """Serve Account at Stripe's routes; create the seeded runners' accounts."""
    for method, url, make in (
        ("POST", "/v1/accounts", server.api_create),
        ("GET", "/v1/accounts/{id}", server.api_retrieve),
        ("POST", "/v1/accounts/{id}", server.api_update),
        ("GET", "/v1/accounts", server.api_list_all),
    ):
        server.app.router.add_route(method, url, make(Account, url))
    for account_id in seed_accounts():
        Account(id=account_id, capabilities={"transfers": {"requested": "true"}})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=8420)
    parser.add_argument("--host", default=HOST, help="bind address (0.0.0.0 only inside a container)")
    parser.add_argument("--from-scratch", action="store_true", help="accepted for parity; always true")
    args = parser.parse_args()
    _accept_real_stripe_parameters()
    _add_connect_accounts()

    access = logging.getLogger("aiohttp.access")
    access.setLevel(logging.DEBUG)
    access.addHandler(logging.StreamHandler())
    web.run_app(server.app, host=args.host, port=args.port, access_log=access, print=print)


if __name__ == "__main__":
    main()
