-- Issue 28 (cancel): `POST /v1/invocations/{id}/cancel` ends a queued or running invocation as
-- `cancelled`, a final status like the others, and notes who asked (`cancelled_by`: the key's name
-- and id, `admin` with auth off, or the dashboard session's key). Its time is `finished_at`.
ALTER TABLE invocations ADD COLUMN cancelled_by text;
ALTER TABLE invocations DROP CONSTRAINT invocations_status_check;
-- NOT VALID, then VALIDATE: the scan of existing rows does not block writes (every row passed
-- the narrower check already).
ALTER TABLE invocations ADD CONSTRAINT invocations_status_check
    CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'timed_out', 'dead', 'cancelled')) NOT VALID;
ALTER TABLE invocations VALIDATE CONSTRAINT invocations_status_check;
