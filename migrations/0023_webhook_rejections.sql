-- Deliveries a webhook refused (a missing, malformed or wrong signature, a stale timestamp, a
-- malformed delivery id or event type): the newest few per webhook, so an operator can see why a
-- sender's deliveries don't run (GET /v1/webhooks/{id}/rejections, /ui/webhooks/{id}).
CREATE TABLE webhook_rejections (
    id bigserial PRIMARY KEY,
    webhook_id uuid NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
    at timestamptz NOT NULL DEFAULT now(),
    reason text NOT NULL,
    detail text NOT NULL
);
CREATE INDEX webhook_rejections_by_hook ON webhook_rejections (webhook_id, id DESC);
