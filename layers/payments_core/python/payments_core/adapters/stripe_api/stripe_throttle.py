"""Back-pressure on Stripe for the command pool: a share of the account's request rate and a
cap on requests in flight per function instance, and a 429 that slows everyone down instead of
failing the batch.

Stripe limits an account (100 requests/s live, 25/s in test mode, 25/s per endpoint unless
Stripe raised them, plus a cap on concurrent requests) and answers 429 beyond it. A 429 means
the request was not processed, so it is safe to send again with the same idempotency key.
``ThrottledStripe`` wraps any ``StripeGateway``:
- every request waits for its turn at the container's ``RequestPacer``: the account's budget
  for the function shared out statically, ``STRIPE_ACCOUNT_REQUESTS_PER_SECOND`` divided by
  ``STRIPE_BUDGET_CONTAINERS`` (how many containers can run at once: one per partition), so
  the containers together stay within it without talking to each other (a lookup and the
  call after it are two requests, each paced);
- at most ``limit`` calls at once, shared by every worker of the container (``StripeThrottle``);
- on a 429 the limit is halved (down to 1) and every caller waits out a backoff (exponential,
  with jitter); a timeout or dropped connection halves it too (not retried here); each success
  then raises the limit by one again, up to its ceiling;
- the call is retried while the invocation's remaining time allows another Stripe call;
  otherwise the ``TransientError`` goes up and the record is delivered again later.
Each call's latency (its wait for a turn included) is counted for the calling thread
(``take_stripe_seconds``), so the command path can report Stripe time per record.
"""

from __future__ import annotations

import functools
import random
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from payments_core.adapters.stripe_api.stripe_gateway import (
    StripeRateLimited,
    StripeUnreachable,
    before_each_request,
)
from payments_core.domain.errors import TransientError

if TYPE_CHECKING:
    from payments_core.adapters.stripe_api.stripe_gateway import IntentSnapshot, StripeGateway
    from payments_core.domain.payment import Payment

T = TypeVar("T")

_spent = threading.local()


def take_stripe_seconds() -> float:
    """Seconds this thread spent in Stripe calls since the last call (then reset)."""
    seconds = float(getattr(_spent, "seconds", 0.0))
    _spent.seconds = 0.0
    return seconds


def is_rate_limited(exc: BaseException) -> bool:
    """A 429 from Stripe (typed where the gateway catches the SDK's exception)."""
    return isinstance(exc, StripeRateLimited)


def is_overloaded(exc: BaseException) -> bool:
    """A timeout or a dropped connection on the way to Stripe."""
    return isinstance(exc, StripeUnreachable)


