-- An invocation's row is updated two or three times in its life (claimed, finished, perhaps
-- requeued). Postgres makes such an update heap-only (HOT: no index entry written, less WAL)
-- when no index key or index predicate mentions a column it changes and the page has room.
-- So no index mentions `status`: a function's invocations by status are read through
-- (function, id DESC) and filtered; dead ones carry `dead_at`, set only when one dies.
DROP INDEX invocations_function_status_id;
DROP INDEX invocations_dead;
DROP INDEX invocations_unpublished;

ALTER TABLE invocations ADD COLUMN dead_at timestamptz;
UPDATE invocations SET dead_at = COALESCE(finished_at, now()) WHERE status = 'dead';

CREATE INDEX invocations_dead ON invocations (id DESC) WHERE dead_at IS NOT NULL;
CREATE INDEX invocations_unpublished ON invocations (queued_at) WHERE published_at IS NULL;

-- Room in each page for the updated versions of the rows inserted there.
ALTER TABLE invocations SET (fillfactor = 80);
