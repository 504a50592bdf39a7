-- Per-order leases: who may change an order's payment (and move its money at Stripe) right
-- now. Taken and released in short statements, never held by a session, so nothing pins an
-- RDS Proxy connection and a lease outlives a dropped connection until it expires (on the
-- database's clock). The token only ever grows: a write fenced by an older token is refused.
-- Rows are kept (their token is the fence's memory); one row per order.
CREATE TABLE IF NOT EXISTS order_leases (
    order_id     text PRIMARY KEY,
    holder       text,
    token        bigint NOT NULL,
    expires_at   timestamptz NOT NULL,
    acquired_at  timestamptz NOT NULL DEFAULT now()
);

-- Every money-moving Stripe call: its intent written before it is sent, its outcome after.
-- A row without an outcome after its lease could have expired is a call that may still have
-- landed (a crash, a timeout): the settlement audit checks its order against Stripe.
CREATE TABLE IF NOT EXISTS stripe_money_calls (
    id           bigserial PRIMARY KEY,
    order_id     text NOT NULL,
    action       text NOT NULL,
    lease_token  bigint NOT NULL,
    started_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz,
    outcome      text
);
CREATE INDEX IF NOT EXISTS stripe_money_calls_open_idx
    ON stripe_money_calls (started_at) WHERE finished_at IS NULL;

-- The settlement audit's schedule: a payment is uncertain while audit_due_at is set; it is
-- re-checked against Stripe at growing intervals until Stripe and the row agree.
ALTER TABLE payments ADD COLUMN IF NOT EXISTS audit_due_at timestamptz;
ALTER TABLE payments ADD COLUMN IF NOT EXISTS audit_attempts integer NOT NULL DEFAULT 0;
ALTER TABLE payments ADD COLUMN IF NOT EXISTS audit_reason text;
CREATE INDEX IF NOT EXISTS payments_audit_due_idx ON payments (audit_due_at) WHERE audit_due_at IS NOT NULL;
