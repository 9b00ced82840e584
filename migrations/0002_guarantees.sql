-- Delivery guarantees: retry policy, the outbox, and worker liveness.

-- Which function failures are retried ("error": non-zero exit, "timeout"); platform failures always are.
ALTER TABLE functions ADD COLUMN retry_on text[] NOT NULL DEFAULT '{}';

-- Set once the broker confirmed the invocation's message; rows left queued without it are re-published.
ALTER TABLE invocations ADD COLUMN published_at timestamptz;
-- The whole input, kept only while it is larger than the stored `input` and not yet published.
ALTER TABLE invocations ADD COLUMN payload bytea;
-- When the next attempt is due, while an invocation waits to be retried.
ALTER TABLE invocations ADD COLUMN retry_at timestamptz;

CREATE INDEX invocations_unpublished ON invocations (queued_at)
    WHERE status = 'queued' AND published_at IS NULL;
CREATE INDEX invocations_dead ON invocations (id DESC) WHERE status = 'dead';

-- Every worker's heartbeat: a `running` invocation whose worker stopped beating may be run again.
CREATE TABLE workers (
    id           text PRIMARY KEY,
    started_at   timestamptz NOT NULL,
    heartbeat_at timestamptz NOT NULL,
    concurrency  integer NOT NULL,
    in_flight    integer NOT NULL,
    queues       text[] NOT NULL
);
