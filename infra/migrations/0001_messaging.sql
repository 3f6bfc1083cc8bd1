-- Delivery plumbing shared by every service: the transactional outbox and the processed-event table.
CREATE SCHEMA IF NOT EXISTS messaging;

-- Events written in the same transaction as the state change that caused them;
-- each service's relay publishes its own rows to JetStream (Nats-Msg-Id = event_id).
CREATE TABLE messaging.outbox (
    seq          bigserial PRIMARY KEY,
    event_id     uuid NOT NULL UNIQUE,
    service      text NOT NULL,
    subject      text NOT NULL,
    payload      jsonb NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    published_at timestamptz
);
CREATE INDEX outbox_unpublished ON messaging.outbox (service, seq) WHERE published_at IS NULL;

-- One row per (consumer, event): a redelivered or duplicated event is recognised and skipped.
CREATE TABLE messaging.processed_events (
    consumer     text NOT NULL,
    event_id     uuid NOT NULL,
    processed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, event_id)
);
