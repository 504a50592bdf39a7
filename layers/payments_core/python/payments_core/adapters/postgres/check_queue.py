"""What the reconciler checks against Stripe, and when: the schedules of its two kinds of check
(payments_core.usecases.reconciliation). The only module that writes SQL about them.

- **Stale checks.** A payment in PENDING, REQUIRES_ACTION or AUTHORIZED for longer than its
  status' window (``updated_at``) is due its first look then. One the look leaves where it was
  (a hold waiting for its release: Stripe keeps it up to 7 days; a PaymentIntent not found; a
  look that failed) is due again after ``reconcile_backoff_seconds`` (``check_due_at``,
  ``check_attempts``), not on every run. ``stale_checked_at`` is when it was last looked at in
  its current status: a status change moves ``updated_at`` past it and starts afresh, so no
  write path has to know about this schedule.
- **Audits.** ``audit_due_at``, set by whoever makes a payment uncertain
  (``repository.schedule_audit``), moved on by ``audit_again_later``, cleared by ``audit_settled``.

Two schedules, not one: a hold waiting out its window is not uncertain (it must not count in
``AuditBacklog``, and a settled audit must not cancel its next look), and a stale payment's
first due time follows from its status and a setting, which no write path sets.

A run (``Run``) takes what was due when it started (``as_of``, on the database's clock) and
reads each queue a page at a time in due order from a cursor (keyset): a row checked has moved
on, a row skipped (another holds the order) is behind the cursor, so each due row is read once
per run and the statements stay the same size whatever the backlog. Rows made due during the
run wait for the next one, so a run ends even when every check reschedules at once."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

from payments_core.adapters.postgres.db import Database
from payments_core.domain.payment import PaymentStatus

S = PaymentStatus
Kind = Literal["stale", "recheck", "audit"]
STALE_STATUSES = (S.PENDING, S.REQUIRES_ACTION, S.AUTHORIZED)
_START = datetime(1970, 1, 1, tzinfo=UTC)  # before every due time: a queue's first page

# (the first look at a stale payment: payments_status_updated_idx, a range of one status)
_STALE_SQL = """
    SELECT order_id, updated_at AS due_key FROM payments
    WHERE status = :status AND updated_at < CAST(:as_of AS timestamptz) - make_interval(secs => :window)
      AND (stale_checked_at IS NULL OR stale_checked_at < updated_at)
      AND (updated_at, order_id) > (CAST(:after_key AS timestamptz), :after_order)
    ORDER BY updated_at, order_id LIMIT :limit
"""
# (the next looks: payments_check_due_idx)
_RECHECK_SQL = """
    SELECT order_id, check_due_at AS due_key FROM payments
    WHERE check_due_at <= CAST(:as_of AS timestamptz)
      AND (check_due_at, order_id) > (CAST(:after_key AS timestamptz), :after_order)
    ORDER BY check_due_at, order_id LIMIT :limit
"""
# (payments_audit_due_idx: the row comparison's first column bounds the range)
_AUDIT_SQL = """
    SELECT order_id, audit_due_at AS due_key FROM payments
    WHERE audit_due_at <= CAST(:as_of AS timestamptz)
      AND (audit_due_at, order_id) > (CAST(:after_key AS timestamptz), :after_order)
    ORDER BY audit_due_at, order_id LIMIT :limit
"""


@dataclass(frozen=True)
class Due:
    """One check to make: ``kind`` is "stale" (the first look at a stale payment), "recheck"
    (a later look) or "audit". What the row says now is read again under the order's lease."""

    order_id: str
    kind: Kind


@dataclass
class _Queue:
    kind: Kind
    sql: str
    status: PaymentStatus | None = None
    window: float = 0.0
    after: tuple[datetime, str] = (_START, "")
    done: bool = False


@dataclass
class Run:
    """One reconciler run's view of the schedules: ``as_of`` and a cursor per queue."""

    db: Database
    windows: dict[PaymentStatus, float]
    page: int
    as_of: datetime = field(init=False)
    _queues: list[_Queue] = field(init=False)

    def __post_init__(self) -> None:
        self.as_of = self.db.query("SELECT now() AS now")[0]["now"]
        self._queues = [_Queue("stale", _STALE_SQL, s, float(self.windows[s])) for s in STALE_STATUSES]
        self._queues += [_Queue("recheck", _RECHECK_SQL), _Queue("audit", _AUDIT_SQL)]

    def next_batch(self) -> list[Due]:
        """Up to ``page`` checks of each kind not yet read in this run; empty when none is left."""
        batch: list[Due] = []
        for queue in self._queues:
            if queue.done:
                continue
            params = {"window": queue.window, "status": queue.status.value} if queue.status else {}
            rows = self.db.query(
                queue.sql,
                as_of=self.as_of,
                after_key=queue.after[0],
                after_order=queue.after[1],
                limit=self.page,
                **params,
            )
            if rows:
                queue.after = (rows[-1]["due_key"], str(rows[-1]["order_id"]))
            queue.done = len(rows) < self.page
            batch += [Due(str(r["order_id"]), queue.kind) for r in rows]
        return batch

    def is_stale(self, status: PaymentStatus, updated_at: datetime | None) -> bool:
        """Whether a payment in ``status`` since ``updated_at`` was past its window at ``as_of``."""
        window = self.windows.get(status)
        return (
            window is not None
            and updated_at is not None
            and (self.as_of - updated_at).total_seconds() > window
        )


