-- Issue 29: invocation bodies, logs and held payloads are compressed with lz4 rather than pglz
-- where Postgres compresses them (values past ~2 KiB): about as small for text and JSON, and
-- several times cheaper in CPU to write and read. Values already stored keep their pglz form.
-- A server without lz4 (built without it, or older than 14) keeps pglz: a notice, no failure.
DO $$
BEGIN
    EXECUTE 'ALTER TABLE invocations
        ALTER COLUMN input SET COMPRESSION lz4,
        ALTER COLUMN output SET COMPRESSION lz4,
        ALTER COLUMN logs SET COMPRESSION lz4,
        ALTER COLUMN payload SET COMPRESSION lz4';
EXCEPTION WHEN others THEN
    RAISE NOTICE 'lz4 column compression is not available (%): invocations keep pglz', SQLERRM;
END
$$;
