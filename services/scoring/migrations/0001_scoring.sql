-- Reference embeddings, computed once per character and scorer version, shared by every replica.
CREATE SCHEMA IF NOT EXISTS scoring;

CREATE TABLE scoring.reference_embeddings (
    character_id   uuid NOT NULL,
    scorer_version text NOT NULL,
    references_sha text NOT NULL,   -- sha256 over the reference images' sha256s, in order
    embeddings     bytea NOT NULL,  -- services.scoring.scorer.ReferenceEmbeddings.to_bytes()
    created_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (character_id, scorer_version, references_sha)
);
