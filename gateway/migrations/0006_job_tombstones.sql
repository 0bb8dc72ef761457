-- A deleted job leaves no row for the live feed (GET /v1/events) to read: its tombstone tells
-- every replica's feed, then goes after an hour (each delete prunes the old ones).
CREATE TABLE gateway.job_tombstones (
    job_id uuid PRIMARY KEY,
    owner_id uuid NOT NULL,
    deleted_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX job_tombstones_deleted ON gateway.job_tombstones (deleted_at);
