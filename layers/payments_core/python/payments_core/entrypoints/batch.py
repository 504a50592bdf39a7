"""One MSK batch, processed with key-level concurrency on a bounded pool of worker threads.

Why: a record waits mostly on Stripe (about 300 ms per PaymentIntent), and the MSK mapping
runs at most one invocation per partition, so one record at a time caps a partition at about
3 commands/s. Records of different orders do not depend on each other; records of one order do.

The rules (the event source mapping's, kept whatever the pool size):
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

Each worker slot is a thread that owns its resource (the use cases' ``Services``, with its own
database connection: a pg8000 connection is not shared between threads). Threads and resources are kept between warm invocations. A pool of size 1
runs every record on the calling thread, in event order: exactly one at a time.
"""

from __future__ import annotations

import functools
import heapq
import queue
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

R = TypeVar("R")

# The first wait of a record set aside (it doubles with each further one, up to what
# ``defer_of`` allows).
DEFER_FIRST_S = 0.05


@dataclass(frozen=True)
class Item:
    """One record of the batch, where the mapping put it."""

    partition: str  # the event's key for the partition: "<topic>-<partition>"
    offset: int
    record: Any


@dataclass(frozen=True)
class Finished:
    item: Item
    ok: bool
    result: Any = None
    error: BaseException | None = None
    started: float = 0.0  # time.monotonic()
    ended: float = 0.0
    worker: int = 0


@dataclass
class BatchOutcome:
    reported: list[Item]  # the batch item failures, in event order
    finished: list[Finished]  # every record that ran, in completion order
    not_started: int = 0  # skipped after a failure in their partition, or for lack of time
    out_of_time: bool = False
    most_in_flight: int = 0

    def batch_item_failures(self) -> dict[str, Any]:
        """The partial batch response for a Kafka event source, as Powertools'
        ``BatchProcessor(EventType.Kafka)`` builds it."""
        return {
            "batchItemFailures": [
                {"itemIdentifier": {"partition": item.partition, "offset": item.offset}}
                for item in self.reported
            ]
        }


def items_of(event: dict[str, Any], wrap: Callable[[dict[str, Any]], Any] = lambda r: r) -> list[Item]:
    """The records of an MSK event in event order (partition by partition, as the mapping
    lists them), each wrapped by ``wrap``."""
    items: list[Item] = []
    for key, records in (event.get("records") or {}).items():
        for record in records or []:
            items.append(Item(partition=str(key), offset=int(record["offset"]), record=wrap(record)))
    return items


def to_report(items: list[Item], finished_ok: set[int]) -> list[Item]:
    """Per partition: the lowest offset that did not finish, and every record after it.
    ``finished_ok`` holds the indexes (in ``items``) of records that finished."""
    lowest: dict[str, int] = {}
    for index, item in enumerate(items):
        if index not in finished_ok:
            lowest[item.partition] = min(item.offset, lowest.get(item.partition, item.offset))
    return [item for item in items if item.partition in lowest and item.offset >= lowest[item.partition]]


class _Worker(threading.Thread):
    """A thread that owns one resource and runs one record at a time."""

    def __init__(self, slot: int, resource: Any) -> None:
        super().__init__(name=f"command-worker-{slot}", daemon=True)
        self.slot = slot
        self.resource = resource
        self.inbox: queue.SimpleQueue[tuple[Callable[[Any, Item], Any], int, Item, queue.SimpleQueue] | None]
        self.inbox = queue.SimpleQueue()

    def run(self) -> None:
        while True:
            task = self.inbox.get()
            if task is None:
                return
            handle, index, item, done = task
            started = time.monotonic()
            try:
                result = handle(self.resource, item)
            except BaseException as exc:  # reported as a failure of this record; the worker lives on
                done.put((index, Finished(item, False, None, exc, started, time.monotonic(), self.slot)))
            else:
                done.put((index, Finished(item, True, result, None, started, time.monotonic(), self.slot)))


