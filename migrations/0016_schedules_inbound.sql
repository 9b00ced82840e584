-- Event sources (issue 19): cron schedules, and events published straight to RabbitMQ.

ALTER TABLE invocations DROP CONSTRAINT invocations_trigger_check;
ALTER TABLE invocations ADD CONSTRAINT invocations_trigger_check
    CHECK (trigger IN ('sync', 'async', 'webhook', 'event', 'schedule'));

-- The env of one invocation only (GRANDA_SCHEDULE_*, GRANDA_EVENT_*), kept so that the outbox
-- sweep re-publishes an invocation with it. NULL: nothing beyond the function's own env.
ALTER TABLE invocations ADD COLUMN extra_env jsonb;

-- A cron schedule. `next_fire_at` is the cursor: the first fire time not yet claimed. Every
-- ingress's ticker takes a due schedule under FOR UPDATE SKIP LOCKED; the claim itself is the
-- unique row in schedule_fires, written in the transaction that records the invocation.
CREATE TABLE schedules (
    id            uuid PRIMARY KEY,
    function      text NOT NULL REFERENCES functions (name) ON DELETE CASCADE,
    cron          text NOT NULL,
    timezone      text NOT NULL DEFAULT 'UTC',
    payload       bytea NOT NULL DEFAULT ''::bytea,
    content_type  text,
    enabled       boolean NOT NULL DEFAULT true,
    catch_up      text NOT NULL DEFAULT 'none',
    next_fire_at  timestamptz NOT NULL,
    last_fired_at timestamptz,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT schedules_catch_up_check CHECK (catch_up IN ('none', 'latest'))
);

CREATE INDEX schedules_due ON schedules (next_fire_at) WHERE enabled;
CREATE INDEX schedules_function ON schedules (function);

-- One row per tick fired: (schedule, fire time) is claimed once, whatever the number of servers.
CREATE TABLE schedule_fires (
    schedule_id   uuid NOT NULL REFERENCES schedules (id) ON DELETE CASCADE,
    fire_time     timestamptz NOT NULL,
    invocation_id uuid NOT NULL,
    fired_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (schedule_id, fire_time)
);

-- AMQP message ids the inbound router accepted in the last 24 hours: its own idempotency
-- namespace, apart from HTTP callers' Idempotency-Key (events.idempotency_key).
CREATE TABLE inbound_messages (
    message_id  text PRIMARY KEY,
    event_id    uuid NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX inbound_messages_received_at ON inbound_messages (received_at);

-- AMQP headers of an event published to the inbound exchange (string values), as kept.
ALTER TABLE events ADD COLUMN headers jsonb;
