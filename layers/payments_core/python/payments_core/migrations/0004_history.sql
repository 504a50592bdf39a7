-- GET /history/{user_id}: a user's payments as customer and as runner, read from the index
-- alone (amounts and currency included) so a user with many payments stays fast.
CREATE INDEX IF NOT EXISTS payments_customer_history_idx
    ON payments (clerk_user_id, status) INCLUDE (currency, amount_cents, captured_amount_cents);
CREATE INDEX IF NOT EXISTS payments_runner_history_idx
    ON payments (runner_id) INCLUDE (currency, amount_cents, captured_amount_cents)
    WHERE status = 'SUCCEEDED';
