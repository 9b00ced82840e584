-- Sync calls are published before any record is written; the worker that claims one writes it.
-- A sync call whose publish the broker did not confirm was refused (503) but may still have
-- reached the queue: its id is kept here so no worker records or runs it.
CREATE TABLE refused_invocations (
    id         uuid PRIMARY KEY,
    refused_at timestamptz NOT NULL DEFAULT now()
);
