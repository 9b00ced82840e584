-- Dashboard sessions: a key typed into /ui/login becomes an HttpOnly cookie whose SHA-256 is stored here.
CREATE TABLE ui_sessions (
    token_hash bytea PRIMARY KEY,
    scope      text NOT NULL,
    key_id     text,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL
);
CREATE INDEX ui_sessions_expires_at ON ui_sessions (expires_at);
