"""What the payout guard (``payouts``) reads and keeps of runners' Connect accounts: how many
transfers went to one lately (its velocity), and Stripe's latest verdict on each (the
``connected_accounts`` table).

Apart from ``repository`` because these rows serve one check and nothing else: whether a
release may pay the account it names, without asking Stripe again within the verdict's time."""

from __future__ import annotations

from payments_core.adapters.postgres.db import Database


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
