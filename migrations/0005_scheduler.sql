-- The most invocations of one function a worker runs at once (NULL: no limit of its own).
ALTER TABLE functions ADD COLUMN max_concurrency integer;
