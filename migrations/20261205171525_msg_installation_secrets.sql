-- Secrets of the installation itself, made once by the first process that needs them and read
-- by every ingress and worker at start (`crate::seal`): `message_signing_key` (HMAC-SHA256 of
-- every work message) and `secrets_key` (seals function secrets when GRANDA_SECRETS_KEY is not
-- given). Apart from `installation` so that access to them can be granted on their own.
CREATE TABLE installation_secrets (
    name       text PRIMARY KEY,
    value      bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
