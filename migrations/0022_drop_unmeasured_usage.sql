-- cpu_ms and max_memory_bytes were never measured (always null): a cold container's cgroup is gone
-- by the time its exit is seen (cgroup v1, cgroupfs driver), so nothing reliable fills them.
-- The records no longer carry them.
ALTER TABLE invocations DROP COLUMN IF EXISTS cpu_ms, DROP COLUMN IF EXISTS max_memory_bytes;
