-- The trained weights a provider handed out (fal Flux LoRA, Replicate), copied into our object storage:
-- an ArtifactRef (key, sha256, size_bytes, content_type, file_name), or NULL.
ALTER TABLE records.characters ADD COLUMN identity_weights jsonb;
