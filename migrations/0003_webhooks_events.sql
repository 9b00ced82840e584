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
