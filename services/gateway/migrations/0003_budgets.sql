-- Monthly budgets per tenant, in USD. `likeness budgets` writes them (set, clear); the gateway reads them to
-- refuse new characters and shots once the tenant's spend this calendar month (UTC) reaches the budget, and
-- storage reads them to send CostAlert at 80% and 100%. A tenant without a row has no limit.
CREATE TABLE gateway.budgets (
    tenant_id   text PRIMARY KEY,
    monthly_usd numeric(14, 2) NOT NULL CHECK (monthly_usd >= 0),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
