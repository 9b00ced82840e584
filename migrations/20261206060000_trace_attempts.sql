-- Issue 30: the W3C trace context an invocation was accepted in, kept with it so that the
-- outbox's re-publish and its result callback join the caller's trace; and a row per attempt
-- that did not end the invocation (retried, taken over, retried by hand). The last attempt is
-- the record itself, so the happy path writes nothing here.
ALTER TABLE invocations ADD COLUMN traceparent text, ADD COLUMN tracestate text;

CREATE TABLE invocation_attempts (
    invocation_id uuid NOT NULL REFERENCES invocations (id) ON DELETE CASCADE,
    attempt       integer NOT NULL,
    worker        text,
    started_at    timestamptz,
    finished_at   timestamptz NOT NULL DEFAULT now(),
    status        text NOT NULL,
    exit_code     integer,
    error         text,
    duration_ms   bigint,
    PRIMARY KEY (invocation_id, attempt)
);