# ---- stale checks --------------------------------------------------------------------------


def stale_checked(
    db: Database, order_id: str, status: PaymentStatus, backoff_seconds: tuple[int, ...]
) -> None:
    """A look at a payment stale in ``status`` is over. Still in it: due again after the next
    delay (the last repeats). Moved on (by the look or anything else): nothing due; its new
    status counts afresh (``stale_checked_at`` left behind ``updated_at``)."""
    db.execute(
        """
        UPDATE payments SET
            stale_checked_at = CASE WHEN status = :status THEN now() ELSE stale_checked_at END,
            reconciled_at = now(),
            check_due_at = CASE WHEN status = :status THEN now() + make_interval(secs =>
                (CAST(:backoff AS int[]))[least(check_attempts + 1, cardinality(CAST(:backoff AS int[])))])
                END,
            check_attempts = CASE WHEN status = :status THEN check_attempts + 1 ELSE 0 END
        WHERE order_id = :o
        """,
        o=order_id,
        status=status.value,
        backoff=list(backoff_seconds),
    )


def nothing_due(db: Database, order_id: str) -> None:
    """A later look found the payment final or in a status not yet past its window."""
    db.execute("UPDATE payments SET check_due_at = NULL, check_attempts = 0 WHERE order_id = :o", o=order_id)


# ---- audits ----------------------------------------------------------------------------------


def audit_again_later(db: Database, order_id: str, backoff_seconds: tuple[int, ...]) -> None:
    """A check that failed or had to fix something: the next one after the next delay (the
    last delay repeats), never "done"."""
    db.execute(
        """
        UPDATE payments
        SET audit_attempts = audit_attempts + 1, reconciled_at = now(),
            audit_due_at = now() + make_interval(
                secs => (CAST(:backoff AS int[]))[least(audit_attempts + 2, cardinality(CAST(:backoff AS int[])))])
        WHERE order_id = :o
        """,
        o=order_id,
        backoff=list(backoff_seconds),
    )


def audit_settled(db: Database, order_id: str) -> None:
    """Stripe and the row agree and nothing can still land: no longer uncertain."""
    db.execute(
        "UPDATE payments SET audit_due_at = NULL, audit_attempts = 0, audit_reason = NULL,"
        " reconciled_at = now() WHERE order_id = :o",
        o=order_id,
    )


# ---- what is left --------------------------------------------------------------------------


@dataclass(frozen=True)
class Backlog:
    """What was due when a run started and is still due (``*_due``), with how long the oldest
    of it has been due, in seconds; and the AUTHORIZED payments past their window."""

    stale_due: int
    stale_age_s: float
    audits_due: int
    audit_age_s: float
    authorized_past_window: int


def backlog(db: Database, windows: dict[PaymentStatus, float], as_of: datetime) -> Backlog:
    """One statement: each part is a range of one index (the stale ranges of
    payments_status_updated_idx, payments_check_due_idx, payments_audit_due_idx)."""
    rows = db.query(
        """
        WITH stale AS (
            SELECT status, updated_at, stale_checked_at,
                   updated_at + make_interval(secs => CASE status WHEN :pending THEN CAST(:w_pending AS float8)
                       WHEN :action THEN CAST(:w_action AS float8) ELSE CAST(:w_authorized AS float8) END)
                       AS due_since
            FROM payments
            WHERE (status = :pending AND updated_at < CAST(:as_of AS timestamptz) - make_interval(secs => :w_pending))
               OR (status = :action AND updated_at < CAST(:as_of AS timestamptz) - make_interval(secs => :w_action))
               OR (status = :authorized
                   AND updated_at < CAST(:as_of AS timestamptz) - make_interval(secs => :w_authorized))
        ), first_looks AS (
            SELECT count(*) AS n, min(due_since) AS oldest FROM stale
            WHERE stale_checked_at IS NULL OR stale_checked_at < updated_at
        ), next_looks AS (
            SELECT count(*) AS n, min(check_due_at) AS oldest FROM payments
            WHERE check_due_at <= CAST(:as_of AS timestamptz)
        ), audits AS (
            SELECT count(*) AS n, min(audit_due_at) AS oldest FROM payments
            WHERE audit_due_at <= CAST(:as_of AS timestamptz)
        )
        SELECT (SELECT n FROM first_looks) + (SELECT n FROM next_looks) AS stale_due,
               coalesce(extract(epoch FROM now() - least((SELECT oldest FROM first_looks),
                                                         (SELECT oldest FROM next_looks))), 0)::float8 AS stale_age,
               (SELECT n FROM audits) AS audits_due,
               coalesce(extract(epoch FROM now() - (SELECT oldest FROM audits)), 0)::float8 AS audit_age,
               (SELECT count(*) FROM stale WHERE status = :authorized) AS authorized_past_window
        """,
        as_of=as_of,
        pending=S.PENDING.value,
        action=S.REQUIRES_ACTION.value,
        authorized=S.AUTHORIZED.value,
        w_pending=float(windows[S.PENDING]),
        w_action=float(windows[S.REQUIRES_ACTION]),
        w_authorized=float(windows[S.AUTHORIZED]),
    )
    row = rows[0]
    return Backlog(
        stale_due=int(row["stale_due"]),
        stale_age_s=max(0.0, float(row["stale_age"])),
        audits_due=int(row["audits_due"]),
        audit_age_s=max(0.0, float(row["audit_age"])),
        authorized_past_window=int(row["authorized_past_window"]),
    )
