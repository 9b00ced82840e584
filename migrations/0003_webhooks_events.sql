-- Webhooks (external systems call /hooks/{id}), event subscriptions and published events,
-- result callbacks, and installation-wide key/value settings (the callback signing key).

-- A webhook binds an unguessable URL to a function and a verification scheme.
-- The secret is kept as given, since verifying needs it; the API never shows it again.
CREATE TABLE webhooks (
    id                       uuid PRIMARY KEY,
    function                 text NOT NULL REFERENCES functions (name) ON DELETE CASCADE,
    scheme                   text NOT NULL,
    secret                   text,
    previous_secret          text,
    previous_secret_until    timestamptz,
    header                   text,
    encoding                 text,
    id_header                text,
    created_at               timestamptz NOT NULL DEFAULT now(),
    rotated_at               timestamptz,
    CONSTRAINT webhooks_scheme_check
        CHECK (scheme IN ('github', 'stripe', 'standard', 'hmac-sha256', 'none'))
);

CREATE INDEX webhooks_function ON webhooks (function);

-- A function's subscriptions to published events, by AMQP topic pattern (`orders.*`, `orders.#`).
CREATE TABLE subscriptions (
    id         uuid PRIMARY KEY,
    function   text NOT NULL REFERENCES functions (name) ON DELETE CASCADE,
    pattern    text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT subscriptions_function_pattern UNIQUE (function, pattern)
);

-- Every published event, with the invocations it fanned out to (none is fine).
-- Ids are UUIDv7. An idempotency key makes a retried publish fan out only what is missing.
CREATE TABLE events (
    id              uuid PRIMARY KEY,
    topic           text NOT NULL,
    payload         bytea NOT NULL,
    size            bigint NOT NULL,
    content_type    text,
    invocations     jsonb NOT NULL DEFAULT '[]'::jsonb,
    idempotency_key text UNIQUE,
    published_at    timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX events_topic_id ON events (topic, id DESC);

-- Result callbacks: where the final record is POSTed, and how that went.
-- callback_status: pending → delivering → delivered | failed.
ALTER TABLE functions ADD COLUMN callback_url text;
ALTER TABLE invocations
    ADD COLUMN callback_url        text,
    ADD COLUMN callback_status     text,
    ADD COLUMN callback_attempts   integer NOT NULL DEFAULT 0,
    ADD COLUMN callback_error      text,
    ADD COLUMN callback_claimed_at timestamptz,
    ADD COLUMN callback_done_at    timestamptz;

-- Installation-wide settings every server and worker shares (the callback signing key).
CREATE TABLE installation (
    key        text PRIMARY KEY,
    value      text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
