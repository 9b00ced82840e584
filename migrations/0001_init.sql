-- Functions users register, and every invocation of them.

CREATE TABLE functions (
    name         text PRIMARY KEY,
    image        text NOT NULL,
    description  text,
    timeout_ms   bigint NOT NULL,
    memory_mb    bigint NOT NULL,
    cpus         double precision NOT NULL,
    env          jsonb NOT NULL DEFAULT '{}'::jsonb,
    input_mode   text NOT NULL DEFAULT 'stdin',
    queue        text NOT NULL DEFAULT 'default',
    max_attempts integer NOT NULL DEFAULT 3,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);

-- Invocations outlive their function: no foreign key, so history stays after a delete.
-- Ids are UUIDv7, so ordering by id is ordering by time of arrival.
CREATE TABLE invocations (
    id               uuid PRIMARY KEY,
    function         text NOT NULL,
    status           text NOT NULL,
    trigger          text NOT NULL,
    attempt          integer NOT NULL DEFAULT 0,
    input            bytea,
    input_size       bigint NOT NULL DEFAULT 0,
    output           bytea,
    output_truncated boolean NOT NULL DEFAULT false,
    logs             text,
    logs_truncated   boolean NOT NULL DEFAULT false,
    exit_code        integer,
    error            text,
    queued_at        timestamptz NOT NULL,
    started_at       timestamptz,
    finished_at      timestamptz,
    duration_ms      bigint,
    queue_ms         bigint,
    cold             boolean,
    worker           text,
    cpu_ms           bigint,
    max_memory_bytes bigint,
    idempotency_key  text,
    CONSTRAINT invocations_status_check
        CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'timed_out', 'dead')),
    CONSTRAINT invocations_trigger_check
        CHECK (trigger IN ('sync', 'async', 'webhook', 'event'))
);

CREATE INDEX invocations_function_id ON invocations (function, id DESC);
CREATE INDEX invocations_function_status_id ON invocations (function, status, id DESC);
CREATE UNIQUE INDEX invocations_idempotency ON invocations (function, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
