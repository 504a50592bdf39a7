"""The bench's session sampler (issue 16): ratios only over samples with Stripe requests in
flight, each sample divided by its own in-flight count."""

from __future__ import annotations

from local.doubles.db_activity import Backend, InFlightSampler, Sample


def test_summary_relates_busy_sessions_to_the_requests_in_flight_at_each_sample() -> None:
    sampler = InFlightSampler(progress=lambda: (0, 0))
    sampler.samples = [
        Sample(in_flight=0, busy=5, advisory=5, idle_in_transaction=0, active=0),  # not during a call
        Sample(in_flight=2, busy=2, advisory=2, idle_in_transaction=0, active=0),
        Sample(in_flight=4, busy=1, advisory=0, idle_in_transaction=1, active=0),
        Sample(in_flight=1, busy=0, advisory=0, idle_in_transaction=0, active=0),
    ]
    seen = sampler.summary()
    assert (seen.samples, seen.during_calls) == (4, 3)
    assert seen.busy_mean == (1 + 0.25 + 0) / 3 and seen.busy_max == 1
    assert seen.advisory_mean == 1 / 3 and seen.advisory_max == 1
    assert seen.nonzero_share == 2 / 3
    assert seen.in_flight_mean == 7 / 3


def test_no_sample_during_a_call_gives_zeros_not_an_error() -> None:
    sampler = InFlightSampler(progress=lambda: (0, 0))
    sampler.samples = [Sample(in_flight=0, busy=3, advisory=3, idle_in_transaction=0, active=0)]
    seen = sampler.summary()
    assert (seen.during_calls, seen.busy_mean, seen.busy_max, seen.nonzero_share) == (0, 0.0, 0.0, 0.0)


def test_an_idle_session_outside_a_transaction_without_locks_is_not_busy() -> None:
    assert not Backend(1, "idle", False, False, False).busy
    assert Backend(1, "idle", False, True, False).busy  # the session advisory lock
    assert Backend(1, "idle in transaction", True, False, False).busy
    assert Backend(1, "active", True, False, True).busy
