"""An order's lease taken and held around a use case: its transactions fenced, its Stripe calls
through it.

``acquire`` takes the lease (``leases``), waiting a while for its holder to give it back;
``hold`` ties it to the block's database connection (every transaction's first statement renews
and checks it) and to this thread's Stripe requests (each renews it first); ``hold_order`` gives
a use case its services with Stripe seen through the lease, so every money-moving call records
its intent and outcome (``money_calls``) without the use case asking."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

from payments_core.adapters.postgres.db import Database
from payments_core.adapters.services import Services
from payments_core.adapters.stripe_api import stripe_gateway
from payments_core.adapters.stripe_api.stripe_requests import before_each_request
from payments_core.config import Settings
from payments_core.usecases import leases
from payments_core.usecases.leases import Lease
from payments_core.usecases.money_calls import MONEY_ACTIONS


def acquire(
    db: Database, order_id: str, *, ttl_s: float, wait_s: float = 0.0, audit_delay_s: float = 120.0
) -> Lease:
    """Take the order's lease, waiting up to ``wait_s`` (backing off), else LeaseBusy."""
    holder = leases.holder_name()
    deadline = time.monotonic() + wait_s
    pause = 0.05
    while True:
        taken = leases.try_take(db, order_id, holder, ttl_s, audit_delay_s)
        if taken is not None:
            return Lease(db, order_id, holder, taken[0], ttl_s, taken[1], audit_delay_s)
        left = deadline - time.monotonic()
        if left <= 0:
            raise leases.busy(db, order_id)
        remaining = leases.remaining_s(db, order_id)
        time.sleep(min(left, max(0.01, min(remaining, pause)) * random.uniform(0.8, 1.2)))
        pause = min(pause * 2, 1.0)


@contextmanager
def hold(
    db: Database,
    order_id: str,
    settings: Settings,
    *,
    wait_s: float = 0.0,
    take_with_first_transaction: bool = False,
) -> Iterator[Lease]:
    """Hold the order's lease for the block: every transaction on ``db`` is fenced by it and
    every Stripe request on this thread renews it first. Raises LeaseBusy (after ``wait_s``).
    ``take_with_first_transaction``: for a block that starts with a transaction (and does
    nothing with the order before it), the lease is taken by that transaction's first statement
    instead of one of its own: LeaseBusy then comes from there, and a Stripe request before the
    taking transaction committed is refused (LeaseLost). Never waits."""
    if db.fence is not None:
        raise RuntimeError("a lease is already held on this connection: one order at a time")
    ttl_s, audit_delay_s = leases.lease_ttl_seconds(settings), float(settings.audit_backoff_seconds[0])
    if take_with_first_transaction:
        lease = leases.to_take_with_first_transaction(db, order_id, ttl_s=ttl_s, audit_delay_s=audit_delay_s)
    else:
        lease = acquire(db, order_id, ttl_s=ttl_s, wait_s=wait_s, audit_delay_s=audit_delay_s)
    db.fence = lease.fence
    try:
        with before_each_request(lease.renew_if_due):
            yield lease
    finally:
        db.fence = None
        leases.release(lease)


class LeasedStripe:
    """A Stripe gateway seen through a lease: every call renews the lease first (and stops if
    it was taken over); money-moving calls record their intent and outcome, and are told
    whether an earlier attempt was recorded (without one they make no lookup first)."""

    def __init__(self, inner: Any, lease: Lease) -> None:
        self._inner = inner
        self._lease = lease

    def __getattr__(self, name: str) -> Any:
        target = getattr(self._inner, name)
        if not callable(target):
            return target

        def call(*args: Any, **kwargs: Any) -> Any:
            if name in MONEY_ACTIONS:
                with (
                    self._lease.money_call(name) as earlier,
                    stripe_gateway.attempted_before(earlier),
                ):
                    return target(*args, **kwargs)
            self._lease.renew()
            return target(*args, **kwargs)

        return call


def lease_of(services: Services) -> Lease | None:
    """The lease a ``hold_order`` block holds, from the services it yielded."""
    stripe = services.stripe
    return stripe._lease if isinstance(stripe, LeasedStripe) else None


@contextmanager
def hold_order(
    services: Services, order_id: str, *, wait_s: float = 0.0, take_with_first_transaction: bool = False
) -> Iterator[Services]:
    """``hold`` for a use case: yields its services with Stripe seen through the lease."""
    with hold(
        services.db,
        order_id,
        services.settings,
        wait_s=wait_s,
        take_with_first_transaction=take_with_first_transaction,
    ) as lease:
        yield replace(services, stripe=LeasedStripe(services.stripe, lease))
