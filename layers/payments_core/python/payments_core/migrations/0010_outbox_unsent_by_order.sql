-- Issue 19: after a Kafka outage the outbox holds many unsent rows, and every publish (the
-- relay's batches and the best-effort publish after each commit) reads "the unsent rows of
-- these orders, oldest first". outbox_unpublished_idx (0001) only orders all unsent rows by id,
-- so that read scanned the whole backlog (208 ms at 300k rows). This index answers it per order.
-- A new index the deployed code does not notice (expand only). A plain CREATE INDEX blocks
-- writes to the outbox while it builds: deploy this when traffic is low, not during a backlog.
CREATE INDEX IF NOT EXISTS outbox_unsent_by_order_idx ON outbox (order_id, id) WHERE published_at IS NULL;
