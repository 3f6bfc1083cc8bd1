-- Callbacks: apps' endpoints that Likeness calls (signed, Standard Webhooks) when their events happen, and
-- the delivery log. The gateway writes both: `POST /v1/callbacks` registers an endpoint, its outbound
-- consumer adds one delivery per (endpoint, event), and its delivery loop sends them and records each attempt.
--
-- The secret is kept as issued (whsec_<base64>), not hashed: the gateway needs it to sign every delivery.
-- Whoever can read this table can sign as Likeness to these endpoints; the API shows it only once.

CREATE TABLE gateway.callback_endpoints (
    endpoint_id  uuid PRIMARY KEY,
    tenant_id    text NOT NULL,
    url          text NOT NULL CHECK (length(url) <= 2048),
    events       text[] NOT NULL
                 CHECK (cardinality(events) > 0 AND events <@ ARRAY['ShotScored', 'CharacterCompleted']::text[]),
    secret       text NOT NULL,                 -- signs deliveries; never logged, never returned again
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX callback_endpoints_by_tenant ON gateway.callback_endpoints (tenant_id, created_at);

CREATE TABLE gateway.callback_deliveries (
    delivery_id      uuid PRIMARY KEY,          -- the webhook-id header: the same on every attempt
    endpoint_id      uuid NOT NULL REFERENCES gateway.callback_endpoints ON DELETE CASCADE,
    tenant_id        text NOT NULL,
    event_id         uuid NOT NULL,
    event_type       text NOT NULL,
    body             text NOT NULL,             -- the exact JSON sent and signed (text: its bytes never change)
    status           text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz,               -- pending: when it is due (or when a claim lapses); else NULL
    last_attempt_at  timestamptz,
    last_status_code integer,                   -- the app's last HTTP status; NULL if it never answered
    last_error       text,                      -- what went wrong last (the status and the start of the body,
                                                -- a time-out, a refused address); NULL once delivered
    delivered_at     timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (endpoint_id, event_id)              -- a redelivered event adds nothing
);
CREATE INDEX callback_deliveries_due ON gateway.callback_deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX callback_deliveries_by_endpoint ON gateway.callback_deliveries (endpoint_id, created_at DESC);
