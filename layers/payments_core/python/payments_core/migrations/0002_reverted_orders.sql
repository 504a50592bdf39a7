-- Orders reverted before any payment existed for them: the saga's revert overtook its own
-- authorize (a timeout, a retry). A late authorize for such an order must not place a hold
-- that nobody will ever release.
CREATE TABLE IF NOT EXISTS reverted_orders (
    order_id        text PRIMARY KEY,
    reason          text,
    correlation_id  text,
    created_at      timestamptz NOT NULL DEFAULT now()
);
