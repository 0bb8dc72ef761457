-- Resumable uploads (tus): what is durably stored of each, so any gateway can continue it.
-- Whole 255 KiB pieces are GridFS chunks of the final file (`file_id`); the rest (`tail`,
-- shorter than a chunk) is kept here until the next PATCH completes it. `sha256_state` is the
-- hash of the whole chunks stored so far. A finished upload keeps its row, with its job,
-- until it expires, so a client that missed the last answer learns its job from HEAD.
CREATE TABLE gateway.tus_uploads (
    id uuid PRIMARY KEY,
    owner_id uuid NOT NULL,
    file_id text NOT NULL UNIQUE,
    length bigint CHECK (length >= 0),
    received bigint NOT NULL DEFAULT 0 CHECK (received >= 0 AND (length IS NULL OR received <= length)),
    tail bytea NOT NULL DEFAULT '',
    sha256_state bytea NOT NULL,
    metadata text NOT NULL DEFAULT '',
    filename text NOT NULL,
    details jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    job_id uuid,
    -- The PATCH writing it holds this lease, renewed as it goes; a gateway that died
    -- mid-PATCH lets it run out.
    lease uuid,
    leased_until timestamptz
);
CREATE INDEX tus_uploads_owner ON gateway.tus_uploads (owner_id) WHERE job_id IS NULL;
CREATE INDEX tus_uploads_expiry ON gateway.tus_uploads (expires_at);
