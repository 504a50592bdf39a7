"""Which Stripe failures slow the command pool down is decided by the error's type, set where
the Stripe SDK's exception is caught (``stripe_requests.send``), not by matching class names
as strings anywhere up a cause chain."""

from __future__ import annotations

from typing import Any

import pytest
import stripe
from payments_core.adapters.stripe_api.stripe_requests import StripeRateLimited, StripeUnreachable, send
from payments_core.adapters.stripe_api.stripe_throttle import (
    is_overloaded,
    is_rate_limited,
)
from payments_core.domain.errors import TransientError


def _translated(exc: Exception) -> BaseException:
    def fail() -> Any:
        raise exc

    with pytest.raises(TransientError) as caught:
        send(fail)
    return caught.value


def test_the_gateway_types_a_429_and_a_dropped_connection() -> None:
    limited = _translated(stripe.RateLimitError("Too many requests", http_status=429))
    assert isinstance(limited, StripeRateLimited) and is_rate_limited(limited) and not is_overloaded(limited)
    # a lock_timeout 429 can also come as a plain StripeError with status 429
    locked = _translated(stripe.StripeError("lock timeout", http_status=429))
    assert isinstance(locked, StripeRateLimited)
    dropped = _translated(stripe.APIConnectionError("Read timed out"))
    assert isinstance(dropped, StripeUnreachable) and is_overloaded(dropped) and not is_rate_limited(dropped)


def test_an_error_only_named_like_stripes_is_neither() -> None:
    class Timeout(Exception):
        """Some other library's timeout (a database, a socket), not Stripe's."""

    class RateLimitError(Exception):
        pass

    for cause in (Timeout("db statement timeout"), RateLimitError("someone else's limit")):
        try:
            raise TransientError("database busy") from cause
        except TransientError as exc:
            assert not is_rate_limited(exc) and not is_overloaded(exc)
