"""The retention job (run daily): delete rows nothing will read again, in small batches.

What goes, and what is kept on purpose (periods: ``config.RetentionSettings``):

- ``command_outcomes`` recorded longer ago than the Kafka topic keeps a record: the record cannot
  be re-delivered any more, so its stored answer will never be asked for.
- ``outbox`` rows published longer ago than their period, except the order's latest row and rows
  a (kept) command outcome names. ``command_outcomes.reannounce`` re-queues a re-delivered
  command's answer only while no later row of its order exists: deleting the latest row would
  make an older answer look latest and publish it after the newer outcome (the issue 16 bug),
  and deleting a named row would make the re-delivery be judged afresh. Unpublished rows are
  never touched. Runs after ``command_outcomes`` so rows freed by it go in the same run.
- ``stripe_events`` (webhook event ids) received longer ago than Stripe retries a webhook.
- ``stripe_money_calls`` finished, started before both their period and the audit's in-doubt
  horizon (``audit_in_doubt_seconds``), of a payment that is over (SUCCEEDED, REVERTED, FAILED)
  and settled (``audit_due_at IS NULL``). A call still open, or one whose outcome is unknown or
  lost while its payment is audit-due, is what ``repository.money_calls_in_doubt`` reads: kept.
- ``order_leases`` expired (released leases expire at release) before their period, of a payment
  that is over and settled and unchanged for that long. The token restarts at 1 if the order is
  ever leased again: every holder of an older token ended days ago (a lease lives ~40 s, a
  Lambda at most 15 minutes).

- ``payments`` over and settled for ``RETAIN_PAYMENTS_DAYS`` move to the archive, their totals to
  the per-user roll-ups, and their order's remaining outbox rows, money calls and lease go with
  them (``archive.archive_batch``: one transaction per batch, each order's lease claimed first).
- ``payments_archive`` rows older than ``RETAIN_ARCHIVED_PAYMENTS_DAYS`` (``archive.purge_batch``);
  their totals stay in the roll-ups. ``reverted_orders`` and the roll-ups are never deleted.

Each DELETE takes at most ``batch_rows`` rows, chosen with ``FOR UPDATE SKIP LOCKED`` (a row
being worked on is left for the next run), in its own implicit transaction: no lock is held
for longer than one short statement. The outer ``WHERE`` repeats the row's own conditions, so a
row changed between the choice and the delete (a re-queued outbox row, a renewed lease) stays.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from payments_core.adapters.postgres import archive
from payments_core.adapters.postgres.db import Database, get_database
from payments_core.config import Settings, get_settings
from payments_core.observability import count, logger

# In the order they run (outbox after command_outcomes: see the module's docstring).
_DELETES: dict[str, str] = {
    "command_outcomes": """
        DELETE FROM command_outcomes WHERE ctid = ANY(ARRAY(
            SELECT ctid FROM command_outcomes
            WHERE recorded_at < now() - make_interval(days => :days)
            LIMIT :n FOR UPDATE SKIP LOCKED))
    """,
    "outbox": """
        DELETE FROM outbox WHERE id IN (
            SELECT o.id FROM outbox o
            WHERE o.published_at < now() - make_interval(days => :days)
              AND EXISTS (SELECT 1 FROM outbox later WHERE later.order_id = o.order_id AND later.id > o.id)
              AND NOT EXISTS (SELECT 1 FROM command_outcomes c WHERE c.event_id = o.event_id)
            LIMIT :n FOR UPDATE OF o SKIP LOCKED)
        AND published_at < now() - make_interval(days => :days)
    """,
    "stripe_events": """
        DELETE FROM stripe_events WHERE stripe_event_id IN (
            SELECT stripe_event_id FROM stripe_events
            WHERE received_at < now() - make_interval(days => :days)
            LIMIT :n FOR UPDATE SKIP LOCKED)
    """,
    "stripe_money_calls": """
        DELETE FROM stripe_money_calls WHERE id IN (
            SELECT c.id FROM stripe_money_calls c JOIN payments p ON p.order_id = c.order_id
            WHERE c.finished_at IS NOT NULL
              AND c.started_at < now() - greatest(make_interval(days => :days), make_interval(secs => :in_doubt))
              AND p.status IN ('SUCCEEDED', 'REVERTED', 'FAILED') AND p.audit_due_at IS NULL
            LIMIT :n FOR UPDATE OF c SKIP LOCKED)
        AND finished_at IS NOT NULL
    """,
    "order_leases": """
        DELETE FROM order_leases WHERE order_id IN (
            SELECT l.order_id FROM order_leases l JOIN payments p ON p.order_id = l.order_id
            WHERE l.expires_at < now() - make_interval(days => :days)
              AND p.status IN ('SUCCEEDED', 'REVERTED', 'FAILED') AND p.audit_due_at IS NULL
              AND p.updated_at < now() - make_interval(days => :days)
            LIMIT :n FOR UPDATE OF l SKIP LOCKED)
        AND expires_at < now() - make_interval(days => :days)
    """,
}
# Then the payments (after the rows of theirs the deletes above may still keep) and the archive.
_BATCHES: dict[str, Callable[[Database, int, int], int]] = {
    "payments": lambda db, days, n: archive.archive_batch(db, days=days, rows=n),
    "payments_archive": lambda db, days, n: archive.purge_batch(db, days=days, rows=n),
}
TABLES = (*_DELETES, *_BATCHES)


@dataclass
class RetentionReport:
    deleted: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TABLES, 0))
    complete: bool = True  # False: the deadline came first; the next run goes on

    def as_dict(self) -> dict[str, object]:
        return {"deleted": dict(self.deleted), "complete": self.complete}


def run(
    db: Database | None = None, settings: Settings | None = None, *, deadline: float | None = None
) -> RetentionReport:
    """Delete expired rows table by table, batch by batch, until none is left or ``deadline``
    (time.monotonic()) passes. Emits ``RetentionDeleted<Table>`` per table."""
    db = db or get_database()
    s = settings or get_settings()
    r = s.retention
    report = RetentionReport()
    for table in TABLES:
        while True:
            if deadline is not None and time.monotonic() > deadline:
                report.complete = False
                break
            deleted = _batch(db, s, table)
            report.deleted[table] += deleted
            if deleted < r.batch_rows:
                break
        if not report.complete:
            break
    for table, n in report.deleted.items():
        count(f"RetentionDeleted{''.join(p.title() for p in table.split('_'))}", n)
    if not report.complete:
        count("RetentionIncomplete")
    logger.info(
        "retention run",
        extra={**report.as_dict(), "days": {t: r.days(t) for t in TABLES}, "batch_rows": r.batch_rows},
    )
    return report


def _batch(db: Database, s: Settings, table: str) -> int:
    """One batch of ``table``: rows deleted (for payments: moved to the archive)."""
    r = s.retention
    if table in _BATCHES:
        return _BATCHES[table](db, r.days(table), r.batch_rows)
    params: dict[str, object] = {"days": r.days(table), "n": r.batch_rows}
    if table == "stripe_money_calls":
        params["in_doubt"] = float(s.audit_in_doubt_seconds)
    return db.execute(_DELETES[table], **params)
