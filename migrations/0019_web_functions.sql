-- Functions as web endpoints (issue 18): what a function's output is to the caller of its URL,
-- and, for invocations through that URL, the request's method and path and the status answered.
ALTER TABLE functions ADD COLUMN response text NOT NULL DEFAULT 'body';
ALTER TABLE invocations ADD COLUMN http_method text;
ALTER TABLE invocations ADD COLUMN http_path text;
ALTER TABLE invocations ADD COLUMN http_status integer;
ALTER TABLE functions ADD COLUMN cors jsonb;
