CREATE TABLE gateway.jobs (
    id                uuid PRIMARY KEY,
    owner_id          uuid NOT NULL,
    owner_email       text NOT NULL,
    state             text NOT NULL CHECK (state IN ('queued', 'converting', 'converted', 'failed', 'expired')),
    progress          real NOT NULL DEFAULT 0,
    preset            text NOT NULL,
    source_file_id    text NOT NULL,
    source_filename   text NOT NULL,
    source_size       bigint NOT NULL,
    source_sha256     text NOT NULL,
    output_file_id    text,
    output_duration_s double precision,
    output_bitrate    integer,
    tags              jsonb NOT NULL DEFAULT '[]',
    error             text,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX jobs_owner_created ON gateway.jobs (owner_id, created_at DESC);
CREATE INDEX jobs_output_file ON gateway.jobs (output_file_id);

-- Events written in the same transaction as the job; the relay publishes and deletes them.
CREATE TABLE gateway.outbox (
    id          uuid PRIMARY KEY,
    routing_key text NOT NULL,
    payload     bytea NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
