"""The batch rules (payments_core.entrypoints.batch) and Stripe back-pressure (payments_core.adapters.stripe_api.stripe_throttle),
with fake records, handlers and clocks: order per key, concurrency across keys, what is
reported after a failure or when time runs out, one thread per resource."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from payments_core.adapters.stripe_api.stripe_requests import StripeRateLimited, StripeUnreachable
from payments_core.adapters.stripe_api.stripe_throttle import StripeThrottle, ThrottledStripe, is_rate_limited
from payments_core.domain.errors import TransientError
from payments_core.entrypoints.batch import Item, items_of, to_report
from payments_core.entrypoints.worker_pool import WorkerPool

REPO = Path(__file__).resolve().parents[2]


def items(*spec: tuple[int, int, str]) -> list[Item]:
    """(partition, offset, key) triples; the key travels as the record."""
    return [Item(f"payment_commands-{p}", o, key) for p, o, key in spec]


def reported(outcome: Any) -> list[tuple[str, int]]:
    return [(i.partition[-1:], i.offset) for i in outcome.reported]


class Recorder:
    """A handler that records when each record started and ended, on which thread and with
    which resource; ``fail`` names (partition, offset) pairs that raise."""

    def __init__(self, fail: set[tuple[int, int]] = frozenset(), hold: float = 0.0) -> None:
        self.fail = fail
        self.hold = hold
        self.lock = threading.Lock()
        self.events: list[tuple[str, Item]] = []
        self.threads_of: dict[int, set[int]] = defaultdict(set)

    def __call__(self, resource: Any, item: Item) -> str:
        with self.lock:
            self.events.append(("start", item))
            self.threads_of[id(resource)].add(threading.get_ident())
        if self.hold:
            time.sleep(self.hold)  # only widens windows; no assertion depends on it
        with self.lock:
            self.events.append(("end", item))
        if (int(item.partition[-1]), item.offset) in self.fail:
            raise TransientError("simulated")
        return str(item.record)

    def started(self) -> list[tuple[int, int]]:
        return [(int(i.partition[-1]), i.offset) for kind, i in self.events if kind == "start"]


def pool(size: int) -> WorkerPool[object]:
    return WorkerPool(size, lambda slot: object())


@pytest.mark.parametrize("size", [1, 2, 16])
def test_records_of_one_key_run_one_after_the_other_in_partition_order(size: int) -> None:
    batch = items(
        *[(0, o, f"order-{o % 3}") for o in range(30)], *[(1, o, f"order-{o % 3}") for o in range(5)]
    )
    handler = Recorder(hold=0.001)
    outcome = pool(size).run(batch, handler, key_of=lambda i: i.record)
    assert outcome.reported == []
    running: dict[str, Item] = {}
    seen: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for kind, item in handler.events:
        if kind == "start":
            assert item.record not in running, f"two records of {item.record} at once"
            running[item.record] = item
            seen[item.record].append((item.partition, item.offset))
        else:
            del running[item.record]
    for key, order in seen.items():
        for partition in {p for p, _ in order}:
            offsets = [o for p, o in order if p == partition]
            assert offsets == sorted(offsets), f"{key} out of partition order: {offsets}"


def test_different_keys_overlap_and_the_pool_bounds_them() -> None:
    barrier = threading.Barrier(4, timeout=10)
    in_flight = []
    lock = threading.Lock()
    now = [0]

    def handler(resource: object, item: Item) -> None:
        with lock:
            now[0] += 1
            in_flight.append(now[0])
        if item.offset < 4:
            barrier.wait()  # breaks (and fails the record) unless 4 records run at once
        with lock:
            now[0] -= 1

    outcome = pool(4).run(
        items(*[(0, o, f"order-{o}") for o in range(12)]), handler, key_of=lambda i: i.record
    )
    assert outcome.reported == [], [f.error for f in outcome.finished if not f.ok]
    assert outcome.most_in_flight == 4
    assert max(in_flight) == 4, "never more records at once than slots"


def test_pool_of_one_is_one_at_a_time_in_event_order_on_the_calling_thread() -> None:
    batch = items((0, 5, "a"), (0, 6, "b"), (1, 2, "a"), (1, 3, "c"))
    handler = Recorder()
    outcome = pool(1).run(batch, handler, key_of=lambda i: pytest.fail("no key needed one at a time"))
    assert handler.started() == [(0, 5), (0, 6), (1, 2), (1, 3)]
    assert [e[0] for e in handler.events] == ["start", "end"] * 4
    assert handler.threads_of and all(t == {threading.get_ident()} for t in handler.threads_of.values())
    assert outcome.reported == [] and outcome.most_in_flight == 1


@pytest.mark.parametrize("size", [1, 8])
def test_a_failure_reports_its_offset_and_everything_after_it_and_stops_its_partition(size: int) -> None:
    # partition 0 fails at offset 11; partition 1 is untouched by it
    batch = items((0, 10, "a"), (0, 11, "b"), (0, 12, "b"), (0, 13, "c"), (1, 40, "d"), (1, 41, "b"))
    handler = Recorder(fail={(0, 11)})
    outcome = pool(size).run(batch, handler, key_of=lambda i: i.record)
    assert reported(outcome) == [("0", 11), ("0", 12), ("0", 13)]
    started = handler.started()
    assert (0, 12) not in started, "a later record of the failed order never runs ahead of it"
    assert (1, 40) in started and (1, 41) in started, "other partitions go on"
    if size == 1:
        assert (0, 13) not in started, "nothing of the partition starts after its failure"
    assert outcome.batch_item_failures() == {
        "batchItemFailures": [
            {"itemIdentifier": {"partition": "payment_commands-0", "offset": o}} for o in (11, 12, 13)
        ]
    }


def test_no_record_of_a_failed_partition_starts_after_the_failure_is_known() -> None:
    """o0 (order a) fails while o2 (order b) runs; o1 (order a) and o3 (order c) must then never
    start, and o2, although it finished, is reported because it comes after o0."""
    o2_started, failure_known = threading.Event(), threading.Event()
    ran: list[int] = []

    def handler(resource: object, item: Item) -> None:
        ran.append(item.offset)
        if item.offset == 0:
            assert o2_started.wait(10)
            raise TransientError("database unreachable")
        if item.offset == 2:
            o2_started.set()
            assert failure_known.wait(10)

    batch = items((0, 0, "a"), (0, 1, "a"), (0, 2, "b"), (0, 3, "c"), (0, 4, "d"))
    outcome = pool(2).run(batch, handler, key_of=lambda i: i.record, on_failure=lambda f: failure_known.set())
    assert sorted(ran) == [0, 2]
    assert reported(outcome) == [("0", 0), ("0", 1), ("0", 2), ("0", 3), ("0", 4)]
    assert [f.item.offset for f in outcome.finished if f.ok] == [2]


@pytest.mark.parametrize("size", [1, 4])
def test_out_of_time_starts_nothing_more_and_reports_the_rest(size: int) -> None:
    budget = [3]

    def can_start() -> bool:
        budget[0] -= 1
        return budget[0] >= 0

    batch = items(*[(0, o, f"k{o}") for o in range(6)], (1, 0, "x"))
    handler = Recorder()
    outcome = pool(size).run(batch, handler, key_of=lambda i: i.record, can_start=can_start)
    assert len(handler.started()) == 3
    assert outcome.out_of_time and outcome.not_started == 4
    assert reported(outcome) == [("0", 3), ("0", 4), ("0", 5), ("1", 0)]


def test_a_key_that_cannot_be_resolved_fails_its_record_without_running_it() -> None:
    def key_of(item: Item) -> str:
        if item.offset == 1:
            raise TransientError("database unreachable: cannot find the payment's order")
        return item.record

    handler = Recorder()
    outcome = pool(4).run(items((0, 0, "a"), (0, 1, "?"), (0, 2, "c")), handler, key_of=key_of)
    assert (0, 1) not in handler.started()
    assert reported(outcome)[0] == ("0", 1)


def test_each_resource_stays_on_one_thread_across_invocations_and_is_closed() -> None:
    closed: list[object] = []
    made: list[int] = []

    def make(slot: int) -> object:
        made.append(slot)
        return object()

    workers: WorkerPool[object] = WorkerPool(3, make, closed.append)
    handler = Recorder(hold=0.001)
    for run in range(4):
        batch = items(*[(0, o, f"k{o % 5}") for o in range(run * 20, run * 20 + 20)])
        assert workers.run(batch, handler, key_of=lambda i: i.record).reported == []
    assert len(made) <= 3, "slots made once, then kept between invocations"
    assert all(len(threads) == 1 for threads in handler.threads_of.values()), "no resource on two threads"
    workers.close()
    assert len(closed) == len(made)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 2), st.sampled_from("abcdef"), st.booleans()), min_size=1, max_size=25),
    st.sampled_from([1, 2, 5]),
)
def test_reported_is_the_lowest_unfinished_offset_and_all_after_it(
    spec: list[tuple[int, str, bool]], size: int
) -> None:
    offsets: dict[int, int] = defaultdict(int)
    batch, failing = [], set()
    for partition, key, fails in spec:
        offset = offsets[partition]
        offsets[partition] += 1
        batch.append(Item(f"t-{partition}", offset, key))
        if fails:
            failing.add((partition, offset))
    handler = Recorder(fail=failing)
    outcome = pool(size).run(batch, handler, key_of=lambda i: i.record)
    ok = {(f.item.partition, f.item.offset) for f in outcome.finished if f.ok}
    for partition in {i.partition for i in batch}:
        mine = [i for i in batch if i.partition == partition]
        unfinished = [i.offset for i in mine if (partition, i.offset) not in ok]
        expected = [i.offset for i in mine if unfinished and i.offset >= min(unfinished)]
        assert [i.offset for i in outcome.reported if i.partition == partition] == expected
        if unfinished:
            first_failed = min(unfinished)
            later_same_key = {
                i.offset for i in mine if i.offset > first_failed and i.record == mine[first_failed].record
            }
            assert not later_same_key & {o for p, o in handler.started() if f"t-{p}" == partition}


def test_items_and_report_keep_the_mapping_shape() -> None:
    event = {
        "records": {
            "payment_commands-1": [{"offset": 7, "value": "e30="}, {"offset": 8, "value": "e30="}],
            "payment_commands-0": [{"offset": 3, "value": "e30="}],
        }
    }
    batch = items_of(event)
    assert [(i.partition, i.offset) for i in batch] == [
        ("payment_commands-1", 7),
        ("payment_commands-1", 8),
        ("payment_commands-0", 3),
    ]
    assert to_report(batch, {0, 2}) == [batch[1]]


# ---- Stripe back-pressure ----------------------------------------------------------------------


def rate_limited() -> TransientError:
    return StripeRateLimited("stripe unavailable: RateLimitError: Too many requests")


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


class FlakyStripe:
    def __init__(self, answers: list[Any]) -> None:
        self.answers = answers
        self.calls = 0

    def retrieve(self, payment_intent_id: str) -> Any:
        self.calls += 1
        answer = self.answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer


def test_a_429_is_retried_with_growing_backoff_and_slows_the_pool() -> None:
    clock = FakeClock()
    throttle = StripeThrottle(8, backoff_s=0.25, clock=clock, sleep=clock.sleep, call_budget_s=10)
    throttle.set_deadline(100.0)
    stripe = FlakyStripe([rate_limited(), rate_limited(), "pi_ok"])
    assert ThrottledStripe(stripe, throttle).retrieve("pi_1") == "pi_ok"  # type: ignore[arg-type]
    assert stripe.calls == 3
    assert len(clock.slept) == 2 and clock.slept[1] > clock.slept[0] * 1.0 / 3, clock.slept
    assert throttle.rate_limited == 2
    assert throttle.limit == 8 // 2 // 2 + 1, "halved per 429, raised by one per success"


def test_a_429_without_time_for_another_call_fails_the_record() -> None:
    clock = FakeClock()
    throttle = StripeThrottle(4, clock=clock, sleep=clock.sleep, call_budget_s=10)
    throttle.set_deadline(5.0)  # less than one more Stripe call
    stripe = FlakyStripe([rate_limited(), "never"])
    with pytest.raises(TransientError):
        ThrottledStripe(stripe, throttle).retrieve("pi_1")  # type: ignore[arg-type]
    assert stripe.calls == 1 and clock.slept == []


def test_other_transient_errors_are_not_retried_here() -> None:
    throttle = StripeThrottle(4)
    stripe = FlakyStripe([TransientError("stripe error 500"), "never"])
    with pytest.raises(TransientError, match="500"):
        ThrottledStripe(stripe, throttle).retrieve("pi_1")  # type: ignore[arg-type]
    assert stripe.calls == 1 and throttle.in_flight == 0
    assert is_rate_limited(rate_limited()) and not is_rate_limited(TransientError("x"))


def test_in_flight_stripe_calls_never_exceed_the_cap() -> None:
    throttle = StripeThrottle(3)
    lock = threading.Lock()
    now, most = [0], [0]

    class Slow:
        def retrieve(self, payment_intent_id: str) -> str:
            with lock:
                now[0] += 1
                most[0] = max(most[0], now[0])
            time.sleep(0.005)
            with lock:
                now[0] -= 1
            return payment_intent_id

    stripe = ThrottledStripe(Slow(), throttle)  # type: ignore[arg-type]
    threads = [threading.Thread(target=lambda: [stripe.retrieve("pi") for _ in range(5)]) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert most[0] == 3 == throttle.most_in_flight
    assert throttle.in_flight == 0


# ---- cold start ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "function", ["authorize_payment", "payment_api", "outbox_relay", "reconcile_payments", "retain_data"]
)
def test_handler_import_defers_xray_and_stripe(function: str) -> None:
    """The X-Ray SDK and stripe are loaded by the first invocation that needs them, not by
    the import (the cold start)."""
    code = (
        "import sys, app\n"
        "loaded = [m for m in ('aws_xray_sdk', 'stripe') if m in sys.modules]\n"
        "assert not loaded, loaded\n"
    )
    env_path = f"{REPO / 'layers/payments_core/python'}:{REPO / 'functions' / function}"
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO / "functions" / function,
        env={"PYTHONPATH": env_path, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-2000:]


def test_a_timeout_halves_the_cap_without_a_retry() -> None:
    def timed_out() -> TransientError:
        return StripeUnreachable("stripe unavailable: APIConnectionError: Read timed out")

    throttle = StripeThrottle(8)
    stripe = FlakyStripe([timed_out(), "pi_ok"])
    with pytest.raises(TransientError):
        ThrottledStripe(stripe, throttle).retrieve("pi_1")  # type: ignore[arg-type]
    assert stripe.calls == 1 and throttle.limit == 4 and throttle.overloaded == 1
    assert ThrottledStripe(stripe, throttle).retrieve("pi_1") == "pi_ok"  # type: ignore[arg-type]
    assert throttle.limit == 5


# --- records set aside: their order is leased elsewhere (issue 16) --------------------------


class _Busy(Exception):
    pass


def _defer(exc: BaseException) -> float | None:
    return 1.0 if isinstance(exc, _Busy) else None


@pytest.mark.parametrize("size", [1, 3])
def test_a_record_whose_order_is_busy_is_retried_and_its_key_waits_while_others_run(size: int) -> None:

    busy_until = time.monotonic() + 0.3
    ran: list[str] = []

    def handle(_resource: Any, item: Item) -> str:
        if item.record == "a1" and time.monotonic() < busy_until:
            raise _Busy
        ran.append(item.record)
        return str(item.record)

    items = [Item("t-0", 0, "a1"), Item("t-0", 1, "b1"), Item("t-0", 2, "a2")]
    pool = WorkerPool(size, lambda slot: slot)
    try:
        outcome = pool.run(items, handle, key_of=lambda item: str(item.record)[0], defer_of=_defer)
    finally:
        pool.close()
    assert outcome.reported == []
    assert ran.index("a1") < ran.index("a2"), "a later record of the busy order waited for it"
    if size > 1:
        assert ran[0] == "b1", "another order ran while a1 was set aside"
        assert outcome.most_in_flight <= size


def test_a_record_busy_for_longer_than_allowed_is_reported_for_redelivery() -> None:

    def handle(_resource: Any, item: Item) -> str:
        if item.record == "a1":
            raise _Busy
        return str(item.record)

    items = [Item("t-0", 0, "a1"), Item("t-1", 0, "b1")]
    pool = WorkerPool(2, lambda slot: slot)
    try:
        outcome = pool.run(
            items, handle, key_of=lambda item: str(item.record)[0], defer_of=_defer, max_deferral_s=0.3
        )
    finally:
        pool.close()
    assert [(i.partition, i.offset) for i in outcome.reported] == [("t-0", 0)]


def test_the_throttle_retries_a_typed_429_and_halves_on_a_typed_dropped_connection() -> None:
    slept: list[float] = []
    throttle = StripeThrottle(8, sleep=slept.append)
    double = FlakyStripe([StripeRateLimited("429"), "pi_ok"])
    throttled = ThrottledStripe(double, throttle)  # type: ignore[arg-type]
    assert throttled.retrieve("pi_1") == "pi_ok" and double.calls == 2 and len(slept) == 1
    double = FlakyStripe([StripeUnreachable("read timed out")])
    with pytest.raises(StripeUnreachable):
        ThrottledStripe(double, throttle).retrieve("pi_1")  # type: ignore[arg-type]
    assert double.calls == 1 and throttle.overloaded == 1
