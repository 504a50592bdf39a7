"""Per-order leases: one writer per order at a time, across containers, Stripe calls included.

Why not a PostgreSQL session lock: it dies with its connection at once, while the Stripe request
it protects is still running (a dropped connection, a Lambda timeout), and another container then
acts on the order as if nothing were in flight; through RDS Proxy it also pins a backend per
worker. A lease is a row (order_leases) taken and given back in single statements (on their own,
or as the first statement of the holder's first and last transactions, so that what they write
and the lease move together), never held by a session or across a Stripe call, and valid until
``expires_at`` on the database's clock:

- its time to live covers one Stripe request with all of stripe-python's retries (see
  ``lease_ttl_seconds``), and the holder renews it before every Stripe request, so a holder that
  dies mid-request keeps the order until that request has ended, whatever happened to it;
- every acquisition increments the order's token; every transaction of the holder is fenced by
  it (``Database.fence``: an UPDATE of the lease row that both renews and checks it, so a take-
  over waits for that transaction and then finds the lease renewed), so a holder that was taken
  over writes nothing more and stops before its next Stripe request (``LeaseLost``);
- every money-moving Stripe call writes its intent before it is sent and its outcome after
  (``money_calls``); a call left without an outcome, and an order whose lease was taken over,
  are checked against Stripe by the settlement audit: a fence cannot stop a request already at
  Stripe.

A waiter never sleeps through someone else's lease: ``order_holds.acquire`` answers ``LeaseBusy`` with the
time left, and the caller decides (the command pool sets the record aside and runs others, the
webhook waits a few seconds then lets Stripe retry, the audit skips the order). Taking a lease
(waiting for it a while, or with the holder's first transaction) and holding it around a use
case is ``order_holds``'s."""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

from payments_core.adapters.postgres import repository
from payments_core.adapters.postgres.db import Database
from payments_core.config import Settings
from payments_core.domain.errors import TransientError
from payments_core.observability import count, logger
from payments_core.usecases.money_calls import MoneyCalls

# stripe-python's longest sleep between two network retries (HTTPClient.MAX_DELAY).
STRIPE_RETRY_MAX_DELAY_SECONDS = 5.0
# A renewal closer than this to the previous one is skipped (a Stripe request right after the
# renewal of its money call, say): the TTL's margin covers it.
RENEW_EVERY_SECONDS = 1.0


class LeaseBusy(TransientError):
    """Another holder has the order's lease; ``retry_after_s``: when it may be free."""

    def __init__(self, order_id: str, retry_after_s: float) -> None:
        super().__init__(f"order {order_id} is being worked on elsewhere; retry in {retry_after_s:.1f} s")
        self.order_id = order_id
        self.retry_after_s = retry_after_s


class LeaseLost(TransientError):
    """The lease was taken over (it expired while this holder was stalled): stop, write nothing."""


def lease_ttl_seconds(settings: Settings) -> float:
    """How long a lease lasts after its last renewal: one Stripe request with every network
    retry stripe-python makes ((retries + 1) x timeout, plus up to 5 s of backoff before each
    retry), plus the database statements between two renewals (each bounded by the socket
    timeout; two of them) and a 5 s margin. Defaults: 2 x 10 + 5 + 2 x 5 + 5 = 40 s."""
    retries = max(0, settings.stripe_max_network_retries)
    stripe = (retries + 1) * settings.stripe_timeout_seconds + retries * STRIPE_RETRY_MAX_DELAY_SECONDS
    return float(stripe + 2 * settings.db_timeout_seconds + 5)


def holder_name() -> str:
    """Who holds a lease: the container (its log stream), process and thread, and a nonce."""
    where = os.environ.get("AWS_LAMBDA_LOG_STREAM_NAME") or os.uname().nodename
    return f"{where[-60:]}:{os.getpid()}:{threading.get_ident()}:{uuid.uuid4().hex[:12]}"


