//! The schedule ticker, run by every ingress. Every [`TICK_EVERY`] it lists the enabled schedules
//! whose cursor is due, and for each, in one transaction: locks it (`FOR UPDATE SKIP LOCKED`: a
//! schedule another server is firing is left to it), [`plan`]s the pass, claims each tick with a
//! unique `(schedule_id, fire_time)` row and records its `queued` invocation (trigger `schedule`,
//! env `GRANDA_SCHEDULE_ID` and `GRANDA_SCHEDULED_AT`), and moves the cursor. After the commit it
//! publishes the invocations; one the broker does not confirm is published by the outbox sweep,
//! which keeps its env. A tick is fired by exactly one server, and never while the schedule is
//! disabled (pausing takes the same row lock). Each tick starts a trace of its own (span
//! `schedule`, a root): its invocation's record keeps that context, and its message carries it.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use uuid::Uuid;

use super::{Schedule, plan, store};
use crate::function::Function;
use crate::invocation::{NewInvocation, Trigger, store as invocations};
use crate::producer::ingress::Ingress;
use crate::producer::outbox;
use tracing::Instrument as _;

/// How often each ingress looks for due schedules, on average. Each wait is drawn between half
/// and one and a half of it, so that servers take turns at the ticks (with a fixed period, the
/// one whose timer runs a little ahead of the others would take nearly every tick).
pub(crate) const TICK_EVERY: Duration = Duration::from_millis(200);
/// Schedules handled per pass at most.
const BATCH: i64 = 100;

/// One invocation a pass recorded, to publish after the commit.
struct Fired {
    function: Function,
    id: Uuid,
    input: Vec<u8>,
    env: BTreeMap<String, String>,
    /// The tick's own trace.
    span: tracing::Span,
}

/// Ticks until told to stop (a pass under way is finished first).
pub(crate) async fn run(app: Ingress, mut shutdown: crate::shutdown::Shutdown) {
    describe(&app);
    let mut passes: u64 = 0;
    loop {
        if shutdown.stopped_during(next_wait()).await {
            return;
        }
        if let Err(e) = pass(&app).await {
            tracing::warn!(error = format!("{e:#}"), "schedule pass failed");
        }
        passes += 1;
        if passes.is_multiple_of(3000)
            && let Err(e) = store::prune_fires(&app.pool).await
        {
            tracing::warn!(error = %e, "could not prune old schedule claims");
        }
    }
}

/// A wait drawn uniformly between half and one and a half [`TICK_EVERY`].
fn next_wait() -> Duration {
    let bytes = Uuid::new_v4();
    let r = u16::from_le_bytes([bytes.as_bytes()[0], bytes.as_bytes()[1]]);
    TICK_EVERY.mul_f64(0.5 + f64::from(r) / 65_536.0)
}

fn describe(app: &Ingress) {
    let m = &app.metrics;
    m.describe(
        "granda_schedule_fired_total",
        "Schedule ticks fired (claimed and recorded) by this ingress.",
    );
    m.describe(
        "granda_schedule_skipped_total",
        "Schedule ticks missed while every server was down and not fired (catch_up).",
    );
    m.describe(
        "granda_schedule_lag_seconds",
        "From a tick's fire time to its invocation being recorded.",
    );
}

/// One pass over the due schedules; returns how many ticks it fired.
pub(crate) async fn pass(app: &Ingress) -> anyhow::Result<usize> {
    let mut fired = 0;
    for id in store::due(&app.pool, BATCH).await? {
        match fire_one(app, id).await {
            Ok(n) => fired += n,
            Err(e) => {
                tracing::warn!(schedule = %id, error = format!("{e:#}"), "schedule tick failed")
            }
        }
    }
    Ok(fired)
}

/// Fires what is due of schedule `id`, if this ingress gets its lock.
async fn fire_one(app: &Ingress, id: Uuid) -> anyhow::Result<usize> {
    let mut tx = app.pool.begin().await?;
    let Some(schedule) = store::lock_due(&mut tx, id).await? else {
        return Ok(0);
    };
    let cron = match schedule.cron_tz() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(schedule = %id, error = %e, "a stored schedule does not parse; not fired");
            return Ok(0);
        }
    };
    let function = crate::function::store::get(&app.pool, &schedule.function).await?;
    let now = Utc::now();
    let plan = plan(&cron, schedule.next_fire_at, now, schedule.catch_up());
    let mut recorded = Vec::new();
    if let Some(function) = function {
        for at in &plan.fire {
            let invocation = Uuid::now_v7();
            if !store::claim(&mut tx, schedule.id, *at, invocation).await? {
                continue;
            }
            let env = env(&schedule, *at);
            let span = tracing::info_span!(
                parent: None,
                "schedule",
                schedule = %schedule.id,
                invocation = %invocation,
                scheduled_at = %at,
            );
            invocations::insert_queued_in(
                &mut tx,
                &NewInvocation {
                    id: invocation,
                    function: &function.name,
                    trigger: Trigger::Schedule,
                    input: &schedule.payload,
                    stored_input_cap: app.settings.max_stored_input_bytes,
                    idempotency_key: None,
                    key_id: None,
                },
                &env,
            )
            .instrument(span.clone())
            .await?;
            recorded.push((
                *at,
                Fired {
                    function: function.clone(),
                    id: invocation,
                    input: schedule.payload.clone(),
                    env,
                    span,
                },
            ));
        }
    }
    let next = plan
        .next
        .unwrap_or_else(|| now + chrono::Duration::days(366));
    let last = recorded.last().map(|(at, _)| *at);
    store::advance(&mut tx, schedule.id, next, last).await?;
    tx.commit().await?;

    let recorded_at = Utc::now();
    if plan.skipped > 0 {
        tracing::warn!(schedule = %id, skipped = plan.skipped, "schedule ticks missed while no server ran were skipped");
        app.metrics
            .add("granda_schedule_skipped_total", String::new(), plan.skipped);
    }
    let n = recorded.len();
    for (at, f) in recorded {
        let lag = (recorded_at - at).num_milliseconds().max(0) as f64 / 1000.0;
        app.metrics
            .observe("granda_schedule_lag_seconds", String::new(), lag);
        app.metrics
            .inc("granda_schedule_fired_total", String::new());
        outbox::publish_now(app, &f.function, f.id, Trigger::Schedule, &f.input, &f.env)
            .instrument(f.span)
            .await;
        tracing::debug!(schedule = %id, invocation = %f.id, scheduled_at = %at, "schedule fired");
    }
    Ok(n)
}

/// The per-invocation env of the tick `at` of `schedule`.
fn env(schedule: &Schedule, at: DateTime<Utc>) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    env.insert("GRANDA_SCHEDULE_ID".into(), schedule.id.to_string());
    env.insert(
        "GRANDA_SCHEDULED_AT".into(),
        at.to_rfc3339_opts(SecondsFormat::Secs, true),
    );
    // Checked when the schedule was written; one stored before that check is left out.
    if let Some(ct) = schedule
        .content_type
        .as_deref()
        .filter(|c| crate::message::invocation_env_problem("GRANDA_CONTENT_TYPE", c).is_none())
    {
        env.insert("GRANDA_CONTENT_TYPE".into(), ct.into());
    }
    env
}
