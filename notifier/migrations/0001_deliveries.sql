-- One row per job and outcome: the ledger that makes a redelivered event send nothing new.
CREATE TABLE notifier.deliveries (
    job_id     uuid NOT NULL,
    kind       text NOT NULL CHECK (kind IN ('converted', 'failed')),
    recipient  text NOT NULL,
    status     text NOT NULL CHECK (status IN ('sent', 'rejected')),
    detail     text,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, kind)
);
