-- Many hosts: each worker's engine, health and lease in its heartbeat row.
-- `engine` is the worker's DOCKER_HOST and `engine_id` the engine's own ID (docker info), so a
-- worker taking over a dead worker's run can stop its container when it reaches that engine.
-- `lease_until` is when the worker stops counting as alive (GRANDA_WORKER_LEASE_MS after its
-- last beat): the one window every "is that worker alive" question uses.
ALTER TABLE workers
    ADD COLUMN engine text,
    ADD COLUMN engine_id text,
    ADD COLUMN healthy boolean NOT NULL DEFAULT true,
    ADD COLUMN health text,
    ADD COLUMN lease_until timestamptz;
