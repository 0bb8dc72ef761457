-- Jobs deleted by their owner or expired by retention: their tracks are removed, and a
-- `media.converted` arriving later (queues do not keep order between events) adds nothing.
CREATE TABLE catalog.removed_jobs (
    job_id     uuid PRIMARY KEY,
    reason     text NOT NULL CHECK (reason IN ('deleted', 'expired')),
    removed_at timestamptz NOT NULL DEFAULT now()
);
