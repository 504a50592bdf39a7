"""The payments archive (migration 0013): old payments leave ``payments`` for ``payments_archive``,
their history totals for ``user_payment_totals``; this module is the only one that writes either.

What is archived, by the retention job (``retention``), ``batch_rows`` payments per transaction:
a payment over (SUCCEEDED, REVERTED, FAILED) and settled (``audit_due_at`` unset) whose last
change is older than ``RETAIN_PAYMENTS_DAYS``, with no money call still open and no event still
unsent. With it go its order's outbox rows (all published), money calls (all finished) and
lease: nothing reads them once the payment is archived.

Why an archived order cannot get a second hold. ``repository.insert_pending`` refuses an order
found in the archive, but an authorize whose INSERT started before the archive row committed
does not see it, and would wait for the DELETE of the live row and then insert a new one. Every
use case runs under the order's lease (``leases``), so the archiving transaction takes each
order's lease first, exactly as ``leases.acquire`` would, and holds it (uncommitted) until it
commits: an order leased by someone is skipped, and an acquire that comes later waits for the
commit and then finds the archive. The lease row is deleted with the rest (a later lease starts
again at token 1, safe because the order's last holder is long gone).

An archived payment is read-only. A command for it re-announces its final status (a duplicate
authorize or release); a revert of an archived SUCCEEDED payment is refused
(``escrow.revert``): refund it from the Stripe Dashboard.
"""

from __future__ import annotations

from payments_core.adapters.postgres.db import Database
from payments_core.adapters.postgres.repository import is_uuid
from payments_core.domain.payment import Payment, PaymentStatus

FINAL = (PaymentStatus.SUCCEEDED.value, PaymentStatus.REVERTED.value, PaymentStatus.FAILED.value)
_ARCHIVED_COLUMNS = (
    "order_id, payment_id, status, clerk_user_id, runner_id, runner_connect_account_id, amount_cents,"
    " captured_amount_cents, currency, payment_intent_id, transfer_id, refund_id, transfer_reversal_id,"
    " failure_code, failure_message, stripe_code, decline_code, revert_reason, created_at, updated_at"
)

# Candidates locked (SKIP LOCKED: a payment being read for update is left for the next run),
# then their leases claimed in order-id order; returns the orders claimed.
_CLAIM_SQL = """
WITH candidates AS (
    SELECT p.order_id FROM payments p
    WHERE p.status = ANY(CAST(:final AS text[])) AND p.audit_due_at IS NULL
      AND p.updated_at < now() - make_interval(days => :days)
      AND NOT EXISTS (SELECT 1 FROM stripe_money_calls c WHERE c.order_id = p.order_id AND c.finished_at IS NULL)
      AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.order_id = p.order_id AND o.published_at IS NULL)
    LIMIT :n FOR UPDATE OF p SKIP LOCKED
)
INSERT INTO order_leases AS l (order_id, holder, token, expires_at)
SELECT order_id, 'retention', 1, now() FROM candidates ORDER BY order_id
ON CONFLICT (order_id) DO UPDATE
    SET holder = EXCLUDED.holder, token = l.token + 1, expires_at = EXCLUDED.expires_at, acquired_at = now()
    WHERE l.holder IS NULL OR l.expires_at <= now()
RETURNING l.order_id
"""
# One statement: the rows leave payments, enter the archive, and add to the roll-ups together.
_MOVE_SQL = f"""
WITH moved AS (
    DELETE FROM payments WHERE order_id = ANY(CAST(:orders AS text[])) RETURNING *
), archived AS (
    INSERT INTO payments_archive ({_ARCHIVED_COLUMNS}) SELECT {_ARCHIVED_COLUMNS} FROM moved
), rolled AS (
    INSERT INTO user_payment_totals AS t (user_id, role, currency, status, payment_count, amount_cents)
    SELECT user_id, role, currency, status, count(*), sum(amount) FROM (
        SELECT clerk_user_id AS user_id, 'customer' AS role, currency, status,
               COALESCE(captured_amount_cents, amount_cents) AS amount
        FROM moved WHERE clerk_user_id IS NOT NULL
        UNION ALL
        SELECT runner_id, 'runner', currency, status, COALESCE(captured_amount_cents, amount_cents)
        FROM moved WHERE runner_id IS NOT NULL
    ) AS s
    GROUP BY user_id, role, currency, status ORDER BY user_id, role, currency, status
    ON CONFLICT (user_id, role, currency, status) DO UPDATE
        SET payment_count = t.payment_count + EXCLUDED.payment_count,
            amount_cents = t.amount_cents + EXCLUDED.amount_cents
)
SELECT count(*) AS n FROM moved
"""  # noqa: S608 - column names are constants of this module
_LEFTOVERS_SQL = (
    "DELETE FROM outbox WHERE order_id = ANY(CAST(:orders AS text[]))",
    "DELETE FROM stripe_money_calls WHERE order_id = ANY(CAST(:orders AS text[]))",
    "DELETE FROM order_leases WHERE order_id = ANY(CAST(:orders AS text[]))",
)
_PURGE_SQL = """
DELETE FROM payments_archive WHERE order_id = ANY(ARRAY(
    SELECT order_id FROM payments_archive WHERE updated_at < now() - make_interval(days => :days)
    LIMIT :n FOR UPDATE SKIP LOCKED))
"""


def archive_batch(db: Database, *, days: int, rows: int) -> int:
    """Archive up to ``rows`` payments past ``days`` in one transaction; returns how many."""
    with db.transaction():
        claimed = [str(r["order_id"]) for r in db.query(_CLAIM_SQL, final=list(FINAL), days=days, n=rows)]
        if not claimed:
            return 0
        moved = int(db.query(_MOVE_SQL, orders=claimed)[0]["n"])
        for sql in _LEFTOVERS_SQL:
            db.execute(sql, orders=claimed)
    return moved


def purge_batch(db: Database, *, days: int, rows: int) -> int:
    """Delete up to ``rows`` archived payments whose last change is older than ``days``. Their
    totals stay in user_payment_totals; the order id is forgotten (an order's commands stop
    within days: Kafka keeps a record 7 days)."""
    return db.execute(_PURGE_SQL, days=days, n=rows)


def find(db: Database, *, order_id: str | None = None, payment_id: str | None = None) -> Payment | None:
    """The archived payment of an order, or with this payment id."""
    if order_id:
        rows = db.query("SELECT * FROM payments_archive WHERE order_id = :o", o=order_id)
    elif payment_id and is_uuid(payment_id):
        rows = db.query("SELECT * FROM payments_archive WHERE payment_id = CAST(:p AS uuid)", p=payment_id)
    else:
        return None
    return Payment.from_row(rows[0]) if rows else None
