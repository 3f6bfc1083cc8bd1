-- The consistency gate's retakes: a shot may have several takes (1 first, 2 and on regenerated or made by a
-- fallback provider), each with its own provider jobs. "No job submitted twice" now reads per take: per
-- (shot, take), attempts 1..n with every attempt but the last 'failed', and at most one live job.
ALTER TABLE provider.shot_jobs ADD COLUMN take integer NOT NULL DEFAULT 1 CHECK (take >= 1);
ALTER TABLE provider.shot_jobs DROP CONSTRAINT shot_jobs_pkey;
ALTER TABLE provider.shot_jobs ADD PRIMARY KEY (shot_id, take, attempt);
DROP INDEX provider.shot_jobs_one_live_job;
CREATE UNIQUE INDEX shot_jobs_one_live_job ON provider.shot_jobs (shot_id, take)
    WHERE outcome IS NULL OR outcome = 'succeeded';

-- Identities built with a fallback provider for a character whose own identity is another provider's (the
-- gate's fallback take, or new work while its own provider's circuit breaker is open). Only instant-reference
-- providers: the identity is the references, ready at once, at no cost. The job id is saved before waiting.
CREATE TABLE provider.fallback_identities (
    character_id uuid NOT NULL,
    provider     text NOT NULL,
    tenant_id    text NOT NULL,
    job_id       text NOT NULL,
    identity_ref text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (character_id, provider)
);
