"""The order in which the records of one MSK batch may start: the event source mapping's rules,
kept whatever the pool size.

- records with the same key (the order) start one after the other, in event order: within a
  partition that is partition order;
- records of different keys run concurrently, at most ``size`` at once;
- after a record of a partition fails, no further record of that partition is started;
- no record is started when the invocation's remaining time cannot cover one more
  (``can_start``): it is reported instead, and delivered again;
- a record that answers "not yet" (``defer_of`` gives a delay: its order is leased by another
  container) is set aside without holding a worker, and started again after that delay; later
  records of its key keep waiting behind it;
- per partition, the lowest offset that did not finish is reported, and so is every record
  after it (finished or not): the mapping re-delivers from that offset, so finished ones run
  again, which the use cases make harmless.

Apart from the threads that run the records (``worker_pool``): these rules decide which record
may start and what is reported, whoever runs it. ``run_in_order`` applies them one record at a
time on the calling thread; ``KeyedSchedule`` for a pool of several workers.
"""

from __future__ import annotations

import functools
import heapq
import time
from collections.abc import Callable
from typing import Any

from payments_core.entrypoints.batch import BatchOutcome, Finished, Item, to_report

# The first wait of a record set aside (it doubles with each further one, up to what
# ``defer_of`` allows).
DEFER_FIRST_S = 0.05


def run_in_order(
    items: list[Item],
    run_one: Callable[[Item], Any],
    can_start: Callable[[], bool],
    on_failure: Callable[[Finished], None] | None,
    defer_of: Callable[[BaseException], float | None],
    max_deferral_s: float,
) -> BatchOutcome:
    """The records one at a time, in event order, each by ``run_one`` on the calling thread."""
    outcome = BatchOutcome(reported=[], finished=[], most_in_flight=0)
    ok: set[int] = set()
    failed_partitions: set[str] = set()
    for index, item in enumerate(items):
        if item.partition in failed_partitions:
            outcome.not_started += 1
            continue
        if outcome.out_of_time or not can_start():
            outcome.out_of_time = True
            outcome.not_started += 1
            continue
        outcome.most_in_flight = 1
        started = time.monotonic()
        try:
            result = _until_not_deferred(
                functools.partial(run_one, item), can_start, defer_of, started + max_deferral_s
            )
        except Exception as exc:
            done = Finished(item, False, None, exc, started, time.monotonic())
            failed_partitions.add(item.partition)
            if on_failure is not None:
                on_failure(done)
        else:
            done = Finished(item, True, result, None, started, time.monotonic())
            ok.add(index)
        outcome.finished.append(done)
    outcome.reported = to_report(items, ok)
    return outcome


def _until_not_deferred(
    run: Callable[[], Any],
    can_start: Callable[[], bool],
    defer_of: Callable[[BaseException], float | None],
    give_up_at: float,
) -> Any:
    """One at a time there is nothing else to run: wait out a deferral here."""
    times = 0
    while True:
        try:
            return run()
        except Exception as exc:
            most = defer_of(exc)
            if most is None or time.monotonic() + most > give_up_at:
                raise
            times += 1
            time.sleep(min(most, DEFER_FIRST_S * 2 ** (times - 1)))
            if not can_start():
                raise


