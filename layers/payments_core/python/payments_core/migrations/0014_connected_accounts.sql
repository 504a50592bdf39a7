-- Stripe's last verdict on each runner's Connect account (payments_core.payouts): a release to an
-- account Stripe called able to receive transfers within PAYOUT_ACCOUNT_CHECK_TTL_SECONDS does
-- not read the account from Stripe again. One row per account (bounded by the runners), upserted
-- after each read from Stripe, never deleted. A new table the deployed code does not read
-- (expand only).
CREATE TABLE IF NOT EXISTS connected_accounts (
    account_id            text PRIMARY KEY,
    transfers_capability  text,         -- Stripe's capabilities.transfers (NULL: not connected)
    payouts_enabled       boolean NOT NULL DEFAULT false,
    verified_at           timestamptz NOT NULL DEFAULT now()
);
