-- Dashboard sessions are bound to the API key that made them: revoking the key ends them (the
-- revoke deletes them in its transaction, and deleting the key row cascades). NULL only for
-- sessions made with GRANDA_AUTH=off, which are valid only while auth stays off.
-- Sessions made before this carry no key, so they end here: users log in again.
DELETE FROM ui_sessions;
ALTER TABLE ui_sessions DROP COLUMN key_id;
ALTER TABLE ui_sessions ADD COLUMN key_id uuid REFERENCES api_keys (id) ON DELETE CASCADE;
CREATE INDEX ui_sessions_key_id ON ui_sessions (key_id);
