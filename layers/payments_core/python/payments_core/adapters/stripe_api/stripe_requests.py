"""One request to Stripe: stripe-python's client, the hooks run before every request, and
Stripe's errors translated into the service's kinds.

Apart from the gateway's money moves and lookups because every one of them sends its requests
the same way: the client is rebuilt when the secret rotates, an order's lease renews itself and
the command pool's pacer waits before each request (``before_each_request``), and an SDK
exception becomes ``TransientError`` (retry: typed ``StripeRateLimited`` or
``StripeUnreachable`` where the back-pressure needs to know), ``Rejection`` (final, a declined
card as ``CardDeclined``) or ``AnswerSaved`` (a key whose answer Stripe will replay)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from payments_core.adapters.stripe_api import secret_checks
from payments_core.config import Settings
from payments_core.domain.contracts import STRIPE_API_ERROR, STRIPE_CARD_ERROR
from payments_core.domain.errors import Rejection, TransientError


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


class StripeRateLimited(TransientError):
    """Stripe answered 429 (its rate or concurrency limit, or a lock timeout): nothing was
    processed, so the same key may be sent again after a backoff."""


class StripeUnreachable(TransientError):
    """The request timed out or the connection dropped: Stripe, or the way to it, is struggling."""


class AnswerSaved(TransientError):
    """Stripe answered this key with an error it will replay for a day (a 5xx, or
    ``idempotency_error``: the same key with other parameters): retrying the key cannot help."""


# The hooks run before every request to Stripe made on this thread (an order's lease renews
# itself there, so a holder that dies mid-request keeps the order until that request has ended;
# the command pool's pacer waits there for the request's turn).
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


class SdkClient:
    """stripe-python's StripeClient for the current secret key, with explicit timeouts: made on
    first use, made again when the secret rotates."""

    def __init__(self, settings: Settings, api_key: str | None = None) -> None:
        self._settings = settings
        self._api_key = api_key
        self._client: Any = None
        self._client_key: str | None = None

    def v1(self) -> Any:
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


def send(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)``, one request of stripe-python's, after this thread's hooks, with
    Stripe's errors translated."""
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
        raise StripeUnreachable(f"stripe unavailable: APIConnectionError: {exc.user_message or exc}") from exc
    except (stripe.AuthenticationError, stripe.PermissionError) as exc:
        raise TransientError(f"stripe unavailable: {type(exc).__name__}: {exc.user_message or exc}") from exc
    except stripe.IdempotencyError as exc:
        raise AnswerSaved(f"stripe idempotency_error: {exc.user_message or exc}") from exc
    except stripe.StripeError as exc:
        status = exc.http_status or 0
        if status >= 500:
            raise AnswerSaved(f"stripe error {status}: {exc.user_message or exc}") from exc
        if status == 429:
            raise StripeRateLimited(f"stripe error 429: {exc.user_message or exc}") from exc
        if status in (0, 409):  # 409: the key's first request is still executing
            raise TransientError(f"stripe error {status}: {exc.user_message or exc}") from exc
        raise Rejection(STRIPE_API_ERROR, exc.user_message or str(exc), stripe_code=exc.code) from exc
