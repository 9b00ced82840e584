-- Issue 28, "What is stored": a function's store_output, `always` (every record keeps its input,
-- output and logs, as before) or `on_failure` (a success keeps its record but not its input,
-- output and logs; they are NULLed at the final write).
ALTER TABLE functions ADD COLUMN store_output text NOT NULL DEFAULT 'always';
