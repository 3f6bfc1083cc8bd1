-- Human evaluation: one answer per rater per shot ("same character as the references?"); a later vote
-- by the same rater replaces the earlier one.
CREATE TABLE records.votes (
    shot_id      uuid NOT NULL REFERENCES records.shots ON DELETE CASCADE,
    rater        text NOT NULL,
    tenant_id    text NOT NULL,
    character_id uuid NOT NULL,
    answer       text NOT NULL CHECK (answer IN ('yes', 'no', 'unsure')),
    event_id     uuid NOT NULL,
    voted_at     timestamptz NOT NULL,
    PRIMARY KEY (shot_id, rater)
);
CREATE INDEX votes_by_tenant ON records.votes (tenant_id, character_id);
