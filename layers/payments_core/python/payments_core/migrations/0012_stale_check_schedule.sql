-- Issue 19: the reconciler's stale checks get a schedule of their own (payments_core.check_queue).
-- A payment left in PENDING, REQUIRES_ACTION or AUTHORIZED past its status' window is checked
-- against Stripe once; if the check leaves it where it was (a hold that waits for its release
-- up to Stripe's 7 days, a PaymentIntent not found, a failed check), it is due again after
-- RECONCILE_BACKOFF_SECONDS instead of on every run (every 5 minutes).
-- stale_checked_at: when the stale check last looked at the payment in its current status; a
--   status change moves updated_at past it, so the new status' window counts afresh. (Not
--   reconciled_at: the deployed code also writes that one from the audit.)
-- check_due_at / check_attempts: the next look and how many came before (the backoff's index).
-- The first look is found through payments_status_updated_idx (status, updated_at); the next
-- ones through a small partial index. Each run reads its queues a page at a time from a cursor
-- (due time, order id), so every page is an index range scan in that order: the audit's index
-- gains order_id for the same reason (on audit_due_at alone, each page read and sorted every
-- due row: 94 ms a page with 5,000 due). The new index serves every query the old one did.
-- New columns and indexes the deployed code does not notice (expand only); ADD COLUMN with a
-- constant default rewrites nothing. A plain CREATE INDEX blocks writes to payments while it
-- reads the table (even for a partial index): deploy this when traffic is low.
ALTER TABLE payments ADD COLUMN IF NOT EXISTS stale_checked_at timestamptz;
ALTER TABLE payments ADD COLUMN IF NOT EXISTS check_due_at timestamptz;
ALTER TABLE payments ADD COLUMN IF NOT EXISTS check_attempts integer NOT NULL DEFAULT 0;
CREATE INDEX IF NOT EXISTS payments_check_due_idx ON payments (check_due_at, order_id)
    WHERE check_due_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS payments_audit_due_order_idx ON payments (audit_due_at, order_id)
    WHERE audit_due_at IS NOT NULL;
DROP INDEX IF EXISTS payments_audit_due_idx;
