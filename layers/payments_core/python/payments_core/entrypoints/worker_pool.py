"""The authorize function's worker threads: a bounded pool, each thread owning its resource,
running the records of one MSK batch in the order ``batch_schedule`` allows.

Why threads: a record waits mostly on Stripe (about 300 ms per PaymentIntent), and the MSK
mapping runs at most one invocation per partition, so one record at a time caps a partition at
about 3 commands/s; records of different orders do not depend on each other.

Each worker slot is a thread that owns its resource (the use cases' ``Services``, with its own
database connection: a pg8000 connection is not shared between threads). Threads and resources
are kept between warm invocations. A pool of size 1 runs every record on the calling thread, in
event order: exactly one at a time.
"""

from __future__ import annotations

import functools
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from payments_core.entrypoints.batch import BatchOutcome, Finished, Item
from payments_core.entrypoints.batch_schedule import KeyedSchedule, run_in_order

R = TypeVar("R")


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
        """Process ``items`` under the rules of ``batch_schedule``. ``handle`` raising means the
        record failed (it is delivered again), unless ``defer_of`` turns the error into a delay:
        the record is then started again after it, for at most ``max_deferral_s`` in all.
        ``key_of`` runs on the calling thread, before a record is started; raising fails that
        record without running it."""
        with self._lock:
            if self.size == 1:
                if not self._inline:
                    self._inline.append(self.make_resource(0))
                run_one = functools.partial(handle, self._inline[0])
                return run_in_order(items, run_one, can_start, on_failure, defer_of, max_deferral_s)
            schedule = KeyedSchedule(items, key_of, can_start, on_failure, defer_of, max_deferral_s)
            return self._run_pooled(schedule, handle)

    def _run_pooled(self, schedule: KeyedSchedule, handle: Callable[[R, Item], Any]) -> BatchOutcome:
        done: queue.SimpleQueue[tuple[int, Finished]] = queue.SimpleQueue()
        running: dict[int, _Worker] = {}  # index -> worker
        idle: list[_Worker] = [w for w in self._workers if w.is_alive()]
        self._workers = list(idle)

        def slot_free() -> bool:
            return len(running) < self.size

        def start(index: int) -> None:
            worker = idle.pop() if idle else self._new_worker()
            running[index] = worker
            worker.inbox.put((handle, index, schedule.items[index], done))

        while True:
            schedule.start_due(start, slot_free)  # set-aside records whose time has come go first
            schedule.start_next(start, slot_free)
            schedule.outcome.most_in_flight = max(schedule.outcome.most_in_flight, len(running))
            if not running and not schedule.set_aside:
                break
            if not running:  # only set-aside records, none due yet
                time.sleep(schedule.due_in() or 0.0)
                continue
            try:
                index, finished = done.get(timeout=schedule.due_in())
            except queue.Empty:
                continue
            idle.append(running.pop(index))
            schedule.finished(index, finished)
        return schedule.report()

    def _new_worker(self) -> _Worker:
        worker = _Worker(len(self._workers) + 1, self.make_resource(len(self._workers) + 1))
        worker.start()
        self._workers.append(worker)
        return worker
