"""The account's Stripe budget shared out across containers (issue 19): each container paces
its requests to STRIPE_ACCOUNT_REQUESTS_PER_SECOND / STRIPE_BUDGET_CONTAINERS, every request
of a call (a lookup and the call after it) waiting its own turn. A fake clock; no Stripe."""

from __future__ import annotations

import dataclasses
import threading
import time
from typing import Any

import pytest
from payments_core.adapters.services import Services
from payments_core.adapters.stripe_api import stripe_gateway
from payments_core.adapters.stripe_api.stripe_throttle import RequestPacer, StripeThrottle, ThrottledStripe
from payments_core.config import get_settings
from payments_core.domain.errors import TransientError
from payments_core.entrypoints import commands


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(round(seconds, 9))
        self.now += seconds


def test_requests_are_spread_evenly_at_the_rate() -> None:
    clock = FakeClock()
    pacer = RequestPacer(5, clock=clock, sleep=clock.sleep)
    sent_at = []
    for _ in range(6):
        pacer.wait()
        sent_at.append(round(clock.now, 9))
    assert sent_at == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert pacer.requests == 6 and pacer.waited_s == pytest.approx(1.0)


def test_a_quiet_spell_saves_no_more_than_the_burst() -> None:
    clock = FakeClock()
    pacer = RequestPacer(10, burst=3, clock=clock, sleep=clock.sleep)
    clock.now = 60.0  # a minute without requests
    waits = [pacer.wait() for _ in range(5)]
    assert waits[:3] == [0.0, 0.0, 0.0], "the burst goes at once"
    assert waits[3:] == pytest.approx([0.1, 0.1]), "then one every 1/rate s"


def test_a_turn_too_far_away_is_not_taken() -> None:
    clock = FakeClock()
    pacer = RequestPacer(1, clock=clock, sleep=clock.sleep)
    pacer.wait()
    with pytest.raises(TransientError, match="Stripe request budget"):
        pacer.wait(max_wait_s=0.5)
    assert clock.slept == [] and pacer.requests == 1, "nothing reserved, nothing slept"
    assert pacer.wait(max_wait_s=1.0) == 1.0


def test_no_rate_means_no_wait() -> None:
    clock = FakeClock()
    pacer = RequestPacer(0, clock=clock, sleep=clock.sleep)
    assert [pacer.wait() for _ in range(100)] == [0.0] * 100


def test_threads_share_one_rate() -> None:
    pacer = RequestPacer(400)
    started = time.monotonic()
    threads = [threading.Thread(target=lambda: [pacer.wait() for _ in range(10)]) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert time.monotonic() - started >= 59 / 400 * 0.95, "60 turns at 400/s take at least 59 intervals"
    assert pacer.requests == 60


class TwoRequestGateway:
    """A gateway whose transfer makes two requests (a lookup, then the create), each announced
    to the request hooks as the real gateway's ``_call`` does."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.sent_at: list[float] = []

    def transfer(self, payment: Any, amount_cents: int, destination: str) -> str:
        for _ in range(2):
            stripe_gateway._before_request()
            self.sent_at.append(round(self.clock.now, 9))
        return "tr_1"


def test_every_request_of_a_throttled_call_waits_its_turn_and_the_outer_hook_runs_last() -> None:
    clock = FakeClock()
    pacer = RequestPacer(10, clock=clock, sleep=clock.sleep)
    inner = TwoRequestGateway(clock)
    stripe = ThrottledStripe(inner, StripeThrottle(4, clock=clock, sleep=clock.sleep, pacer=pacer))  # type: ignore[arg-type]
    renewed_at: list[float] = []
    with stripe_gateway.before_each_request(lambda: renewed_at.append(round(clock.now, 9))):  # the lease's
        stripe.transfer(None, 1299, "acct_1")
        stripe.transfer(None, 1299, "acct_1")
    assert inner.sent_at == [0.0, 0.1, 0.2, 0.3]
    assert renewed_at == inner.sent_at, "the lease is renewed after the wait, right before each request"
    assert pacer.requests == 4


def test_a_call_that_would_wait_past_the_invocation_is_not_sent() -> None:
    clock = FakeClock()
    pacer = RequestPacer(0.5, clock=clock, sleep=clock.sleep)
    throttle = StripeThrottle(4, clock=clock, sleep=clock.sleep, pacer=pacer, call_budget_s=10)
    throttle.set_deadline(11.0)
    inner = TwoRequestGateway(clock)
    with pytest.raises(TransientError, match="Stripe request budget"):
        ThrottledStripe(inner, throttle).transfer(None, 1299, "acct_1")  # type: ignore[arg-type]
    assert inner.sent_at == [0.0], "the second request's turn (2 s away) is past the deadline less a call"
    assert throttle.in_flight == 0


@pytest.mark.parametrize(("budget", "containers", "interval"), [(80.0, 1, 1 / 80), (100.0, 12, 12 / 100)])
def test_each_containers_pool_paces_to_its_static_share(
    budget: float, containers: int, interval: float
) -> None:
    settings = dataclasses.replace(
        get_settings(), stripe_account_requests_per_second=budget, stripe_budget_containers=containers
    )
    base = Services(db=None, stripe=None, publisher=None, settings=settings, users=object())  # type: ignore[arg-type]
    pool = commands.make_pool(base, 1)
    try:
        throttle = commands._throttle_of(pool)
        assert throttle is not None and throttle.pacer is not None
        assert throttle.pacer.interval == pytest.approx(interval)
    finally:
        pool.close()


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("STRIPE_ACCOUNT_REQUESTS_PER_SECOND", "0", "between 0.1 and 10000"),
        ("STRIPE_ACCOUNT_REQUESTS_PER_SECOND", "fast", "must be a number"),
        ("PAYOUT_ACCOUNT_CHECK_TTL_SECONDS", "-1", "between 0 and 86400"),
        ("PAYOUT_ACCOUNT_CHECK_TTL_SECONDS", "172800", "between 0 and 86400"),
    ],
)
def test_budget_settings_out_of_range_are_refused_with_the_range(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, message: str
) -> None:
    monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    try:
        with pytest.raises(ValueError, match=message):
            get_settings()
    finally:
        monkeypatch.delenv(name)
        get_settings.cache_clear()


def test_budget_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STRIPE_ACCOUNT_REQUESTS_PER_SECOND", "20")
    monkeypatch.setenv("STRIPE_BUDGET_CONTAINERS", "3")
    monkeypatch.setenv("PAYOUT_ACCOUNT_CHECK_TTL_SECONDS", "0")
    get_settings.cache_clear()
    try:
        settings = get_settings()
        assert settings.stripe_account_requests_per_second == 20.0
        assert settings.stripe_budget_containers == 3
        assert settings.payout_account_check_ttl_seconds == 0.0
    finally:
        get_settings.cache_clear()
