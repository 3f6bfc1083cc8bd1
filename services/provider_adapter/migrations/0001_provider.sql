-- What the provider adapter must remember across restarts: identity jobs (so a restart resumes
-- a paid job instead of submitting a second one) and shots waiting for their identity.
CREATE SCHEMA IF NOT EXISTS provider;

CREATE TABLE provider.identities (
    character_id uuid PRIMARY KEY,
    tenant_id    text NOT NULL,
    provider     text,
    strategy     text,
    status       text NOT NULL,   -- awaiting_references | pending | ready | failed
    job_id       text,            -- the provider's job id, saved before waiting on it
    identity_ref text,
    reference_images jsonb,       -- list of contracts.ImageRef
    failure      text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE provider.waiting_shots (
    shot_id      uuid PRIMARY KEY,
    character_id uuid NOT NULL REFERENCES provider.identities ON DELETE CASCADE,
    request      jsonb NOT NULL,  -- the ShotRequested event
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX waiting_shots_by_character ON provider.waiting_shots (character_id, created_at);
