//! The outbox sweep: re-publishes invocations that were recorded but whose message the broker
//! never confirmed (the ingress crashed in between), so an accepted event is never lost.
//!
//! Every few seconds each ingress takes, under `FOR UPDATE SKIP LOCKED`, the `queued` rows older
//! than the grace period with no confirm, and publishes them again. A sync invocation is not
//! re-published (its caller is gone): it ends `failed`. Duplicates this may cause are harmless:
//! a worker runs an invocation only from `queued`. A re-publish keeps the trace the invocation
//! was accepted in (its `traceparent`/`tracestate`, stored with the record): span `republish`.

use std::collections::HashMap;
use std::time::Duration;

use crate::function::{Function, store as functions};
use crate::invocation::{Trigger, store};
use crate::message::Work;
use crate::producer::ingress::Ingress;
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// How often the sweep looks.
pub(crate) const SWEEP_EVERY: Duration = Duration::from_secs(5);
const BATCH: i64 = 200;

/// Sweeps until told to stop (a sweep under way is finished first).
pub(crate) async fn run(app: Ingress, mut shutdown: crate::shutdown::Shutdown) {
    let grace = Duration::from_millis(app.settings.outbox_grace_ms);
    let every = SWEEP_EVERY.min(grace.max(Duration::from_millis(200)));
    loop {
        if shutdown.stopped_during(every).await {
            return;
        }
        match sweep(&app, grace).await {
            Ok(0) => {}
            Ok(n) => tracing::warn!(
                count = n,
                "re-published invocations the broker never confirmed"
            ),
            Err(e) => tracing::warn!(error = format!("{e:#}"), "outbox sweep failed"),
        }
    }
}

/// One pass; returns how many invocations it re-published.
#[tracing::instrument(skip_all)]
pub(crate) async fn sweep(app: &Ingress, grace: Duration) -> anyhow::Result<usize> {
    let mut tx = app.pool.begin().await?;
    let rows = store::unpublished(&mut tx, grace, BATCH).await?;
    let mut functions_by_name: HashMap<String, Option<Function>> = HashMap::new();
    let mut published = Vec::new();
    for row in rows {
        let trigger = row.trigger;
        if trigger == Trigger::Sync {
            store::abandon(
                &mut tx,
                row.id,
                "the ingress stopped before the broker confirmed this sync call; it was not run",
            )
            .await?;
            continue;
        }
        if !functions_by_name.contains_key(&row.function) {
            let f = functions::get(&app.pool, &row.function).await?;
            functions_by_name.insert(row.function.clone(), f);
        }
        let Some(function) = &functions_by_name[&row.function] else {
            store::abandon(
                &mut tx,
                row.id,
                "the function was deleted before the invocation ran",
            )
            .await?;
            continue;
        };
        let env = row.extra_env.map(|env| env.0).unwrap_or_default();
        let work = Work::queued(row.id, trigger, function, &env);
        // In the trace it was accepted in: the message carries that context on.
        let span = tracing::info_span!("republish", id = %row.id);
        let _ = span.set_parent(crate::telemetry::context_from(|k| match k {
            "traceparent" => row.traceparent.as_deref(),
            _ => row.tracestate.as_deref(),
        }));
        app.publisher
            .publish(&function.queue, &work, &row.input)
            .instrument(span)
            .await?;
        published.push(row.id);
    }
    for id in &published {
        store::mark_published(&mut *tx, *id).await?;
    }
    tx.commit().await?;
    Ok(published.len())
}

/// Publishes an invocation recorded by a committed transaction (a schedule's tick, an AMQP
/// event's fan-out) and notes the confirm. If the broker does not confirm, the row stays
/// unpublished and [`sweep`] publishes it after the grace period: the record is the promise.
pub(crate) async fn publish_now(
    app: &Ingress,
    function: &Function,
    id: uuid::Uuid,
    trigger: Trigger,
    input: &[u8],
    env: &std::collections::BTreeMap<String, String>,
) -> bool {
    let work = Work::queued(id, trigger, function, env);
    match app.publisher.publish(&function.queue, &work, input).await {
        Ok(()) => {
            if let Err(e) = store::mark_published(&app.pool, id).await {
                tracing::warn!(%id, error = %e, "could not note the confirm; the outbox may publish it again");
            }
            app.metrics.inc(
                "granda_invocations_accepted_total",
                format!("trigger=\"{}\"", trigger.as_str()),
            );
            true
        }
        Err(e) => {
            tracing::warn!(%id, error = %e, "publish not confirmed; the outbox sweep will publish it");
            false
        }
    }
}
