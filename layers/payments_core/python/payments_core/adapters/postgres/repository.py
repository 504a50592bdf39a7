"""The payments table: the only module that writes SQL about payments. Parameterised only."""

from __future__ import annotations

import uuid
from typing import Any

from payments_core.adapters.postgres.db import Database
from payments_core.domain.errors import StatusChanged
from payments_core.domain.payment import Payment, PaymentStatus

_COLUMNS = frozenset(Payment.__dataclass_fields__) - {
    "payment_id",
    "created_at",
    "updated_at",
    "transferred_at",
}


_INSERT_PENDING_SQL = """
    INSERT INTO payments (payment_id, order_id, correlation_id, clerk_user_id, stripe_customer_id,
                          payment_method_id, amount_cents, currency, description, return_url, status,
                          stripe_create_attempts)
    SELECT CAST(:payment_id AS uuid), :order_id, :correlation_id, :clerk_user_id, :stripe_customer_id,
           :payment_method_id, :amount_cents, :currency, :description, :return_url, 'PENDING', 1
    WHERE NOT EXISTS (SELECT 1 FROM reverted_orders WHERE order_id = :order_id)
      AND NOT EXISTS (SELECT 1 FROM payments_archive WHERE order_id = :order_id)
    ON CONFLICT (order_id) DO NOTHING
"""
# The same, with the intent of the PaymentIntent create the row counts (stripe_money_calls, see
# leases.Lease.money_call), written only with the row: one statement.
_INSERT_PENDING_WITH_INTENT_SQL = f"""
    WITH written AS ({_INSERT_PENDING_SQL} RETURNING order_id),
    intent AS (
        INSERT INTO stripe_money_calls (order_id, action, lease_token)
        SELECT order_id, 'create_hold', :lease_token FROM written RETURNING id
    )
    SELECT id FROM intent
"""  # noqa: S608 - composed of this module's constants


def _pending_params(payment: Payment) -> dict[str, Any]:
    return {
        "payment_id": payment.payment_id,
        "order_id": payment.order_id,
        "correlation_id": payment.correlation_id,
        "clerk_user_id": payment.clerk_user_id,
        "stripe_customer_id": payment.stripe_customer_id,
        "payment_method_id": payment.payment_method_id,
        "amount_cents": payment.amount_cents,
        "currency": payment.currency,
        "description": payment.description,
        "return_url": payment.return_url,
    }


def insert_pending(db: Database, payment: Payment) -> bool:
    """Write the PENDING row for an order unless one exists, the order was reverted before
    it (reverted_orders) or its payment was archived (payments_archive: see archive for why the
    order's lease makes this check safe); True when this call wrote it.
    The row counts the PaymentIntent create its writer is about to send (committed before the
    call), so whoever finds it PENDING later knows Stripe may already have one."""
    count = db.execute(_INSERT_PENDING_SQL, **_pending_params(payment))
    if count == 1:
        payment.stripe_create_attempts = 1
    return count == 1


def insert_pending_with_intent(db: Database, payment: Payment, lease_token: int) -> int | None:
    """``insert_pending``, writing in the same statement the intent of the create the row counts
    (under the order's lease ``lease_token``); the intent's id, None when no row was written."""
    rows = db.query(_INSERT_PENDING_WITH_INTENT_SQL, lease_token=lease_token, **_pending_params(payment))
    if not rows:
        return None
    payment.stripe_create_attempts = 1
    return int(rows[0]["id"])


def get_by_order_id(db: Database, order_id: str, *, for_update: bool = False) -> Payment | None:
    sql = "SELECT * FROM payments WHERE order_id = :order_id"
    rows = db.query(sql + (" FOR UPDATE" if for_update else ""), order_id=order_id)
    return Payment.from_row(rows[0]) if rows else None


def get_by_payment_id(db: Database, payment_id: str, *, for_update: bool = False) -> Payment | None:
    if not is_uuid(payment_id):
        return None
    sql = "SELECT * FROM payments WHERE payment_id = CAST(:payment_id AS uuid)"
    rows = db.query(sql + (" FOR UPDATE" if for_update else ""), payment_id=payment_id)
    return Payment.from_row(rows[0]) if rows else None


def get_by_payment_intent_id(db: Database, payment_intent_id: str) -> Payment | None:
    rows = db.query("SELECT * FROM payments WHERE payment_intent_id = :pi", pi=payment_intent_id)
    return Payment.from_row(rows[0]) if rows else None


