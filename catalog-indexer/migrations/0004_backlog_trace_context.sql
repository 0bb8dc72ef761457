-- The trace of the upload a track waiting for its tags came from (W3C traceparent and
-- tracestate): the late lookup, and the `media.catalogued` it publishes, stay in that trace.
ALTER TABLE catalog.tag_backlog
    ADD COLUMN traceparent text,
    ADD COLUMN tracestate text;
