-- The W3C trace context of the request that triggered a session: the
-- request span's `traceparent` (and the caller's `tracestate`), sent on
-- with each of the session's dispatches so they join that trace, from any
-- replica and after a restart (docs/operations.md, "Tracing"). Sessions
-- created before this have none; their dispatches start a trace each.
ALTER TABLE sessions ADD COLUMN traceparent TEXT;
ALTER TABLE sessions ADD COLUMN tracestate TEXT;
