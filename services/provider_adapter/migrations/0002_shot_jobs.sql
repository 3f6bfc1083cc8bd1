-- Every provider job submitted for a shot, saved before anything waits on it: a redelivered
-- GenerateShot (after a crash, a restart, a failed poll) resumes the saved job instead of paying
-- for a second one. `attempt` numbers the shot's submissions: a new one is made only after the
-- previous job ended without an image (outcome 'failed'), so "no job was submitted twice" reads
-- as: per shot, attempts 1..n with every attempt but the last 'failed'.
CREATE TABLE provider.shot_jobs (
    shot_id      uuid NOT NULL,
    attempt      integer NOT NULL CHECK (attempt >= 1),
    tenant_id    text NOT NULL,
    provider     text NOT NULL,
    job_id       text NOT NULL,     -- the provider's job id, as its adapter's finish_shot reads it
    submitted_at timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz,
    outcome      text CHECK (outcome IN ('succeeded', 'failed', 'refused', 'abandoned')),  -- NULL: running
    failure      text,
    PRIMARY KEY (shot_id, attempt)  -- a second submission for the same shot and attempt cannot be recorded
);
-- At most one job per shot that is running or made its image: anything else is a double submission.
CREATE UNIQUE INDEX shot_jobs_one_live_job ON provider.shot_jobs (shot_id)
    WHERE outcome IS NULL OR outcome = 'succeeded';
