-- Login and registration attempt counters shared by every auth replica (attempt_limits.rs).
-- A new row's window has already ended, so its first attempt opens one.
CREATE TABLE auth.attempt_limits (
    key         text PRIMARY KEY,
    window_ends timestamptz NOT NULL DEFAULT now(),
    attempts    integer NOT NULL DEFAULT 0,
    not_before  timestamptz NOT NULL DEFAULT 'epoch'
);
CREATE INDEX attempt_limits_expiry ON auth.attempt_limits (window_ends);
