-- Issue 19, bounded storage: payments over and settled for RETAIN_PAYMENTS_DAYS leave `payments`
-- (payments_core.archive, run by the retention job) for a compact archive, and their history
-- totals move to per-user roll-ups. New tables only (expand only): the deployed code never
-- reads them until the code that writes them is deployed.

-- The archived payment: what announces its final status again (a re-sent command is answered
-- as a duplicate), answers the status routes, and identifies it at Stripe for accounting.
-- Left out: what only a live payment needs (return_url, next_action_url, the card and customer
-- ids, correlation and audit columns, description). order_id is the global per-order key: an
-- authorize of an archived order finds it here and places no second hold.
CREATE TABLE IF NOT EXISTS payments_archive (
    order_id                   text PRIMARY KEY,
    payment_id                 uuid NOT NULL UNIQUE,
    status                     text NOT NULL CHECK (status IN ('SUCCEEDED', 'REVERTED', 'FAILED')),
    clerk_user_id              text,
    runner_id                  text,
    runner_connect_account_id  text,
    amount_cents               bigint NOT NULL,
    captured_amount_cents      bigint,
    currency                   text NOT NULL,
    payment_intent_id          text,
    transfer_id                text,
    refund_id                  text,
    transfer_reversal_id       text,
    failure_code               text,
    failure_message            text,
    stripe_code                text,
    decline_code               text,
    revert_reason              text,
    created_at                 timestamptz NOT NULL,
    updated_at                 timestamptz NOT NULL,
    archived_at                timestamptz NOT NULL DEFAULT now()
);
-- The archive's own period (RETAIN_ARCHIVED_PAYMENTS_DAYS) is counted from updated_at. Rows
-- arrive roughly in updated_at order, so a BRIN index (a few pages for millions of rows) finds
-- the expired ones without a B-tree of 30-odd bytes per payment.
CREATE INDEX IF NOT EXISTS payments_archive_updated_brin ON payments_archive USING brin (updated_at);

-- What the archived payments add to each user's history totals (queries.history): one row per
-- user, role, currency and final status, so the table grows with users, not with payments.
-- No month: the history route reads lifetime totals, and a month key would add a row per
-- active user per month (about a row per payment for a user who orders monthly).
CREATE TABLE IF NOT EXISTS user_payment_totals (
    user_id        text NOT NULL,
    role           text NOT NULL CHECK (role IN ('customer', 'runner')),
    currency       text NOT NULL,
    status         text NOT NULL CHECK (status IN ('SUCCEEDED', 'REVERTED', 'FAILED')),
    payment_count  bigint NOT NULL,
    amount_cents   bigint NOT NULL,
    PRIMARY KEY (user_id, role, currency, status)
);
