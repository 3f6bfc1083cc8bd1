-- Monthly budgets (the budget itself is set with `likeness budgets` in gateway.budgets; storage only reads it).
--
-- A tenant's spend in a calendar month (UTC) is what this schema records: each shot's cost_usd in the month of
-- its stored_at, and each identity's identity_cost_usd in the month of its identity_ready_at (below). Simulated
-- costs count.
ALTER TABLE records.characters ADD COLUMN identity_ready_at timestamptz;  -- when the identity's cost was recorded
-- Identities recorded before this column: updated_at is the best guess left (it moves on status changes).
UPDATE records.characters SET identity_ready_at = updated_at WHERE identity_cost_usd IS NOT NULL;

CREATE INDEX shots_cost_by_tenant ON records.shots (tenant_id, stored_at) WHERE cost_usd IS NOT NULL;
CREATE INDEX characters_cost_by_tenant ON records.characters (tenant_id, identity_ready_at)
    WHERE identity_cost_usd IS NOT NULL;

-- The CostAlert events sent: one per tenant, month and threshold, whichever replica or redelivery gets there
-- first (the primary key); written in the transaction that records the cost, beside the event in the outbox.
CREATE TABLE records.cost_alerts (
    tenant_id         text NOT NULL,
    month             text NOT NULL CHECK (month ~ '^\d{4}-(0[1-9]|1[0-2])$'),   -- YYYY-MM (UTC)
    threshold_percent integer NOT NULL CHECK (threshold_percent IN (80, 100)),
    event_id          uuid NOT NULL UNIQUE,     -- the CostAlert's id (derived from the three above)
    budget_usd        double precision NOT NULL,
    spend_usd         double precision NOT NULL,
    simulated_usd     double precision NOT NULL,
    alerted_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, month, threshold_percent)
);
