-- The live job feed (`GET /v1/events`) reads the jobs changed since its last reading.
CREATE INDEX jobs_updated ON gateway.jobs (updated_at);