def find_order_id(db: Database, *, order_id: str | None, payment_id: str | None) -> str | None:
    """Resolve a command's reference (order id or payment id) to the order, without locking;
    an archived payment's too."""
    if order_id:
        return order_id
    if payment_id and is_uuid(payment_id):
        rows = db.query(
            "SELECT order_id FROM payments WHERE payment_id = CAST(:payment_id AS uuid)"
            " UNION ALL SELECT order_id FROM payments_archive WHERE payment_id = CAST(:payment_id AS uuid)",
            payment_id=payment_id,
        )
        return str(rows[0]["order_id"]) if rows else None
    return None


def user_totals(db: Database, user_id: str) -> list[dict[str, Any]]:
    """What a user spent as customer (AUTHORIZED or SUCCEEDED) and earned as runner
    (SUCCEEDED), in cents per currency. Captured amounts count where a capture was partial.
    Live payments (served by the indexes of 0004_history.sql) plus the archived ones' roll-ups
    (user_payment_totals, by its key), in one statement: one snapshot, so a payment being
    archived is counted exactly once."""
    return db.query(
        """
        SELECT currency, sum(spent_cents)::bigint AS spent_cents, sum(spent)::bigint AS spent_count,
               sum(earned_cents)::bigint AS earned_cents, sum(earned)::bigint AS earned_count
        FROM (
            SELECT currency, COALESCE(captured_amount_cents, amount_cents) AS spent_cents, 1 AS spent,
                   0 AS earned_cents, 0 AS earned
            FROM payments WHERE clerk_user_id = :user_id AND status IN ('AUTHORIZED', 'SUCCEEDED')
            UNION ALL
            SELECT currency, 0, 0, COALESCE(captured_amount_cents, amount_cents), 1
            FROM payments WHERE runner_id = :user_id AND status = 'SUCCEEDED'
            UNION ALL
            SELECT currency, amount_cents, payment_count, 0, 0
            FROM user_payment_totals WHERE user_id = :user_id AND role = 'customer' AND status = 'SUCCEEDED'
            UNION ALL
            SELECT currency, 0, 0, amount_cents, payment_count
            FROM user_payment_totals WHERE user_id = :user_id AND role = 'runner' AND status = 'SUCCEEDED'
        ) AS mine
        GROUP BY currency ORDER BY currency
        """,
        user_id=user_id,
    )


def update(db: Database, payment_id: str, *, expected_status: PaymentStatus, **changes: Any) -> None:
    """Write the given columns if the payment still has the status the caller read (compare and
    set): a blind overwrite could turn a concurrent REVERTED into SUCCEEDED. Raises
    StatusChanged, writing nothing, when it does not. Column names come from the Payment model,
    never from input."""
    unknown = set(changes) - _COLUMNS
    if unknown:
        raise ValueError(f"not payment columns: {sorted(unknown)}")
    values = {k: (v.value if isinstance(v, PaymentStatus) else v) for k, v in changes.items()}
    assignments = ", ".join(f"{column} = :{column}" for column in values)
    if values.get("transfer_id"):
        # when the runner was paid, on the database's clock: the payout velocity counts it
        assignments += ", transferred_at = coalesce(transferred_at, now())"
    written = db.execute(
        f"UPDATE payments SET {assignments}, updated_at = now()"  # noqa: S608 - column names are whitelisted above
        " WHERE payment_id = CAST(:payment_id AS uuid) AND status = :expected_status",
        payment_id=payment_id,
        expected_status=expected_status.value,
        **values,
    )
    if written != 1:
        raise StatusChanged(f"payment {payment_id} is no longer {expected_status.value}")


def transfers_to_account(db: Database, account_id: str, within_seconds: float) -> int:
    """How many payments transferred to this Connect account in the last ``within_seconds``."""
    rows = db.query(
        "SELECT count(*) AS n FROM payments WHERE runner_connect_account_id = :account_id"
        " AND transferred_at > now() - make_interval(secs => :within)",
        account_id=account_id,
        within=float(within_seconds),
    )
    return int(rows[0]["n"]) if rows else 0


def account_verified_within(db: Database, account_id: str, within_seconds: float) -> bool:
    """Whether Stripe said within the last ``within_seconds`` that this Connect account can
    receive transfers (``connected_accounts``)."""
    rows = db.query(
        "SELECT 1 AS ok FROM connected_accounts WHERE account_id = :account_id"
        " AND transfers_capability = 'active' AND verified_at > now() - make_interval(secs => :within)",
        account_id=account_id,
        within=float(within_seconds),
    )
    return bool(rows)


