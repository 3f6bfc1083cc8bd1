-- One score per shot per scorer key (scorer version + models + thresholds), not per scorer version:
-- a re-scoring after a model or calibration change adds rows beside the old ones.
ALTER TABLE records.scores ADD COLUMN scorer_key text;
UPDATE records.scores SET scorer_key = coalesce(score->>'scorer_key', scorer_version);
ALTER TABLE records.scores ALTER COLUMN scorer_key SET NOT NULL;
ALTER TABLE records.scores DROP CONSTRAINT scores_shot_id_scorer_version_key;
ALTER TABLE records.scores ADD CONSTRAINT scores_shot_id_scorer_key_key UNIQUE (shot_id, scorer_key);
