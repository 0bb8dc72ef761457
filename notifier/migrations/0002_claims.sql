-- A delivery is claimed ('sending') before the SMTP conversation, so two copies of one event
-- handled at once cannot both send; a permanent refusal is 'failed' ("rejected" said less).
ALTER TABLE notifier.deliveries DROP CONSTRAINT deliveries_status_check;
UPDATE notifier.deliveries SET status = 'failed' WHERE status = 'rejected';
ALTER TABLE notifier.deliveries
    ADD CONSTRAINT deliveries_status_check CHECK (status IN ('sending', 'sent', 'failed')),
    ADD COLUMN claimed_at timestamptz NOT NULL DEFAULT now();
