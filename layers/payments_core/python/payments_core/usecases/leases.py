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
- every money-moving Stripe call writes its intent before it is sent (committed; for a create,
  with the PENDING row) and its outcome after: an unknown one at once, a known one (ok, refused)
  with the holder's next statement (its next transaction's fence, or the release);
  (stripe_money_calls); a call left without an outcome, and an order whose lease was taken over,
  are checked against Stripe by the settlement audit: a fence cannot stop a request already at
  Stripe.

A waiter never sleeps through someone else's lease: ``acquire`` answers ``LeaseBusy`` with the
time left, and the caller decides (the command pool sets the record aside and runs others, the
webhook waits a few seconds then lets Stripe retry, the audit skips the order)."""

from __future__ import annotations

import os
import random
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from typing import Any

from payments_core.adapters.postgres import repository
from payments_core.adapters.postgres.db import Database
from payments_core.adapters.services import Services
from payments_core.adapters.stripe_api import stripe_gateway
from payments_core.config import Settings
from payments_core.domain.errors import Rejection, TransientError
from payments_core.observability import count, logger

# stripe-python's longest sleep between two network retries (HTTPClient.MAX_DELAY).
STRIPE_RETRY_MAX_DELAY_SECONDS = 5.0
# A renewal closer than this to the previous one is skipped (a Stripe request right after the
# renewal of its money call, say): the TTL's margin covers it.
RENEW_EVERY_SECONDS = 1.0
# The Stripe methods that move money: their intent and outcome are recorded.
MONEY_ACTIONS = frozenset({"create_hold", "capture", "cancel", "refund", "transfer", "reverse_transfer"})


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


def _holder_name() -> str:
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
_MONEY_CALL_SQL = """
WITH renewed AS (
    UPDATE order_leases SET expires_at = greatest(expires_at, now() + make_interval(secs => :ttl))
    WHERE order_id = :order_id AND token = :token RETURNING token
)
INSERT INTO stripe_money_calls (order_id, action, lease_token)
SELECT :order_id, :action, token FROM renewed
RETURNING id, EXISTS (
    SELECT 1 FROM stripe_money_calls WHERE order_id = :order_id AND action = :action
) AS attempted_before
"""
# Gives the lease back inside the holder's last transaction (``give_back_with_next_transaction``):
# checks the token like a renewal and holds the row lock until the commit, so the lease is free
# exactly when that transaction's writes are visible.
_GIVE_BACK_SQL = _RELEASE_SQL + " RETURNING token"
# A known outcome (ok, refused) is written by the next statement the holder sends anyway (the
# fence of its next transaction, or the release) rather than in a transaction of its own.
_WITH_OUTCOME = (
    "WITH call AS (UPDATE stripe_money_calls SET finished_at = now(), outcome = :outcome"
    " WHERE id = :call_id AND finished_at IS NULL) "
)
# An outcome we do not know (a timeout, a 5xx) makes the payment uncertain at once.
_MONEY_OUTCOME_SQL = """
WITH call AS (
    UPDATE stripe_money_calls SET finished_at = now(), outcome = :outcome WHERE id = :id RETURNING order_id
)
UPDATE payments SET audit_due_at = least(coalesce(audit_due_at, 'infinity'), now() + make_interval(secs => :delay)),
                    audit_reason = coalesce(audit_reason, :reason)
