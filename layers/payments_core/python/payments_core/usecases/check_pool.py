"""How a reconciler run spends its time: checks on a few threads at once, Stripe calls paced.

A check waits mostly on Stripe (~300 ms a call), so a run makes several at once, each on its own
database connection; all of them share one pace, the reconciler's share of the account's Stripe
request budget (``audit_stripe_reads_per_second``), so the audit never crowds out the payments.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any, TypeVar

from payments_core.adapters.postgres.db import Database
from payments_core.adapters.services import Services

T = TypeVar("T")
R = TypeVar("R")


class CheckPool:
    """``size`` threads for a run's checks: a check waits mostly on Stripe (~300 ms a call), so
    one at a time would cap a run near 3 checks/s whatever its Stripe share. Each thread has its
    own database connection (a lease is held on one, and a pg8000 connection is not shared
    between threads); all share the pacer. Size 1: on the caller's thread and connection."""

    def __init__(self, services: Services, size: int) -> None:
        self._base = services
        self._executor = ThreadPoolExecutor(size, thread_name_prefix="reconcile") if size > 1 else None
        self._local = threading.local()
        self._made: list[Database] = []
        self._lock = threading.Lock()

    def __enter__(self) -> CheckPool:
        return self

    def __exit__(self, *_exc: object) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)
        for db in self._made:
            db.close()

    def map(self, fn: Callable[[Services, T], R], items: Iterable[T]) -> list[R]:
        if self._executor is None:
            return [fn(self._base, item) for item in items]
        return list(self._executor.map(lambda item: fn(self._worker(), item), items))

    def _worker(self) -> Services:
        worker: Services | None = getattr(self._local, "services", None)
        if worker is None:
            db = type(self._base.db)(self._base.settings)  # of the run's own kind (a test's double too)
            with self._lock:
                self._made.append(db)
            worker = self._local.services = replace(self._base, db=db)
        return worker


class Pacer:
    """At most ``per_second`` calls on average (the audit's share of Stripe's rate budget)."""

    def __init__(self, per_second: float) -> None:
        self._interval = 1.0 / per_second if per_second > 0 else 0.0
        self._next = time.monotonic()
        self._lock = threading.Lock()
        self.calls = 0

    def wait(self) -> None:
        with self._lock:
            self.calls += 1
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + self._interval
        if start > now:
            time.sleep(start - now)


class Paced:
    """A Stripe gateway whose every call waits its turn at the pacer."""

    def __init__(self, inner: Any, pacer: Pacer) -> None:
        self._inner = inner
        self._pacer = pacer

    def __getattr__(self, name: str) -> Any:
        target = getattr(self._inner, name)
        if not callable(target):
            return target

        def paced(*args: Any, **kwargs: Any) -> Any:
            self._pacer.wait()
            return target(*args, **kwargs)

        return paced
