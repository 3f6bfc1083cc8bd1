-- Messages a consumer gave up on after its last allowed delivery (max_deliver), with the error.
-- The same record is published on likeness.deadletter.<consumer>; `likeness dlq` lists, shows,
-- redrives and drops them. A row is written once per (consumer, stream sequence).
CREATE TABLE messaging.dead_letters (
    id           bigserial PRIMARY KEY,
    service      text NOT NULL,
    consumer     text NOT NULL,          -- the durable JetStream consumer, e.g. scoring-shot-stored
    subject      text NOT NULL,          -- where the message was published
    stream_seq   bigint NOT NULL,        -- its sequence in the LIKENESS stream
    event_id     uuid,                   -- NULL when the payload could not be read as an event
    correlation_id uuid,
    tenant_id    text,
    payload      bytea NOT NULL,         -- the message exactly as it was delivered
    headers      jsonb NOT NULL DEFAULT '{}'::jsonb,
    error        text NOT NULL,
    deliveries   integer NOT NULL,
    dead_at      timestamptz NOT NULL DEFAULT now(),
    redriven_at  timestamptz,
    redrive_count integer NOT NULL DEFAULT 0,
    dropped_at   timestamptz,
    UNIQUE (consumer, stream_seq)
);
CREATE INDEX dead_letters_open ON messaging.dead_letters (dead_at) WHERE dropped_at IS NULL AND redriven_at IS NULL;