_ACQUIRE_SQL = """
WITH previous AS (SELECT holder FROM order_leases WHERE order_id = :order_id)
INSERT INTO order_leases AS l (order_id, holder, token, expires_at)
VALUES (:order_id, :holder, 1, now() + make_interval(secs => :ttl))
ON CONFLICT (order_id) DO UPDATE
    SET holder = EXCLUDED.holder, token = l.token + 1, expires_at = EXCLUDED.expires_at, acquired_at = now()
    WHERE l.holder IS NULL OR l.expires_at <= now()
RETURNING l.token, (SELECT holder FROM previous) AS previous_holder
"""
_REMAINING_SQL = (
    "SELECT greatest(0, extract(epoch FROM expires_at - now()))::float8 AS remaining"
    " FROM order_leases WHERE order_id = :order_id"
)
# Renews and checks in one statement; inside a transaction its row lock also makes a takeover
# wait for the transaction's end (and then find the lease renewed).
_RENEW_SQL = (
    "UPDATE order_leases SET expires_at = greatest(expires_at, now() + make_interval(secs => :ttl))"
    " WHERE order_id = :order_id AND token = :token RETURNING token"
)
_RELEASE_SQL = (
    "UPDATE order_leases SET holder = NULL, expires_at = now() WHERE order_id = :order_id AND token = :token"
)
# Gives the lease back inside the holder's last transaction (``give_back_with_next_transaction``):
# checks the token like a renewal and holds the row lock until the commit, so the lease is free
# exactly when that transaction's writes are visible.
_GIVE_BACK_SQL = _RELEASE_SQL + " RETURNING token"


@dataclass
class Lease:
    """One holder's lease on one order: renewed before its Stripe requests, checked (and renewed,
    or given back) by the first statement of each of its transactions."""

    db: Database
    order_id: str
    holder: str
    token: int
    ttl_s: float
    taken_over: bool  # the previous holder's lease expired unreleased (it died, or stalled)
    audit_delay_s: float = 120.0
    _renewed_at: float = field(default_factory=time.monotonic)
    # The intents and outcomes of the holder's money calls (written with its statements)
    calls: MoneyCalls = field(init=False, repr=False)
    # Like a known outcome (see MoneyCalls), a lease given back with a transaction counts once
    # that transaction commits (Database.commits moves past the count taken when it was sent).
    _give_back: bool = False  # the next fence gives the lease back
    _given_back_at: int | None = None
    # Taken by the fence of the holder's first transaction (``to_take_with_first_transaction``):
    # the holder's name until then, and the commit count when it was taken.
    _take_as: str | None = None
    _taken_at: int | None = None

    def __post_init__(self) -> None:
        self.calls = MoneyCalls(self.db, self.order_id, self.audit_delay_s)

    def held(self) -> bool:
        """Taken and committed (a lease taken by a transaction that rolled back was never taken,
        and its token may be someone else's by now)."""
        return self._take_as is None or self._settled(self._taken_at)

    def _check_held(self) -> None:
        if not self.held():
            raise LeaseLost(f"the lease on order {self.order_id} is not taken: nothing may be sent")

    def renew(self) -> None:
        """Extend the lease before a Stripe request; LeaseLost if it was taken over."""
        self._check_held()
        self._check_not_given_back()
        if not self.db.query(_RENEW_SQL, order_id=self.order_id, token=self.token, ttl=self.ttl_s):
            raise LeaseLost(f"the lease on order {self.order_id} was taken over: stopping here")
        self._renewed_at = time.monotonic()

    def renew_if_due(self) -> None:
        if time.monotonic() - self._renewed_at >= RENEW_EVERY_SECONDS:
            self.renew()

    def _check_not_given_back(self) -> None:
        # The token still matches a lease given back: a renewal would not notice by itself.
        if self.given_back():
            raise RuntimeError(f"the lease on order {self.order_id} was given back: no more Stripe calls")

    def _settled(self, at: int | None) -> bool:
        """A write made in the transaction that began with ``at`` commits has committed."""
        return at is not None and self.db.commits > at

    def fence(self, db: Database) -> None:
        """First statement of each of the holder's transactions (see Database.fence): renews the
        lease (or gives it back, see ``give_back_with_next_transaction``) and checks it, and
        writes a money call's known outcome still waiting; or, for a lease taken with the first
        transaction, takes it (again, if the transaction that took it rolled back)."""
        if not self.held():
            self._take(db)
            return
        if self._given_back_at is not None:
            self._check_not_given_back()
            self._given_back_at = None  # that transaction rolled back: the lease is still ours
        giving_back = self._give_back
        sql = _GIVE_BACK_SQL if giving_back else _RENEW_SQL
        params: dict[str, Any] = {"order_id": self.order_id, "token": self.token}
        if not giving_back:
            params["ttl"] = self.ttl_s
        sql = self.calls.riding_on(sql, params)
        if not db.query(sql, **params):
            raise LeaseLost(f"the lease on order {self.order_id} was taken over: nothing written")
        commits = db.commits
        self.calls.carried(commits)
        if giving_back:
            self._give_back, self._given_back_at = False, commits
        self._renewed_at = time.monotonic()

    def _take(self, db: Database) -> None:
        assert self._take_as is not None
        taken = try_take(db, self.order_id, self._take_as, self.ttl_s, self.audit_delay_s)
        if taken is None:
            raise busy(db, self.order_id)
        self.token, self.taken_over = taken
        self._taken_at, self._renewed_at = db.commits, time.monotonic()

    def give_back_with_next_transaction(self) -> None:
        """The holder's next transaction is its last: its fence gives the lease back, so the
        lease is free when that transaction commits (one statement fewer than a release after
        it). If it rolls back, the lease is still held and released as usual."""
        self._give_back = True

    def given_back(self) -> bool:
        return self._settled(self._given_back_at)

    @contextmanager
    def money_call(self, action: str) -> Iterator[bool]:
        """Record the intent of a money-moving Stripe call (renewing the lease), then its outcome:
        ok, refused (Stripe said no: nothing moved) or unknown (the payment becomes uncertain).
        Yields whether an earlier call of this action was recorded for the order, whatever its
        outcome: the statement sees the table as it was before its own row, and an intent is
        written before its request is sent, so any attempt that may have reached Stripe (one
        that crashed before its outcome too) is seen."""
        self._check_held()
        self._check_not_given_back()
        self.calls.flush_outcome()
        call_id = self.calls.take_intent(action)
        if call_id is not None:  # committed before this call, with a renewal of the lease
            # written with the payment row it is for, in the statement that created that row:
            # no call of this payment can have been recorded before it
            attempted_before = False
            self.renew_if_due()
        else:
            recorded = self.calls.record_intent(action, self.token, self.ttl_s)
            if recorded is None:
                raise LeaseLost(f"the lease on order {self.order_id} was taken over: {action} not sent")
            self._renewed_at = time.monotonic()
            call_id, attempted_before = recorded
        with self.calls.outcome(action, call_id):
            yield attempted_before


