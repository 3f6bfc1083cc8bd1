-- The system of record: characters, references, shots and scores. Only the storage service writes here;
-- the gateway reads (see README, "Who reads what").
CREATE SCHEMA IF NOT EXISTS records;

CREATE TABLE records.characters (
    character_id       uuid PRIMARY KEY,
    tenant_id          text NOT NULL,
    name               text NOT NULL,
    strategy           text NOT NULL,
    provider           text NOT NULL,
    status             text NOT NULL,   -- building_identity | ready | identity_failed | completed
    identity_percent   double precision NOT NULL DEFAULT 0,
    identity_ref       text,
    training_seconds   double precision,
    identity_cost_usd  double precision,
    identity_simulated boolean,
    identity_failure   text,
    created_at         timestamptz NOT NULL,
    updated_at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX characters_by_tenant ON records.characters (tenant_id, created_at DESC);

CREATE TABLE records.reference_images (
    character_id uuid NOT NULL REFERENCES records.characters ON DELETE CASCADE,
    position     int NOT NULL,
    image        jsonb NOT NULL,     -- contracts.ImageRef
    PRIMARY KEY (character_id, position)
);

CREATE TABLE records.shots (
    shot_id        uuid PRIMARY KEY,
    character_id   uuid NOT NULL REFERENCES records.characters ON DELETE CASCADE,
    tenant_id      text NOT NULL,
    status         text NOT NULL,    -- requested | stored | scored | failed
    params         jsonb NOT NULL,   -- contracts.ShotParams
    provider       text NOT NULL,
    image          jsonb,            -- contracts.ImageRef once stored
    latency_ms     double precision,
    cost_usd       double precision,
    attempts       int,
    simulation     jsonb,            -- contracts.SimulationNote for simulated images
    failure_stage  text,
    failure_reason text,
    requested_at   timestamptz NOT NULL,
    stored_at      timestamptz,
    finished_at    timestamptz
);
CREATE INDEX shots_by_character ON records.shots (character_id, requested_at);

-- Every score ever computed; a new scorer version adds rows, it never rewrites old ones.
CREATE TABLE records.scores (
    score_id       bigserial PRIMARY KEY,
    shot_id        uuid NOT NULL REFERENCES records.shots ON DELETE CASCADE,
    event_id       uuid NOT NULL UNIQUE,
    scorer_version text NOT NULL,
    verdict        text NOT NULL,
    face_distance  double precision,
    clip_similarity double precision,
    score          jsonb NOT NULL,   -- contracts.ShotScore
    scored_at      timestamptz NOT NULL,
    UNIQUE (shot_id, scorer_version)
);

-- Each character's events in the order this service saw them: the progress feed (SSE) reads it.
CREATE TABLE records.event_log (
    seq          bigserial PRIMARY KEY,
    event_id     uuid NOT NULL UNIQUE,
    tenant_id    text NOT NULL,
    character_id uuid NOT NULL,
    type         text NOT NULL,
    payload      jsonb NOT NULL,
    occurred_at  timestamptz NOT NULL
);
CREATE INDEX event_log_by_character ON records.event_log (character_id, seq);
