-- The trace of the request that began a resumable upload: the request that finishes it, in a
-- trace of its own, links to it.
ALTER TABLE gateway.tus_uploads
    ADD COLUMN traceparent text,
    ADD COLUMN tracestate text;
