-- Issue 31, the console: how each run got its container (`mode`: cold, warm or hot; a warm or
-- hot run that started its container is also `cold`), so a hot run is labelled hot; and a dead
-- invocation an operator discarded (`discarded_at`): it leaves the dead letters for good
-- (`dead_at` is cleared, so the partial index of dead ones keeps only live ones).
ALTER TABLE invocations ADD COLUMN mode text;
ALTER TABLE invocations ADD COLUMN discarded_at timestamptz;
-- A function registered or changed with `?defer_check=true` while no worker could check its
-- image: since when it is unchecked. The dashboard shows it `pending` until a run of it, queued
-- since then, left the queue (a worker took it, with its image or the engine's reason); a later
-- registration check that passes clears it.
ALTER TABLE functions ADD COLUMN unchecked_since timestamptz;
