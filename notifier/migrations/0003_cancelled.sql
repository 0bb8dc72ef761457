-- A deleted job's deliveries are 'cancelled' before any outcome arrives, so none is sent.
ALTER TABLE notifier.deliveries DROP CONSTRAINT deliveries_status_check;
ALTER TABLE notifier.deliveries
    ADD CONSTRAINT deliveries_status_check CHECK (status IN ('sending', 'sent', 'failed', 'cancelled'));