class KeyedSchedule:
    """One batch's records under the rules, for workers that run several at once: which records
    may start now (``start_due``, ``start_next``), which wait behind their key, which are set
    aside and until when (``due_in``), and what a finished record means (``finished``). Nothing
    here runs a record: ``start(index)`` hands it to a worker, ``slot_free()`` says whether one
    more may run."""

    def __init__(
        self,
        items: list[Item],
        key_of: Callable[[Item], str],
        can_start: Callable[[], bool],
        on_failure: Callable[[Finished], None] | None,
        defer_of: Callable[[BaseException], float | None],
        max_deferral_s: float,
    ) -> None:
        self.items = items
        self._key_of = key_of
        self._can_start = can_start
        self._on_failure = on_failure
        self._defer_of = defer_of
        self._max_deferral_s = max_deferral_s
        self.outcome = BatchOutcome(reported=[], finished=[])
        self._keys: dict[int, str] = {}
        self._pending = list(range(len(items)))  # not yet started, in event order
        self._ok: set[int] = set()
        self._failed_partitions: set[str] = set()
        self._running_keys: set[str] = set()  # keys started or set aside: their later records wait
        self._deferred: list[tuple[float, int]] = []  # (when to start again, index): a heap
        self._first_tried: dict[int, float] = {}
        self._deferrals: dict[int, int] = {}

    def _fail(self, finished: Finished) -> None:
        self._failed_partitions.add(finished.item.partition)
        self.outcome.finished.append(finished)
        if self._on_failure is not None:
            self._on_failure(finished)

    def start_due(self, start: Callable[[int], None], slot_free: Callable[[], bool]) -> None:
        """Start the set-aside records whose time has come (their key is still reserved)."""
        while self._deferred and self._deferred[0][0] <= time.monotonic() and slot_free():
            _, index = heapq.heappop(self._deferred)
            if self.items[index].partition in self._failed_partitions or not self._can_start():
                self.outcome.out_of_time = self.outcome.out_of_time or not self._can_start()
                self._running_keys.discard(self._keys[index])
                self.outcome.not_started += 1
                continue
            start(index)

    def start_next(self, start: Callable[[int], None], slot_free: Callable[[], bool]) -> None:
        """Start what may start: the earliest pending record of each key not running, skipping
        partitions that failed, while a slot is free and time remains."""
        waiting_keys: set[str] = set()
        still_pending: list[int] = []
        for index in self._pending:
            item = self.items[index]
            if item.partition in self._failed_partitions or self.outcome.out_of_time:
                self.outcome.not_started += 1
                continue
            if not slot_free():
                still_pending.append(index)
                continue
            key = self._keys.get(index)
            if key is None:
                now = time.monotonic()
                try:
                    key = self._keys[index] = self._key_of(item)
                except Exception as exc:
                    self._fail(Finished(item, False, None, exc, now, time.monotonic()))
                    continue
            if key in self._running_keys or key in waiting_keys:
                waiting_keys.add(key)  # a later record of this key waits for this one
                still_pending.append(index)
                continue
            if not self._can_start():
                self.outcome.out_of_time = True
                self.outcome.not_started += 1
                continue
            self._running_keys.add(key)
            start(index)
        self._pending = still_pending

    @property
    def set_aside(self) -> bool:
        return bool(self._deferred)

    def due_in(self) -> float | None:
        """Seconds until the first set-aside record is due (None: none is set aside)."""
        return max(0.0, self._deferred[0][0] - time.monotonic()) if self._deferred else None

    def finished(self, index: int, finished: Finished) -> None:
        """A started record ended: set aside again if it answered "not yet" within the time
        allowed, else done (its key free for the next record)."""
        most = None if finished.ok or finished.error is None else self._defer_of(finished.error)
        first = self._first_tried.setdefault(index, finished.started)
        if most is not None and time.monotonic() + most - first <= self._max_deferral_s:
            # A live holder usually lets go within one Stripe call: look again soon, then
            # less and less often (never later than the holder's lease could last).
            times = self._deferrals[index] = self._deferrals.get(index, 0) + 1
            delay = min(most, DEFER_FIRST_S * 2 ** (times - 1))
            heapq.heappush(self._deferred, (time.monotonic() + delay, index))
            return
        self._running_keys.discard(self._keys[index])
        if finished.ok:
            self._ok.add(index)
            self.outcome.finished.append(finished)
        else:
            self._fail(finished)

    def report(self) -> BatchOutcome:
        """The outcome, with the records to report (``to_report``)."""
        self.outcome.reported = to_report(self.items, self._ok)
        return self.outcome
