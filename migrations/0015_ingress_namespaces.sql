-- Idempotency keys are namespaced by their source: the ingress stores `<trigger>:<key>`
-- (`async:<caller's key>`, `webhook:<hook id>:<delivery id>`, `event:<event id>`), so a caller's
-- key can never equal a key Granda makes for a webhook delivery or an event. Webhook and event
-- keys were stored that way already; callers' keys of the last 24 h (older ones have expired)
-- move into their namespace, so a retry across the upgrade still finds its first invocation.
UPDATE invocations SET idempotency_key = 'async:' || idempotency_key
 WHERE trigger = 'async' AND idempotency_key IS NOT NULL
   AND queued_at > now() - interval '24 hours';

-- Subscriptions are matched by an in-memory index in each ingress, rebuilt when this version
-- moves: every change to `subscriptions` (a function's deletion cascades to it) bumps it in the
-- same transaction.
CREATE TABLE subscriptions_version (
    one     boolean PRIMARY KEY DEFAULT true CHECK (one),
    version bigint NOT NULL
);
INSERT INTO subscriptions_version (one, version) VALUES (true, 0);

CREATE FUNCTION bump_subscriptions_version() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE subscriptions_version SET version = version + 1;
    RETURN NULL;
END
$$;

CREATE TRIGGER subscriptions_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON subscriptions
    FOR EACH STATEMENT EXECUTE FUNCTION bump_subscriptions_version();
