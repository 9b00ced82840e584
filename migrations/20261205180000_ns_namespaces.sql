-- Namespaces (issue 27). A function's stored name is qualified by its namespace: `echo` in
-- `default` (so everything made before namespaces is in `default`, unchanged, and keeps its URL),
-- `echo.team-b` in `team-b` (function and namespace names have no dots, so the split is exact).
-- Everything that names a function (invocations, webhooks, schedules, subscriptions, builds)
-- therefore belongs to its namespace, and names are unique per namespace, through the keys that
-- are there already. The `namespace` columns below are derived from the name, for filtering.
CREATE TABLE namespaces (
    name                   text PRIMARY KEY,
    max_concurrency        integer,
    invocations_per_minute integer,
    max_stored_bytes       bigint,
    created_at             timestamptz NOT NULL DEFAULT now(),
    updated_at             timestamptz NOT NULL DEFAULT now()
);
INSERT INTO namespaces (name) VALUES ('default');

ALTER TABLE functions ADD COLUMN namespace text NOT NULL GENERATED ALWAYS AS (
    CASE WHEN strpos(name, '.') > 0 THEN split_part(name, '.', 2) ELSE 'default' END) STORED;
CREATE INDEX functions_namespace ON functions (namespace, name);

ALTER TABLE invocations ADD COLUMN namespace text NOT NULL GENERATED ALWAYS AS (
    CASE WHEN strpos(function, '.') > 0 THEN split_part(function, '.', 2) ELSE 'default' END) STORED;
CREATE INDEX invocations_namespace_id ON invocations (namespace, id DESC);

-- Events are published in a namespace and reach only its subscriptions.
ALTER TABLE events ADD COLUMN namespace text NOT NULL DEFAULT 'default';
-- (Its idempotency key is stored as `<namespace>:<key>` outside `default`, so keys stay unique.)
CREATE INDEX events_namespace_id ON events (namespace, id DESC);

-- Keys may be bound to one namespace (null: a global key); a `read` scope.
ALTER TABLE api_keys ADD COLUMN namespace text REFERENCES namespaces (name) ON DELETE CASCADE;
ALTER TABLE api_keys DROP CONSTRAINT api_keys_scope_check;
ALTER TABLE api_keys ADD CONSTRAINT api_keys_scope_check CHECK (scope IN ('admin', 'invoke', 'read'));

-- Who made a call: the key (null for anonymous, webhook, schedule and event calls).
ALTER TABLE invocations ADD COLUMN key_id uuid;

-- Quotas. `max_concurrency`: runs at once across all workers, counted from the records (a
-- worker that dies leaves nothing to undo); `invocations_per_minute`: a counter per namespace
-- and minute, shared by every ingress. The running count reads `invocations_namespace_id`: an
-- index that names `status` (even in a WHERE) would make every claim and final record a
-- non-HOT update, for every namespace, quota or not.
CREATE TABLE namespace_calls (
    namespace text NOT NULL,
    minute    timestamptz NOT NULL,
    calls     integer NOT NULL,
    PRIMARY KEY (namespace, minute)
);
