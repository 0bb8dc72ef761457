-- The same owner sending the same bytes for the same preset gets the live job back.
CREATE UNIQUE INDEX jobs_dedupe ON gateway.jobs (owner_id, source_sha256, preset)
    WHERE state IN ('queued', 'converting', 'converted');

-- Cursor pagination walks (created_at, id) newest first, per owner or across all (admins).
DROP INDEX gateway.jobs_owner_created;
CREATE INDEX jobs_owner_created ON gateway.jobs (owner_id, created_at DESC, id DESC);
CREATE INDEX jobs_created ON gateway.jobs (created_at DESC, id DESC);

-- Retention finds jobs by the GridFS files it removes.
CREATE INDEX jobs_source_file ON gateway.jobs (source_file_id);
ALTER TABLE gateway.jobs ADD COLUMN source_removed_at timestamptz;
