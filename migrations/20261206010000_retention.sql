-- Retention (issue 28): how long an ended invocation is kept. A function's own `retention_s`
-- beats its namespace's, which beats the installation's (GRANDA_RETENTION_S); NULL: the next one
-- applies. The pruner (src/retention.rs) reads these columns only; no index is added on the
-- invocations table: it walks the existing (function, id) and (namespace, id) indexes, whose
-- UUIDv7 ids are the time of arrival, so claims and final records stay heap-only (HOT) updates.
ALTER TABLE functions ADD COLUMN retention_s bigint;
ALTER TABLE namespaces ADD COLUMN retention_s bigint;
ALTER TABLE functions ADD CONSTRAINT functions_retention_s_check CHECK (retention_s >= 1);
ALTER TABLE namespaces ADD CONSTRAINT namespaces_retention_s_check CHECK (retention_s >= 1);
