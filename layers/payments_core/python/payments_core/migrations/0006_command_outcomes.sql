-- The first answer of each command record taken from payment_commands, so that the event source
-- mapping's re-delivery of a record (same topic, partition, offset and bytes) re-announces that
-- answer instead of being judged again against a payment that has moved on since. A new command,
-- even a byte-for-byte copy the saga sends again, has a new offset and is judged afresh.
-- value_digest (SHA-256 of the record's value as delivered) keeps a reused offset (a topic
-- deleted and created again) from taking another command's answer.
-- Written in the transaction that puts the answer in the outbox, so the two always agree.
CREATE TABLE IF NOT EXISTS command_outcomes (
    topic            text NOT NULL,
    kafka_partition  integer NOT NULL,
    kafka_offset     bigint NOT NULL,
    value_digest     bytea NOT NULL,
    event_id         uuid NOT NULL,
    recorded_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (topic, kafka_partition, kafka_offset, value_digest)
);

-- A re-delivered command's answer is re-queued only while it is its order's latest event:
-- that check (command_outcomes.reannounce) reads an order's outbox rows after a given id.
CREATE INDEX IF NOT EXISTS outbox_order_idx ON outbox (order_id, id);
