-- The job an event is about and the trace it belongs to (W3C traceparent and tracestate):
-- the relay publishes it in that trace. Nullable: rows written before carry neither.
ALTER TABLE gateway.outbox
    ADD COLUMN job_id uuid,
    ADD COLUMN traceparent text,
    ADD COLUMN tracestate text;
