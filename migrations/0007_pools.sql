-- Warm functions: how each runs (`cold`: a container per invocation; `warm`: exec in a kept
-- container) and the pool the worker keeps for it.
ALTER TABLE functions ADD COLUMN mode text NOT NULL DEFAULT 'cold';
ALTER TABLE functions ADD COLUMN min_warm integer NOT NULL DEFAULT 0;
ALTER TABLE functions ADD COLUMN max_containers integer;
ALTER TABLE functions ADD COLUMN idle_timeout_ms bigint NOT NULL DEFAULT 60000;