WHERE :uncertain AND order_id = (SELECT order_id FROM call)
"""


@dataclass
class Lease:
    db: Database
    order_id: str
    holder: str
    token: int
    ttl_s: float
    taken_over: bool  # the previous holder's lease expired unreleased (it died, or stalled)
    audit_delay_s: float = 120.0
    _renewed_at: float = field(default_factory=time.monotonic)
    # Writes that ride on a transaction of the holder count once that transaction commits
    # (Database.commits moves past the count taken when they were written); until then they
    # are written again by the next fence, or by the release.
    _outcome: tuple[int, str] | None = None  # (call id, ok | refused) not yet known written
    _outcome_at: int | None = None
    _intent: tuple[str, int, int] | None = None  # (action, call id, commits when written)
    _give_back: bool = False  # the next fence gives the lease back
    _given_back_at: int | None = None
    # Taken by the fence of the holder's first transaction (``hold(take_with_first_transaction)``):
    # the holder's name until then, and the commit count when it was taken.
    _take_as: str | None = None
    _taken_at: int | None = None

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
        if self._outcome is not None and self._settled(self._outcome_at):
            self._outcome = None
        giving_back = self._give_back
        sql = _GIVE_BACK_SQL if giving_back else _RENEW_SQL
        params: dict[str, Any] = {"order_id": self.order_id, "token": self.token}
        if not giving_back:
            params["ttl"] = self.ttl_s
        if self._outcome is not None:
            sql = _WITH_OUTCOME + sql
            params.update(call_id=self._outcome[0], outcome=self._outcome[1])
        if not db.query(sql, **params):
            raise LeaseLost(f"the lease on order {self.order_id} was taken over: nothing written")
        commits = db.commits
        if self._outcome is not None:
            self._outcome_at = commits
        if giving_back:
            self._give_back, self._given_back_at = False, commits
        self._renewed_at = time.monotonic()

    def _take(self, db: Database) -> None:
        assert self._take_as is not None
        taken = _try_take(db, self.order_id, self._take_as, self.ttl_s, self.audit_delay_s)
        if taken is None:
            raise _busy(db, self.order_id)
        self.token, self.taken_over = taken
        self._taken_at, self._renewed_at = db.commits, time.monotonic()

    def give_back_with_next_transaction(self) -> None:
        """The holder's next transaction is its last: its fence gives the lease back, so the
        lease is free when that transaction commits (one statement fewer than a release after
        it). If it rolls back, the lease is still held and released as usual."""
        self._give_back = True

    def given_back(self) -> bool:
        return self._settled(self._given_back_at)

    def intended(self, action: str, call_id: int) -> None:
        """The intent of the next ``action`` call was written inside the current transaction
        (with the row it is for): once that transaction commits, ``money_call`` uses it instead
        of writing one."""
        self._intent = (action, call_id, self.db.commits)

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
        self.flush_outcome()
        intent, self._intent = self._intent, None
        if intent is not None and intent[0] == action and self._settled(intent[2]):
            call_id = intent[1]  # committed before this call, with a renewal of the lease
            # written with the payment row it is for, in the statement that created that row:
            # no call of this payment can have been recorded before it
            attempted_before = False
            self.renew_if_due()
        else:
            rows = self.db.query(
                _MONEY_CALL_SQL, order_id=self.order_id, token=self.token, ttl=self.ttl_s, action=action
            )
            if not rows:
                raise LeaseLost(f"the lease on order {self.order_id} was taken over: {action} not sent")
            self._renewed_at = time.monotonic()
            call_id = rows[0]["id"]
            attempted_before = bool(rows[0]["attempted_before"])
        outcome = "unknown"
        try:
            yield attempted_before
            outcome = "ok"
        except Rejection:
            outcome = "refused"
            raise
        finally:
            if outcome == "unknown":
                # Left unrecorded if the database is gone too: the audit finds the open call.
                with suppress(TransientError):
                    self.db.execute(
                        _MONEY_OUTCOME_SQL,
                        id=call_id,
                        outcome=outcome,
                        uncertain=True,
                        delay=self.audit_delay_s,
                        reason=f"{action} outcome unknown",
                    )
            else:
                # Nothing is uncertain: written with the holder's next statement (see fence and
                # release). If the holder dies first, the call is found open and audited.
                self._outcome, self._outcome_at = (int(call_id), outcome), None

    def flush_outcome(self) -> None:
        """Write a known outcome still waiting, on its own (before another money call)."""
        if self._outcome is not None and not self._settled(self._outcome_at):
            with suppress(TransientError):
                self.db.execute(
                    _MONEY_OUTCOME_SQL,
                    id=self._outcome[0],
                    outcome=self._outcome[1],
                    uncertain=False,
                    delay=self.audit_delay_s,
                    reason="",
                )
        self._outcome = None


def _try_take(
    db: Database, order_id: str, holder: str, ttl_s: float, audit_delay_s: float
) -> tuple[int, bool] | None:
    """One attempt: (token, taken over) or None when someone else holds it."""
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


def _remaining_s(db: Database, order_id: str) -> float:
    found = db.query(_REMAINING_SQL, order_id=order_id)
    return float(found[0]["remaining"]) if found else 0.0


def _busy(db: Database, order_id: str) -> LeaseBusy:
    return LeaseBusy(order_id, max(0.05, min(_remaining_s(db, order_id), 2.0)))


def acquire(
    db: Database, order_id: str, *, ttl_s: float, wait_s: float = 0.0, audit_delay_s: float = 120.0
) -> Lease:
    """Take the order's lease, waiting up to ``wait_s`` (backing off), else LeaseBusy."""
    holder = _holder_name()
    deadline = time.monotonic() + wait_s
    pause = 0.05
    while True:
        taken = _try_take(db, order_id, holder, ttl_s, audit_delay_s)
        if taken is not None:
            lease = Lease(db, order_id, holder, taken[0], ttl_s, taken[1])
            lease.audit_delay_s = audit_delay_s
            return lease
        left = deadline - time.monotonic()
        if left <= 0:
            raise _busy(db, order_id)
        remaining = _remaining_s(db, order_id)
        time.sleep(min(left, max(0.01, min(remaining, pause)) * random.uniform(0.8, 1.2)))
        pause = min(pause * 2, 1.0)


def release(lease: Lease) -> None:
    """Give the lease back (best effort: if the database is gone, it expires by itself), with
    a money call's known outcome still waiting."""
    if not lease.held():
        return  # never taken (its token may be another holder's)
    if lease._outcome is not None and lease._settled(lease._outcome_at):
        lease._outcome = None
    if lease.given_back() and lease._outcome is None:
        return
    with suppress(TransientError):
        if lease._outcome is None:
            lease.db.execute(_RELEASE_SQL, order_id=lease.order_id, token=lease.token)
        else:
            call_id, outcome = lease._outcome
            lease.db.execute(
                _WITH_OUTCOME + _RELEASE_SQL,
                order_id=lease.order_id,
                token=lease.token,
                call_id=call_id,
                outcome=outcome,
            )
        lease._outcome = None


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
    ttl_s, audit_delay_s = lease_ttl_seconds(settings), float(settings.audit_backoff_seconds[0])
    if take_with_first_transaction:
        lease = Lease(db, order_id, _holder_name(), 0, ttl_s, False, audit_delay_s)
        lease._take_as = lease.holder
    else:
        lease = acquire(db, order_id, ttl_s=ttl_s, wait_s=wait_s, audit_delay_s=audit_delay_s)
    db.fence = lease.fence
    try:
        with stripe_gateway.before_each_request(lease.renew_if_due):
            yield lease
    finally:
        db.fence = None
        release(lease)


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
