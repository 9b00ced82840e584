-- Functions built from source: their runtime and current version, and every build with its log.
ALTER TABLE functions ADD COLUMN runtime text, ADD COLUMN version integer;

CREATE TABLE builds (
    id          uuid PRIMARY KEY,
    function    text NOT NULL,
    version     integer NOT NULL,
    runtime     text NOT NULL,
    image       text NOT NULL,
    -- building | succeeded | failed
    status      text NOT NULL,
    log         text NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    UNIQUE (function, version)
);
