-- What each build was made from: the SHA-256 of its runtime and build context (the Dockerfile with
-- its base image, and the source's files), so a redeploy of the same source builds nothing.
ALTER TABLE builds ADD COLUMN source_digest text;
