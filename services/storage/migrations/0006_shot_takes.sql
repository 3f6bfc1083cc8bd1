-- The consistency gate: a shot judged `different` or `no_face` gets another take (a new seed, then a
-- fallback provider). Every take is kept here; records.shots shows the shot's current take (its number in
-- `take`), and its status is that take's: a shot is open (requested/stored) while a take is on its way.
ALTER TABLE records.shots ADD COLUMN take integer NOT NULL DEFAULT 1;

CREATE TABLE records.shot_takes (
    shot_id       uuid NOT NULL REFERENCES records.shots ON DELETE CASCADE,
    take          integer NOT NULL CHECK (take >= 1),
    tenant_id     text NOT NULL,
    reason        text NOT NULL CHECK (reason IN ('first', 'regenerate', 'fallback')),
    provider      text NOT NULL,      -- who makes (made) this take
    rerouted_from text,               -- the shot's own provider, when its circuit breaker sent the take elsewhere
    seed          bigint NOT NULL,
    status        text NOT NULL,      -- requested | stored | scored | failed
    image         jsonb,              -- contracts.ImageRef once stored
    latency_ms    double precision,
    cost_usd      double precision,
    attempts      int,
    simulation    jsonb,
    verdict       text,               -- the take's first score's verdict (the one the gate acted on)
    failure_reason text,
    requested_at  timestamptz NOT NULL,
    stored_at     timestamptz,
    finished_at   timestamptz,
    PRIMARY KEY (shot_id, take)
);
CREATE INDEX shot_takes_cost_by_tenant ON records.shot_takes (tenant_id, stored_at) WHERE cost_usd IS NOT NULL;

-- Shots recorded before takes existed: each was its own first and only take.
INSERT INTO records.shot_takes (shot_id, take, tenant_id, reason, provider, seed, status, image, latency_ms,
                                cost_usd, attempts, simulation, verdict, failure_reason, requested_at, stored_at,
                                finished_at)
SELECT s.shot_id, 1, s.tenant_id, 'first', s.provider, coalesce((s.params->>'seed')::bigint, 0), s.status, s.image,
       s.latency_ms, s.cost_usd, s.attempts, s.simulation,
       (SELECT sc.verdict FROM records.scores sc WHERE sc.shot_id = s.shot_id ORDER BY sc.scored_at LIMIT 1),
       s.failure_reason, s.requested_at, s.stored_at, s.finished_at
  FROM records.shots s
ON CONFLICT DO NOTHING;

-- One score per take per scorer key (a take is scored like a shot: re-scorings add rows beside the old ones).
ALTER TABLE records.scores ADD COLUMN take integer NOT NULL DEFAULT 1;
ALTER TABLE records.scores DROP CONSTRAINT scores_shot_id_scorer_key_key;
ALTER TABLE records.scores ADD CONSTRAINT scores_shot_take_scorer_key_key UNIQUE (shot_id, take, scorer_key);
