-- API keys the gateway accepts besides the bootstrap keys of LIKENESS_GATEWAY_API_KEYS. `likeness keys`
-- writes them; the gateway reads them (and notes when each was last used).
--
-- Only a key's sha256 is kept, never the key: keys are 32 random bytes from `secrets`, so a plain hash is
-- enough (nothing to guess, so no slow password hash is needed) and lookup by hash is exact.
CREATE SCHEMA IF NOT EXISTS gateway;

CREATE TABLE gateway.api_keys (
    key_id       text PRIMARY KEY,            -- the public part: lk_<key_id>_<secret>
    tenant_id    text NOT NULL,
    name         text NOT NULL DEFAULT '',    -- what the key is for, e.g. 'ci' or 'mobile app'
    scopes       text[] NOT NULL
                 CHECK (cardinality(scopes) > 0 AND scopes <@ ARRAY['read', 'write', 'admin']::text[]),
    key_sha256   bytea NOT NULL UNIQUE CHECK (octet_length(key_sha256) = 32),  -- the lookup index
    created_at   timestamptz NOT NULL DEFAULT now(),
    revoked_at   timestamptz,                 -- refused from then on (within the gateway's key cache)
    last_used_at timestamptz                  -- updated at most once per key cache period
);
CREATE INDEX api_keys_by_tenant ON gateway.api_keys (tenant_id, created_at);
