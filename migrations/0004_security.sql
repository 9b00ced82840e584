-- Isolation settings per function, write-only secrets, and API keys.

ALTER TABLE functions
    ADD COLUMN pids    bigint  NOT NULL DEFAULT 256,
    ADD COLUMN network text    NOT NULL DEFAULT 'none',
    ADD COLUMN run_as  text,
    ADD COLUMN container_runtime text,
    ADD COLUMN tmp_mb  bigint  NOT NULL DEFAULT 64,
    ADD COLUMN public  boolean NOT NULL DEFAULT false,
    -- Env values the API never shows. Kept in the clear here (protect the database like any
    -- secret store); they travel to workers in the work message's headers.
    ADD COLUMN secrets jsonb   NOT NULL DEFAULT '{}'::jsonb,
    ADD CONSTRAINT functions_network_check CHECK (network IN ('none', 'bridge'));

-- Only the SHA-256 of a key is kept; the key itself is shown once, when it is made.
CREATE TABLE api_keys (
    id         uuid PRIMARY KEY,
    name       text NOT NULL,
    scope      text NOT NULL,
    hash       bytea NOT NULL UNIQUE,
    -- The first characters of the key, to tell keys apart in listings (not enough to guess it).
    prefix     text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz,
    CONSTRAINT api_keys_scope_check CHECK (scope IN ('admin', 'invoke'))
);
