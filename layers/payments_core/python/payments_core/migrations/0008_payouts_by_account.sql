-- Payout velocity (payouts.note_velocity): how many transfers went to one Connect account in the
-- last hour. transferred_at is set once, when a transfer id is first recorded (repository.update).
ALTER TABLE payments ADD COLUMN IF NOT EXISTS transferred_at timestamptz;
CREATE INDEX IF NOT EXISTS payments_transfers_by_account_idx
    ON payments (runner_connect_account_id, transferred_at) WHERE transferred_at IS NOT NULL;
