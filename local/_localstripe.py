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
from localstripe.webhooks import schedule_webhook  # type: ignore[import-untyped]

from local.settings import HOST

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=8420)
    parser.add_argument("--host", default=HOST, help="bind address (0.0.0.0 only inside a container)")
    parser.add_argument("--from-scratch", action="store_true", help="accepted for parity; always true")
    args = parser.parse_args()
    _accept_real_stripe_parameters()

    access = logging.getLogger("aiohttp.access")
    access.setLevel(logging.DEBUG)
    access.addHandler(logging.StreamHandler())
    web.run_app(server.app, host=args.host, port=args.port, access_log=access, print=print)


if __name__ == "__main__":
    main()
