-- The settlement audit asks, for each payment it checks, whether a money call of the order may
-- still land at Stripe (repository.money_calls_in_doubt): one order's calls, newest first.
CREATE INDEX IF NOT EXISTS stripe_money_calls_order_idx ON stripe_money_calls (order_id, started_at);
