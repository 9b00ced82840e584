-- Callbacks are signed per function (Standard Webhooks: `whsec_` and the base64 of 32 bytes).
-- Every existing function gets its own key, and so does each new one, from the column default:
-- the bytes of two random UUIDs (gen_random_uuid draws from the strong random source; 244 of
-- the 256 bits vary). Rotation (`POST /v1/functions/{name}/callback-key`) writes a key made in
-- Rust from 32 random bytes.
ALTER TABLE functions ADD COLUMN callback_key text NOT NULL DEFAULT (
    'whsec_' || encode(decode(replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', ''), 'hex'), 'base64')
);

-- Callbacks that waited for a free delivery slot are found without scanning every invocation.
-- Rows without a callback never change `callback_status`, so their updates stay heap-only.
CREATE INDEX invocations_callback_pending ON invocations (id) WHERE callback_status = 'pending';

-- The installation-wide key callbacks used to be signed with signs nothing now.
DELETE FROM installation WHERE key = 'callback_signing_key';
