-- The retention job (payments_core.retention) deletes old rows in batches of 1,000; each batch
-- finds its rows through these indexes instead of scanning the table. All are new indexes the
-- deployed code does not notice (expand only). A plain CREATE INDEX blocks writes to its table
-- while it builds: on a large outbox, deploy this when traffic is low.
CREATE INDEX IF NOT EXISTS outbox_published_at_idx ON outbox (published_at) WHERE published_at IS NOT NULL;
-- The outbox batch keeps rows a command outcome names: looked up by event id.
CREATE INDEX IF NOT EXISTS command_outcomes_event_idx ON command_outcomes (event_id);
CREATE INDEX IF NOT EXISTS command_outcomes_recorded_idx ON command_outcomes (recorded_at);
CREATE INDEX IF NOT EXISTS stripe_events_received_idx ON stripe_events (received_at);
CREATE INDEX IF NOT EXISTS order_leases_expires_idx ON order_leases (expires_at);
CREATE INDEX IF NOT EXISTS stripe_money_calls_finished_idx
    ON stripe_money_calls (started_at) WHERE finished_at IS NOT NULL;
