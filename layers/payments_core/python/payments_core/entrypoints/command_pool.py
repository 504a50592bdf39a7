"""The authorize function's command pool: ``COMMAND_WORKERS`` worker slots, each with its own
database connection, sharing one Stripe throttle and one Kafka producer; one per warm container.

Apart from the command path (``commands``) because what a slot holds and what the slots share
is decided once per container, whatever the records: a pg8000 connection cannot be shared
between threads, the account's Stripe budget must be (``stripe_throttle``), and so is the
producer, serialized (``_SharedPublisher``).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, replace
from typing import Any

from payments_core.adapters.kafka.kafka_gateway import EventPublisher, OutgoingMessage
from payments_core.adapters.postgres.db import Database
from payments_core.adapters.services import Services
from payments_core.adapters.stripe_api.stripe_throttle import RequestPacer, StripeThrottle, ThrottledStripe
from payments_core.entrypoints.worker_pool import WorkerPool

_pool: WorkerPool[Services] | None = None
_pool_base: Services | None = None


def container_pool(base: Services) -> WorkerPool[Services]:
    """The pool of this warm container, made on first use and kept: ``COMMAND_WORKERS``
    slots, each with its own database connection, all sharing one Stripe throttle and one
    Kafka producer."""
    global _pool, _pool_base
    if _pool is None or _pool_base is not base:
        if _pool is not None:
            _pool.close()
        _pool, _pool_base = make_pool(base, base.settings.command_workers), base
    return _pool


def make_pool(base: Services, size: int) -> WorkerPool[Services]:
    """A pool of ``size`` slots derived from ``base``: a slot is ``base`` with its own database
    connection (the one-slot pool runs on the caller's thread and keeps ``base``'s), a
    throttled and paced Stripe gateway and a publisher safe to share between threads."""
    settings = base.settings
    # This container's share of the account's Stripe budget (see stripe_throttle)
    share = settings.stripe_account_requests_per_second / settings.stripe_budget_containers
    throttle = StripeThrottle(
        settings.stripe_max_in_flight,
        call_budget_s=settings.stripe_timeout_seconds,
        pacer=RequestPacer(share),
    )
    stripe = ThrottledStripe(base.stripe, throttle)
    publisher = _SharedPublisher(base.publisher)

    def make(slot: int) -> Services:
        db = base.db if slot == 0 else Database(settings)
        return replace(base, db=db, stripe=stripe, publisher=publisher)

    def close(services: Services) -> None:
        if services.db is not base.db:
            services.db.close()

    return CommandPool(size, make, close, throttle=throttle)


@dataclass
class CommandPool(WorkerPool[Services]):
    throttle: StripeThrottle | None = None


def throttle_of(pool: WorkerPool[Services]) -> StripeThrottle | None:
    return pool.throttle if isinstance(pool, CommandPool) else None


class _SharedPublisher:
    """One Kafka producer for every worker: the workers publish only dead letters, rarely;
    serializing them keeps the producer's lazy start and its reset after a failure safe."""

    def __init__(self, inner: EventPublisher) -> None:
        self.inner = inner
        self._lock = threading.Lock()

    def publish(self, messages: list[OutgoingMessage]) -> list[Exception | None]:
        with self._lock:
            return self.inner.publish(messages)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)