class RequestPacer:
    """At most ``per_second`` requests per second on average, spread evenly, with up to
    ``burst`` at once after a quiet spell (``per_second`` <= 0: no limit). Each caller reserves
    the next free turn under a lock and sleeps until it outside the lock (the generic cell rate
    algorithm), so many threads share one rate without a queue."""

    def __init__(
        self,
        per_second: float,
        *,
        burst: int = 1,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.interval = 1.0 / per_second if per_second > 0 else 0.0
        self._tolerance = (max(1, burst) - 1) * self.interval
        self._clock = clock
        self._sleep = sleep
        self._next = float("-inf")  # the turn after the last one given
        self._lock = threading.Lock()
        self.requests = 0
        self.waited_s = 0.0

    def wait(self, max_wait_s: float | None = None) -> float:
        """Sleep until this request's turn; returns the seconds slept. A turn further away than
        ``max_wait_s`` is not taken (TransientError: the request is not sent)."""
        with self._lock:
            now = self._clock()
            turn = max(self._next, now)
            wait = max(0.0, turn - self._tolerance - now)
            if max_wait_s is not None and wait > max_wait_s:
                raise TransientError(
                    f"Stripe request budget: the next turn is {wait:.1f} s away, later than this "
                    "invocation can wait; not sent"
                )
            self._next = turn + self.interval
            self.requests += 1
            self.waited_s += wait
        if wait > 0:
            self._sleep(wait)
        return wait


class StripeThrottle:
    """The container-wide limiter shared by every worker's ``ThrottledStripe``."""

    def __init__(
        self,
        max_in_flight: int,
        *,
        backoff_s: float = 0.25,
        backoff_max_s: float = 8.0,
        call_budget_s: float = 10.0,
        max_attempts: int = 8,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        pacer: RequestPacer | None = None,
    ) -> None:
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        self.pacer = pacer
        self.ceiling = max_in_flight
        self.limit = max_in_flight
        self.in_flight = 0
        self.most_in_flight = 0
        self.rate_limited = 0  # 429s seen
        self.overloaded = 0  # timeouts and dropped connections seen
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self.call_budget_s = call_budget_s  # time one more Stripe call may take (its timeout)
        self.max_attempts = max_attempts
        self.deadline: float | None = None  # monotonic time by which calls must be over
        self._paused_until = 0.0
        self._clock = clock
        self._sleep = sleep
        self._cond = threading.Condition()

    def set_deadline(self, deadline: float | None) -> None:
        """The current invocation's end, less what it needs after its last Stripe call."""
        self.deadline = deadline

    def _acquire(self) -> None:
        with self._cond:
            while True:
                wait = self._paused_until - self._clock()
                if wait <= 0 and self.in_flight < self.limit:
                    self.in_flight += 1
                    self.most_in_flight = max(self.most_in_flight, self.in_flight)
                    return
                self._cond.wait(timeout=wait if wait > 0 else None)

    def _release(self, *, rate_limited: bool, attempt: int, overloaded: bool = False) -> float:
        """Give the slot back; after a 429 returns how long to back off."""
        with self._cond:
            self.in_flight -= 1
            backoff = 0.0
            if overloaded:
                self.overloaded += 1
                self.limit = max(1, self.limit // 2)
            elif rate_limited:
                self.rate_limited += 1
                self.limit = max(1, self.limit // 2)
                backoff = min(self.backoff_max_s, self.backoff_s * 2**attempt)
                backoff *= 0.5 + random.random()  # jitter: workers do not come back in step
                self._paused_until = max(self._paused_until, self._clock() + backoff)
            elif self.limit < self.ceiling:
                self.limit += 1
            self._cond.notify_all()
            return backoff

    def _pace(self) -> None:
        """Before each request of a call: wait for its turn, if the invocation has time for it."""
        if self.pacer is None:
            return
        left = None if self.deadline is None else self.deadline - self._clock() - self.call_budget_s
        self.pacer.wait(None if left is None else max(0.0, left))

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        attempt = 0
        while True:
            self._acquire()
            started = self._clock()
            try:
                with before_each_request(self._pace):
                    result = fn(*args)
            except TransientError as exc:
                _spent.seconds = getattr(_spent, "seconds", 0.0) + self._clock() - started
                if not is_rate_limited(exc):
                    # a timeout or dropped connection: Stripe (or the way to it) is struggling,
                    # so fewer requests at once for a while; the record itself is retried later
                    self._release(rate_limited=False, attempt=attempt, overloaded=is_overloaded(exc))
                    raise
                backoff = self._release(rate_limited=True, attempt=attempt)
                out_of_time = (
                    self.deadline is not None and self._clock() + backoff + self.call_budget_s > self.deadline
                )
                if out_of_time or attempt + 1 >= self.max_attempts:
                    raise  # no time left for another try: the record is delivered again
                self._sleep(backoff)
                attempt += 1
                continue
            except BaseException:
                _spent.seconds = getattr(_spent, "seconds", 0.0) + self._clock() - started
                self._release(rate_limited=False, attempt=attempt)
                raise
            _spent.seconds = getattr(_spent, "seconds", 0.0) + self._clock() - started
            self._release(rate_limited=False, attempt=attempt)
            return result


class ThrottledStripe:
    """A ``StripeGateway`` whose every call goes through a shared ``StripeThrottle``."""

    def __init__(self, inner: StripeGateway, throttle: StripeThrottle) -> None:
        self.inner = inner
        self.throttle = throttle

    def create_hold(self, payment: Payment) -> IntentSnapshot:
        return self.throttle.call(self.inner.create_hold, payment)

    def find_hold(self, payment: Payment) -> IntentSnapshot | None:
        return self.throttle.call(self.inner.find_hold, payment)

    def retrieve(self, payment_intent_id: str) -> IntentSnapshot:
        return self.throttle.call(self.inner.retrieve, payment_intent_id)

    def capture(self, payment: Payment, amount_to_capture: int | None) -> IntentSnapshot:
        return self.throttle.call(self.inner.capture, payment, amount_to_capture)

    def cancel(self, payment: Payment) -> IntentSnapshot:
        return self.throttle.call(self.inner.cancel, payment)

    def refund(self, payment: Payment, amount_cents: int | None = None, *, redo: int = 0) -> str:
        return self.throttle.call(functools.partial(self.inner.refund, redo=redo), payment, amount_cents)

    def transfer(self, payment: Payment, amount_cents: int, destination: str) -> str:
        return self.throttle.call(self.inner.transfer, payment, amount_cents, destination)

    def find_transfer(self, payment: Payment) -> str | None:
        return self.throttle.call(self.inner.find_transfer, payment)

    def reverse_transfer(
        self, payment: Payment, amount_cents: int | None = None, *, transfer_id: str | None = None
    ) -> str:
        return self.throttle.call(
            functools.partial(self.inner.reverse_transfer, transfer_id=transfer_id), payment, amount_cents
        )

    def __getattr__(self, name: str) -> Any:
        # calls the gateway may gain (e.g. lookups by transfer_group) are throttled too
        attr = getattr(self.inner, name)
        if not callable(attr):
            return attr

        def throttled(*args: Any, **kwargs: Any) -> Any:
            return self.throttle.call(functools.partial(attr, **kwargs), *args)

        return throttled