def record_account_verdict(
    db: Database, account_id: str, transfers_capability: str | None, payouts_enabled: bool
) -> None:
    """Keep what Stripe just said of a Connect account (None: not connected to the platform)."""
    db.execute(
        "INSERT INTO connected_accounts (account_id, transfers_capability, payouts_enabled)"
        " VALUES (:account_id, :capability, :payouts) ON CONFLICT (account_id) DO UPDATE SET"
        " transfers_capability = EXCLUDED.transfers_capability,"
        " payouts_enabled = EXCLUDED.payouts_enabled, verified_at = now()",
        account_id=account_id,
        capability=transfers_capability,
        payouts=payouts_enabled,
    )


def count_create_attempt(db: Database, payment_id: str) -> None:
    db.execute(
        "UPDATE payments SET stripe_create_attempts = stripe_create_attempts + 1, updated_at = now()"
        " WHERE payment_id = CAST(:payment_id AS uuid)",
        payment_id=payment_id,
    )


# ---- making a payment uncertain (the audit's queue itself: check_queue) ---------------------


def schedule_audit(db: Database, order_id: str, delay_seconds: float, reason: str) -> None:
    """Make the payment uncertain: due for a check against Stripe within ``delay_seconds`` (an
    earlier due time stands). The first reason stands until the payment is settled."""
    db.execute(
        """
        UPDATE payments
        SET audit_due_at = least(coalesce(audit_due_at, 'infinity'), now() + make_interval(secs => :delay)),
            audit_reason = coalesce(audit_reason, :reason)
        WHERE order_id = :o
        """,
        o=order_id,
        delay=float(delay_seconds),
        reason=reason[:200],
    )


def money_calls_in_doubt(db: Database, order_id: str, within_seconds: float) -> list[str]:
    """The order's money calls of the last ``within_seconds`` whose outcome is not known (still
    open, unknown, or lost with their holder): what may still land at Stripe."""
    rows = db.query(
        """
        SELECT DISTINCT action FROM stripe_money_calls
        WHERE order_id = :o AND started_at > now() - make_interval(secs => :within)
          AND (outcome IS NULL OR outcome IN ('unknown', 'lost'))
        ORDER BY action
        """,
        o=order_id,
        within=float(within_seconds),
    )
    return [str(r["action"]) for r in rows]


def flag_unfinished_money_calls(db: Database, older_than_seconds: float) -> int:
    """Money calls whose outcome was never written although their lease has run out (their
    holder died): their payments become due for the audit now. Returns how many calls."""
    rows = db.query(
        """
        WITH lost AS (
            UPDATE stripe_money_calls SET finished_at = now(), outcome = 'lost'
            WHERE finished_at IS NULL AND started_at < now() - make_interval(secs => :age)
            RETURNING order_id, action
        ), flagged AS (
            UPDATE payments p
            SET audit_due_at = least(coalesce(p.audit_due_at, 'infinity'), now()),
                audit_reason = coalesce(p.audit_reason, 'a Stripe call has no recorded outcome')
            WHERE p.order_id IN (SELECT order_id FROM lost)
            RETURNING 1
        )
        SELECT count(*) AS calls FROM lost
        """,
        age=float(older_than_seconds),
    )
    return int(rows[0]["calls"]) if rows else 0


def record_stripe_event(
    db: Database, stripe_event_id: str, event_type: str, payment_intent_id: str | None
) -> bool:
    """Remember a webhook event; False when it was already applied (a redelivery)."""
    count = db.execute(
        """
        INSERT INTO stripe_events (stripe_event_id, event_type, payment_intent_id)
        VALUES (:id, :type, :pi) ON CONFLICT (stripe_event_id) DO NOTHING
        """,
        id=stripe_event_id,
        type=event_type,
        pi=payment_intent_id,
    )
    return count == 1


def remember_reverted_order(db: Database, order_id: str, reason: str, correlation_id: str | None) -> None:
    db.execute(
        "INSERT INTO reverted_orders (order_id, reason, correlation_id) VALUES (:o, :r, :c)"
        " ON CONFLICT (order_id) DO NOTHING",
        o=order_id,
        r=reason,
        c=correlation_id,
    )


def is_uuid(value: str) -> bool:
    """Only the canonical 8-4-4-4-12 form (either case), the one we hand out: uuid.UUID also
    takes forms PostgreSQL's CAST refuses (``urn:uuid:``, unbalanced braces, misplaced
    hyphens), and a refused CAST would be retried as a database failure."""
    try:
        return str(uuid.UUID(value)) == value.lower()
    except (ValueError, AttributeError, TypeError):
        return False
