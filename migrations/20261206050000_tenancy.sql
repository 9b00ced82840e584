-- The namespace a global key's dashboard session acts in (issue 27): chosen with the switcher,
-- `default` while null. A session of a namespaced key acts in its key's namespace instead.
ALTER TABLE ui_sessions ADD COLUMN namespace text REFERENCES namespaces (name) ON DELETE SET NULL;

-- Calls a namespace's quotas refused (429), per hour and reason (`rate`, `stored`): refused
-- calls leave no invocation record, and the usage report counts them from here.
CREATE TABLE namespace_throttled (
    namespace text NOT NULL,
    hour      timestamptz NOT NULL,
    reason    text NOT NULL,
    calls     bigint NOT NULL,
    PRIMARY KEY (namespace, hour, reason)
);

-- A key bound to named functions (short names, in the key's namespace; null: every function):
-- it invokes those only, and everything else is 404 to it.
ALTER TABLE api_keys ADD COLUMN functions text[];