def try_take(
    db: Database, order_id: str, holder: str, ttl_s: float, audit_delay_s: float
) -> tuple[int, bool] | None:
    """One attempt at the order's lease: (token, taken over) or None when someone else holds it.
    A takeover is counted, logged and its order audited: what the holder it replaces had in
    flight at Stripe may still land."""
    rows = db.query(_ACQUIRE_SQL, order_id=order_id, holder=holder, ttl=ttl_s)
    if not rows:
        return None
    previous = rows[0]["previous_holder"]
    if previous is not None:
        # Its holder died or stalled: whatever it had in flight at Stripe may still land.
        count("LeaseTakenOver")
        logger.warning(
            "order lease taken over from a holder that did not release it",
            extra={"order_id": order_id, "previous_holder": previous},
        )
        repository.schedule_audit(db, order_id, audit_delay_s, "lease taken over")
    return int(rows[0]["token"]), previous is not None


def remaining_s(db: Database, order_id: str) -> float:
    """How long the order's current lease has left (0 when it has none or it has expired)."""
    found = db.query(_REMAINING_SQL, order_id=order_id)
    return float(found[0]["remaining"]) if found else 0.0


def busy(db: Database, order_id: str) -> LeaseBusy:
    """The answer to a caller that cannot have the lease now: retry within 0.05 to 2 s."""
    return LeaseBusy(order_id, max(0.05, min(remaining_s(db, order_id), 2.0)))


def to_take_with_first_transaction(
    db: Database, order_id: str, *, ttl_s: float, audit_delay_s: float
) -> Lease:
    """A lease the fence of the holder's first transaction takes (``order_holds.hold``): not
    held until that transaction commits."""
    lease = Lease(db, order_id, holder_name(), 0, ttl_s, False, audit_delay_s)
    lease._take_as = lease.holder
    return lease


def release(lease: Lease) -> None:
    """Give the lease back (best effort: if the database is gone, it expires by itself), with
    a money call's known outcome still waiting."""
    if not lease.held():
        return  # never taken (its token may be another holder's)
    if lease.given_back() and lease.calls.pending_outcome() is None:
        return
    params: dict[str, Any] = {"order_id": lease.order_id, "token": lease.token}
    with suppress(TransientError):
        lease.db.execute(lease.calls.riding_on(_RELEASE_SQL, params), **params)
        lease.calls.written()
