-- The trace context (W3C traceparent, tracestate) of the handler that wrote each outbox row: the relay
-- publishes the row later, from another task, and sends these as the message's NATS headers.
ALTER TABLE messaging.outbox ADD COLUMN headers jsonb NOT NULL DEFAULT '{}'::jsonb;
