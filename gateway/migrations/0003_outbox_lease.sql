-- The relay claims rows with a lease in a short transaction and publishes outside it; a row
-- whose lease ran out (its gateway died mid-publish) is claimed again by any gateway.
ALTER TABLE gateway.outbox ADD COLUMN leased_until timestamptz;
CREATE INDEX outbox_created ON gateway.outbox (created_at);
