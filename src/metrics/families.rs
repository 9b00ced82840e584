//! The catalogue of every metric family Granda records, with its type and help text: what
//! `render` writes as `# HELP` and `# TYPE`, and what the tests check every name in the sources
//! against.

/// Every family Granda records: name, type, help. `render` writes the help of each.
pub(crate) const FAMILIES: &[(&str, &str, &str)] = &[
    ("granda_up", "gauge", "1 while this process is up."),
    (
        "granda_http_requests_total",
        "counter",
        "HTTP requests the ingress answered, by route template, method and status.",
    ),
    (
        "granda_http_request_duration_seconds",
        "histogram",
        "Time from an HTTP request to its response's head, by route template and method.",
    ),
    (
        "granda_builds_total",
        "counter",
        "Image builds from source that finished, by runtime and outcome (succeeded, failed).",
    ),
    (
        "granda_build_duration_seconds",
        "histogram",
        "Time an image build from source took, by runtime.",
    ),
    (
        "granda_callback_deliveries_total",
        "counter",
        "Result callbacks that reached a final state, by outcome (delivered, failed).",
    ),
    (
        "granda_callback_retries_total",
        "counter",
        "Callback attempts that failed and were tried again.",
    ),
    (
        "granda_invocations_total",
        "counter",
        "Invocations that reached a final status, by function and status.",
    ),
    (
        "granda_invocations_accepted_total",
        "counter",
        "Invocations accepted and published, by trigger.",
    ),
    (
        "granda_invocation_retries_total",
        "counter",
        "Attempts that failed and were scheduled again, by function and reason (error, timeout, platform).",
    ),
    (
        "granda_invocation_duration_seconds",
        "histogram",
        "Compute time of a run: container start to exit.",
    ),
    (
        "granda_invocation_queue_wait_seconds",
        "histogram",
        "Time from acceptance to a worker picking the invocation up.",
    ),
    (
        "granda_cold_starts_total",
        "counter",
        "Runs that started a new container.",
    ),
    (
        "granda_image_pull_seconds",
        "histogram",
        "Time a worker spent pulling an image its engine lacked (part of a cold start).",
    ),
    (
        "granda_worker_in_flight",
        "gauge",
        "Invocations a worker handles now.",
    ),
    (
        "granda_worker_concurrency_target",
        "gauge",
        "How many invocations the scheduler lets a worker run at once.",
    ),
    (
        "granda_worker_broker_reconnects_total",
        "counter",
        "Times a worker lost RabbitMQ and connected again.",
    ),
    (
        "granda_queue_depth",
        "gauge",
        "Messages waiting in a work queue.",
    ),
    (
        "granda_events_published_total",
        "counter",
        "Events published over HTTP.",
    ),
    (
        "granda_event_invocations_total",
        "counter",
        "Invocations that published events fanned out to (divide by granda_events_published_total for the mean fan-out).",
    ),
    (
        "granda_inbound_messages_total",
        "counter",
        "Messages the inbound router took from the inbound exchange, by outcome (accepted, duplicate, dead).",
    ),
    (
        "granda_webhook_rejections_total",
        "counter",
        "Webhook deliveries refused, by scheme and reason.",
    ),
    (
        "granda_schedule_fired_total",
        "counter",
        "Schedule ticks fired.",
    ),
    (
        "granda_records_pruned_total",
        "counter",
        "Records the pruner removed past their retention, by table (a build's log emptied counts under build_logs).",
    ),
    (
        "granda_schedule_skipped_total",
        "counter",
        "Schedule ticks missed and not fired (catch-up none).",
    ),
    (
        "granda_schedule_lag_seconds",
        "histogram",
        "How late a schedule tick fired.",
    ),
    (
        "granda_http_connections",
        "gauge",
        "HTTP connections the ingress holds now.",
    ),
    (
        "granda_http_connections_closed_total",
        "counter",
        "HTTP connections the ingress closed by a bound, by reason (header timeout, idle, cap).",
    ),
    (
        "granda_unauthenticated_body_bytes_in_flight",
        "gauge",
        "Bytes of unauthenticated request bodies (webhooks, public functions) reserved now.",
    ),
    (
        "granda_unauthenticated_body_refusals_total",
        "counter",
        "Unauthenticated request bodies refused for the shared budget, by reason.",
    ),
    (
        "granda_worker_ready",
        "gauge",
        "1 while a worker takes work (its /readyz answers 200), else 0.",
    ),
    (
        "granda_worker_broker_quorum",
        "gauge",
        "1 while RabbitMQ confirms a worker's writes to a quorum queue (its probe), else 0.",
    ),
    (
        "granda_worker_breaker_open",
        "gauge",
        "1 while a worker's circuit breaker for the queue is open (others take its messages).",
    ),
    (
        "granda_worker_takeover_containers_stopped_total",
        "counter",
        "Containers of workers whose lease ran out that this worker stopped on their engine.",
    ),
    (
        "granda_worker_takeover_runs_collected_total",
        "counter",
        "Runs of workers whose lease ran out that had ended on their engine: recorded from the container, not run again.",
    ),
    (
        "granda_namespace_throttled_total",
        "counter",
        "Calls refused with 429 by a namespace's quota, by namespace and reason (rate: invocations_per_minute; stored: max_stored_bytes).",
    ),
    (
        "granda_fair_share_deferred_total",
        "counter",
        "Messages of a function that would have taken a worker's last free slot while it ran there already, sent round a delay queue so the calls behind them are delivered (fair sharing).",
    ),
    (
        "granda_namespace_held_total",
        "counter",
        "Claims a worker gave back because the namespace ran max_concurrency invocations already (the message waits queued).",
    ),
    (
        "granda_database_bytes",
        "gauge",
        "Size of Granda's Postgres database on disk (pg_database_size), sampled every GRANDA_SIZE_SAMPLE_MS.",
    ),
    (
        "granda_records_stored_bytes",
        "gauge",
        "Bytes of invocation records' inputs, outputs and logs, by namespace (what max_stored_bytes caps), sampled every GRANDA_SIZE_SAMPLE_MS.",
    ),
];