@dataclass
class WorkerPool(Generic[R]):
    """``size`` worker slots, each with its own resource from ``make_resource(slot)`` (made
    when the slot is first needed, then kept); ``close_resource`` runs on ``close()``."""

    size: int
    make_resource: Callable[[int], R]
    close_resource: Callable[[R], None] | None = None
    _workers: list[_Worker] = field(default_factory=list, init=False, repr=False)
    _inline: list[R] = field(default_factory=list, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ValueError(f"a worker pool needs at least one slot, not {self.size}")

    @property
    def resources(self) -> list[R]:
        return [*self._inline, *(w.resource for w in self._workers)]

    def close(self) -> None:
        with self._lock:
            for worker in self._workers:
                worker.inbox.put(None)
            for resource in self.resources:
                if self.close_resource is not None:
                    self.close_resource(resource)
            self._workers.clear()
            self._inline.clear()

    def run(
        self,
        items: list[Item],
        handle: Callable[[R, Item], Any],
        *,
        key_of: Callable[[Item], str],
        can_start: Callable[[], bool] = lambda: True,
        on_failure: Callable[[Finished], None] | None = None,
        defer_of: Callable[[BaseException], float | None] = lambda _exc: None,
        max_deferral_s: float = 120.0,
    ) -> BatchOutcome:
        """Process ``items`` under the rules in this module's docstring. ``handle`` raising
        means the record failed (it is delivered again), unless ``defer_of`` turns the error into
        a delay: the record is then started again after it, for at most ``max_deferral_s`` in
        all. ``key_of`` runs on the calling thread, before a record is started; raising fails
        that record without running it."""
        with self._lock:
            if self.size == 1:
                return self._run_inline(items, handle, can_start, on_failure, defer_of, max_deferral_s)
            return self._run_pooled(items, handle, key_of, can_start, on_failure, defer_of, max_deferral_s)

    # -- one at a time, on the calling thread
    def _run_inline(
        self,
        items: list[Item],
        handle: Callable[[R, Item], Any],
        can_start: Callable[[], bool],
        on_failure: Callable[[Finished], None] | None,
        defer_of: Callable[[BaseException], float | None],
        max_deferral_s: float,
    ) -> BatchOutcome:
        if not self._inline:
            self._inline.append(self.make_resource(0))
        resource = self._inline[0]
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
                result = self._until_not_deferred(
                    functools.partial(handle, resource, item), can_start, defer_of, started + max_deferral_s
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

    @staticmethod
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

    # -- concurrently, on the workers
    def _run_pooled(
        self,
        items: list[Item],
        handle: Callable[[R, Item], Any],
        key_of: Callable[[Item], str],
        can_start: Callable[[], bool],
        on_failure: Callable[[Finished], None] | None,
        defer_of: Callable[[BaseException], float | None],
        max_deferral_s: float,
    ) -> BatchOutcome:
        outcome = BatchOutcome(reported=[], finished=[])
        done: queue.SimpleQueue[tuple[int, Finished]] = queue.SimpleQueue()
        keys: dict[int, str] = {}
        pending = list(range(len(items)))  # not yet started, in event order
        ok: set[int] = set()
        failed_partitions: set[str] = set()
        running: dict[int, _Worker] = {}  # index -> worker
        running_keys: set[str] = set()  # keys started or set aside: their later records wait
        deferred: list[tuple[float, int]] = []  # (when to start again, index): a heap
        first_tried: dict[int, float] = {}
        deferrals: dict[int, int] = {}
        idle: list[_Worker] = [w for w in self._workers if w.is_alive()]
        self._workers = list(idle)

        def fail(index: int, finished: Finished) -> None:
            failed_partitions.add(finished.item.partition)
            outcome.finished.append(finished)
            if on_failure is not None:
                on_failure(finished)

        def start(index: int) -> None:
            worker = idle.pop() if idle else self._new_worker()
            running[index] = worker
            worker.inbox.put((handle, index, items[index], done))

        while True:
            # set-aside records whose time has come go first (their key is still reserved)
            while deferred and deferred[0][0] <= time.monotonic() and len(running) < self.size:
                _, index = heapq.heappop(deferred)
                if items[index].partition in failed_partitions or not can_start():
                    outcome.out_of_time = outcome.out_of_time or not can_start()
                    running_keys.discard(keys[index])
                    outcome.not_started += 1
                    continue
                start(index)
            # start what may start: the earliest pending record of each key not running,
            # skipping partitions that failed, while a slot is free and time remains
            waiting_keys: set[str] = set()
            still_pending: list[int] = []
            for index in pending:
                item = items[index]
                if item.partition in failed_partitions or outcome.out_of_time:
                    outcome.not_started += 1
                    continue
                if len(running) >= self.size:
                    still_pending.append(index)
                    continue
                key = keys.get(index)
                if key is None:
                    now = time.monotonic()
                    try:
                        key = keys[index] = key_of(item)
                    except Exception as exc:
                        fail(index, Finished(item, False, None, exc, now, time.monotonic()))
                        continue
                if key in running_keys or key in waiting_keys:
                    waiting_keys.add(key)  # a later record of this key waits for this one
                    still_pending.append(index)
                    continue
                if not can_start():
                    outcome.out_of_time = True
                    outcome.not_started += 1
                    continue
                running_keys.add(key)
                start(index)
            pending = still_pending
            outcome.most_in_flight = max(outcome.most_in_flight, len(running))
            if not running and not deferred:
                break
            if not running:  # only set-aside records, none due yet
                time.sleep(max(0.0, deferred[0][0] - time.monotonic()))
                continue
            wait = max(0.0, deferred[0][0] - time.monotonic()) if deferred else None
            try:
                index, finished = done.get(timeout=wait)
            except queue.Empty:
                continue
            idle.append(running.pop(index))
            most = None if finished.ok or finished.error is None else defer_of(finished.error)
            first = first_tried.setdefault(index, finished.started)
            if most is not None and time.monotonic() + most - first <= max_deferral_s:
                # A live holder usually lets go within one Stripe call: look again soon, then
                # less and less often (never later than the holder's lease could last).
                times = deferrals[index] = deferrals.get(index, 0) + 1
                delay = min(most, DEFER_FIRST_S * 2 ** (times - 1))
                heapq.heappush(deferred, (time.monotonic() + delay, index))
                continue
            running_keys.discard(keys[index])
            if finished.ok:
                ok.add(index)
                outcome.finished.append(finished)
            else:
                fail(index, finished)
        outcome.reported = to_report(items, ok)
        return outcome

    def _new_worker(self) -> _Worker:
        worker = _Worker(len(self._workers) + 1, self.make_resource(len(self._workers) + 1))
        worker.start()
        self._workers.append(worker)
        return worker


def overlapping(finished: Iterable[Finished]) -> int:
    """How many records ran at the same moment, at most (for metrics and tests)."""
    edges = sorted([(f.started, 1) for f in finished] + [(f.ended, -1) for f in finished])
    most = now = 0
    for _, step in edges:
        now += step
        most = max(most, now)
    return most
