-- Last.fm answers, kept for a while: the same artist and title are not asked twice.
CREATE TABLE catalog.lastfm_cache (
    lookup     text PRIMARY KEY,
    tags       jsonb NOT NULL,
    source     text NOT NULL,
    fetched_at timestamptz NOT NULL DEFAULT now()
);

-- Tracks catalogued without tags because Last.fm could not answer; retried with backoff
-- until it does, so their tags arrive late rather than never.
CREATE TABLE catalog.tag_backlog (
    job_id          uuid PRIMARY KEY REFERENCES catalog.tracks (job_id) ON DELETE CASCADE,
    artist          text NOT NULL,
    title           text NOT NULL,
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_error      text
);
CREATE INDEX tag_backlog_due ON catalog.tag_backlog (next_attempt_at);
