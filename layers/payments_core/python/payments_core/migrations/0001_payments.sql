-- Payments, their outbox of events, and the Stripe webhook events already applied.
-- Amounts are integer cents: never floats.

CREATE TABLE IF NOT EXISTS payments (
    payment_id                 uuid PRIMARY KEY,
    order_id                   text NOT NULL UNIQUE,
    correlation_id             text,
    clerk_user_id              text,
    stripe_customer_id         text,
    payment_method_id          text,
    amount_cents               bigint NOT NULL CHECK (amount_cents > 0),
    currency                   text NOT NULL,
    description                text,
    return_url                 text,
    status                     text NOT NULL CHECK (status IN
        ('PENDING', 'REQUIRES_ACTION', 'AUTHORIZED', 'SUCCEEDED', 'REVERTED', 'FAILED')),
    payment_intent_id          text UNIQUE,
    -- how many times a PaymentIntent create was attempted: >0 with no payment_intent_id means
    -- an earlier attempt may have reached Stripe, so look it up before creating again
    stripe_create_attempts     integer NOT NULL DEFAULT 0,
    next_action_url            text,
    failure_code               text,
    failure_message            text,
    stripe_code                text,
    decline_code               text,
    runner_id                  text,
    runner_connect_account_id  text,
    captured_amount_cents      bigint,
    transfer_id                text,
    transfer_failure           text,
    refund_id                  text,
    transfer_reversal_id       text,
    revert_reason              text,
    created_at                 timestamptz NOT NULL DEFAULT now(),
    updated_at                 timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX IF NOT EXISTS payments_status_updated_idx ON payments (status, updated_at);

-- Events are written here in the same transaction as the state change they announce, then
-- published; event_id is stable, so re-announcing re-queues the same row.
CREATE TABLE IF NOT EXISTS outbox (
    id              bigserial PRIMARY KEY,
    event_id        uuid NOT NULL UNIQUE,
    order_id        text NOT NULL,
    payment_id      uuid,
    event_type      text NOT NULL,
    envelope        text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    published_at    timestamptz,
    attempts        integer NOT NULL DEFAULT 0,
    last_error      text
);

CREATE INDEX IF NOT EXISTS outbox_unpublished_idx ON outbox (id) WHERE published_at IS NULL;
CREATE INDEX IF NOT EXISTS outbox_payment_idx ON outbox (payment_id);

CREATE TABLE IF NOT EXISTS stripe_events (
    stripe_event_id    text PRIMARY KEY,
    event_type         text NOT NULL,
    payment_intent_id  text,
    received_at        timestamptz NOT NULL DEFAULT now()
);
