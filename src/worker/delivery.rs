//! Handling one delivery: refusing (dead-lettering with the reason) a message its installation
//! did not sign or whose function a registration would refuse, never panicking out, claiming the
//! record, running it, and acting on the retry verdict (record, reply, ack; park; or dead-letter).
//! Two waits come first: fair sharing (a function running here already does not take the last
//! free slot) and, after the claim, the namespace's `max_concurrency` across
//! all workers; either parks the message in a delay queue ([`super::share`]).

use super::recorder::{claim, record_final};
use super::share::{FunctionShare, defer, namespace_admits};
use super::*;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use futures_util::FutureExt;
use lapin::message::Delivery;
use tokio::sync::{Semaphore, watch};
use uuid::Uuid;

use crate::broker::{self};
use crate::invocation::{self, Claim, Status, Trigger};
use crate::message::{Reply, Work};
use crate::metrics::label;
use crate::retry::{self, Failure, Verdict};
use crate::scheduler::Lane;

/// Whether this message comes back from a delay queue (it carries an `x-death` header).
pub(super) fn was_parked(delivery: &Delivery) -> bool {
    delivery
        .properties
        .headers()
        .as_ref()
        .is_some_and(|h| h.inner().contains_key("x-death"))
}

/// How many times the broker delivered this message before (`x-delivery-count`).
pub(super) fn delivery_count(delivery: &Delivery) -> i64 {
    use lapin::types::AMQPValue;
    let Some(headers) = delivery.properties.headers() else {
        return 0;
    };
    match headers.inner().get("x-delivery-count") {
        Some(AMQPValue::LongLongInt(n)) => *n,
        Some(AMQPValue::LongInt(n)) => i64::from(*n),
        Some(AMQPValue::ShortInt(n)) => i64::from(*n),
        Some(AMQPValue::LongUInt(n)) => i64::from(*n),
        Some(AMQPValue::ShortShortInt(n)) => i64::from(*n),
        _ => 0,
    }
}

/// Before running a message that another worker was running: if that worker's lease ran out and
/// its engine is reachable from here (the same engine ID at its address), stops its container of
/// `id`, so the dead worker's run does not go on beside this one. Where it is not reachable, the
/// dead host's container may run on: at least once.
pub(super) async fn stop_dead_run(shared: &Shared, dead: &heartbeat::DeadWorker, id: Uuid) {
    let Some(address) = dead.engine.as_deref() else {
        return;
    };
    let Some(docker) = takeover::reach(shared, address, dead.engine_id.as_deref()).await else {
        tracing::warn!(worker = %dead.worker, engine = address, "the dead worker's engine is not reachable from here; its container may run on");
        return;
    };
    let stopped = reaper::remove_invocation(&docker, &id.to_string()).await;
    if stopped > 0 {
        tracing::info!(worker = %dead.worker, engine = address, stopped, "stopped a dead worker's container before running its invocation again");
    }
}

/// Settles ([`super::dead_run::settle`]) invocation `work`, `running` on dead worker `dead`, from
/// its containers on the dead worker's engine, when that engine can be reached from here.
pub(super) async fn settle_dead_run(shared: &Shared, dead: &heartbeat::DeadWorker, work: &Work) {
    let Some(address) = dead.engine.as_deref() else {
        return;
    };
    let Some(docker) = takeover::reach(shared, address, dead.engine_id.as_deref()).await else {
        return;
    };
    let settled = super::dead_run::settle(
        shared,
        &docker,
        &dead.worker,
        work.id,
        Some((&work.function.run, work.request.as_ref())),
    )
    .await;
    if let Err(e) = settled {
        tracing::warn!(worker = %dead.worker, engine = address, error = %e, "can't settle a dead worker's run from its engine; running it again");
    }
}

/// How long a message of an invocation running on another live worker is parked: until just after
/// that worker's lease runs out, when that comes before [`ELSEWHERE_DELAY`], so that a dead
/// worker's run is taken over as soon as its lease allows (and not up to a whole delay later).
pub(super) async fn elsewhere_delay(shared: &Shared, id: Uuid) -> Duration {
    match heartbeat::lease_left(&shared.pool, id, &shared.worker_id).await {
        Ok(Some(left)) => park_delay(left),
        _ => ELSEWHERE_DELAY,
    }
}

/// The park for a run on a worker whose lease runs out in `left`: a little after that, within
/// [`ELSEWHERE_DELAY`].
pub(super) fn park_delay(left: Duration) -> Duration {
    const MARGIN: Duration = Duration::from_millis(100);
    (left + MARGIN).min(ELSEWHERE_DELAY)
}

/// Counts a message as handled here until dropped.
pub(super) struct Busy<'a>(&'a AtomicUsize);

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// This worker's hold on an invocation, from before its claim to the end of its run: one delivery
/// of an id at a time goes past [`Here::take`] on a worker. Another copy of the same message (a
/// publish repeated after a lost confirm, a redelivery racing its first delivery) waits for the
/// hold to go, then claims and finds the run final. Taken before the claim, because a claim
/// accepts a run on this same worker (its earlier self), so two copies claiming side by side
/// would both run.
pub(super) struct Here<'a> {
    shared: &'a Shared,
    id: Uuid,
    // Dropped after the entry is removed: wakes every copy waiting on this one.
    _done: watch::Sender<()>,
}

impl<'a> Here<'a> {
    pub(super) async fn take(shared: &'a Shared, id: Uuid) -> Here<'a> {
        loop {
            let mut held = {
                let mut in_flight = shared.in_flight.lock().expect("lock");
                match in_flight.get(&id) {
                    Some(held) => held.clone(),
                    None => {
                        let (done, watching) = watch::channel(());
                        in_flight.insert(id, watching);
                        return Here {
                            shared,
                            id,
                            _done: done,
                        };
                    }
                }
            };
            // Nothing is ever sent: this ends when the holder's sender drops, after its entry
            // is gone.
            let _ = held.changed().await;
        }
    }
}

impl Drop for Here<'_> {
    fn drop(&mut self) {
        self.shared.in_flight.lock().expect("lock").remove(&self.id);
    }
}

/// Sync calls (a caller waits on the reply) get slots before async work.
pub(super) fn lane(delivery: &Delivery) -> Lane {
    if delivery.properties.reply_to().is_some() {
        Lane::Sync
    } else {
        Lane::Async
    }
}

/// Handles one delivery from claim to ack, once the scheduler gives it a slot: in a span of
/// the trace the message carries ([`crate::message::trace_context`]).
pub(super) async fn handle(
    shared: Arc<Shared>,
    channels: Channels,
    queue: String,
    delivery: Delivery,
) {
    let parent = crate::message::trace_context(&delivery.properties);
    let span = tracing::info_span!(
        "invocation",
        otel.kind = "consumer",
        id = tracing::field::Empty,
        queue = %queue,
        function = tracing::field::Empty,
        attempt = tracing::field::Empty,
    );
    let _ = span.set_parent(parent.clone());
    handle_in_span(shared, channels, queue, delivery, parent)
        .instrument(span)
        .await
}

async fn handle_in_span(
    shared: Arc<Shared>,
    channels: Channels,
    queue: String,
    delivery: Delivery,
    parent: opentelemetry::Context,
) {
    let _busy = Busy(&shared.busy);
    // Fair sharing, before a slot is taken (so the messages of a burst go round at once, not
    // one by one through the last slot); checked again, counted, once the slot is had.
    if let Ok(unchecked) = Work::decode_unchecked(&delivery.properties)
        && FunctionShare::would_wait(&shared, &unchecked.function, 1)
    {
        Box::pin(defer(
            &shared,
            &channels,
            &queue,
            &delivery,
            &unchecked.function.name,
        ))
        .await;
        return;
    }
    let Some(_slot) = shared.limiter.acquire(lane(&delivery)).await else {
        return;
    };
    // Before anything is run or recorded: the signature, the secrets, the function's limits.
    let work = match Work::decode(
        &delivery.properties,
        &delivery.data,
        &shared.keys,
        shared.max_timeout_ms,
    ) {
        Ok(work) => work,
        Err(e) => {
            tracing::error!(error = %e, message_id = ?delivery.properties.message_id(), "dead-lettering a refused message");
            Box::pin(refuse(&shared, &channels, &delivery, &e.0)).await;
            return;
        }
    };
    tracing::Span::current().record("id", tracing::field::display(work.id));
    tracing::Span::current().record("function", work.function.name.as_str());

    // The engine does not answer: hot calls to a process running here go on; the rest wait,
    // parked (no delivery counted), and come back to whichever worker is healthy then.
    if shared.engine_away_for(&work) {
        tracing::info!("the engine does not answer; parking a run that needs it");
        let (level, delay) = (ELSEWHERE_DELAY, super::ENGINE_AWAY_DELAY);
        Box::pin(park_for(
            &shared, &channels, &queue, &delivery, level, delay,
        ))
        .await;
        return;
    }

    if let Err(why) = shared.runnable_here(&queue, &work).await {
        let count = delivery_count(&delivery);
        match retry::on_unavailable(count, broker::DELIVERY_LIMIT) {
            retry::Unavailable::Release => {
                tracing::info!(reason = %why, deliveries = count, "can't run it here; giving it back for another worker");
                tokio::time::sleep(RELEASE_PAUSE).await;
                reject(&delivery, true).await;
                return;
            }
            retry::Unavailable::Attempt => {
                tracing::warn!(reason = %why, deliveries = count, "can't run it here, and it is its last delivery: running it to record the failure");
            }
        }
    }

    // A copy of a message handled here already: wait for it, then answer from its record.
    let _here = Here::take(&shared, work.id).await;

    // Fair sharing: a function that runs here already never takes the worker's last free slot.
    let Some(_share) = FunctionShare::take(&shared, &work.function) else {
        Box::pin(defer(
            &shared,
            &channels,
            &queue,
            &delivery,
            &work.function.name,
        ))
        .await;
        return;
    };

    // A redelivery may be a dead worker's run: note whose, to stop its container once claimed. So
    // may a message back from a delay queue: one parked while the dead worker's lease still ran.
    let again = delivery.redelivered || delivery_count(&delivery) > 0 || was_parked(&delivery);
    let dead = if again {
        heartbeat::dead_run(&shared.pool, work.id, &shared.worker_id)
            .await
            .ok()
            .flatten()
    } else {
        None
    };
    // Before the claim: a dead worker's run that ended is recorded from its container (the
    // claim then finds it final), one still going is stopped ([`super::dead_run`]).
    if let Some(dead) = &dead {
        Box::pin(settle_dead_run(&shared, dead, &work)).await;
    }
    // A retry a dead worker's collected run earned waits its backoff, as any retry does.
    if again && let Some((level, delay)) = super::dead_run::backoff_left(&shared, work.id).await {
        tracing::info!(
            delay_ms = delay.as_millis() as u64,
            "queued for a retry later; waiting its backoff"
        );
        Box::pin(park_for(
            &shared, &channels, &queue, &delivery, level, delay,
        ))
        .await;
        return;
    }
    let dead_worker = dead.as_ref().map(|d| d.worker.as_str());
    let claim = with_db_retries(|| claim(&shared, &work, &delivery.data, dead_worker))
        .instrument(tracing::info_span!("claim"))
        .await;
    match claim {
        Claim::Claimed { attempt, queued_at } => {
            // Over its namespace's `max_concurrency` across all workers: the claim is given
            // back and the message waits queued, parked for a moment.
            if !namespace_admits(&shared, &work).await {
                Box::pin(park_for(
                    &shared,
                    &channels,
                    &queue,
                    &delivery,
                    ELSEWHERE_DELAY,
                    super::NAMESPACE_FULL_DELAY,
                ))
                .await;
                return;
            }
            tracing::Span::current().record("attempt", attempt);
            // Its wait in the queue, from acceptance to this claim, for the first attempt (a
            // retry's wait is its backoff, in the record).
            if attempt == 1 {
                crate::telemetry::record_span(
                    &parent,
                    "queue",
                    queued_at.into(),
                    std::time::SystemTime::now(),
                    vec![opentelemetry::KeyValue::new("queue", queue.clone())],
                );
            }
            // Open to a cancel ([`super::cancel`]) until the run is over.
            let cancel = shared.cancels.watch(work.id);
            faults::panic_here(faults::armed(shared.test_faults, &work, faults::IN_HANDLE));
            if let Some(dead) = &dead {
                Box::pin(stop_dead_run(&shared, dead, work.id)).await;
            }
            // A run lost with its worker: a row of its own (never on the happy path).
            let redelivered = delivery.redelivered || delivery_count(&delivery) > 0;
            let lost_on = dead.as_ref().map(|d| d.worker.as_str());
            let lost_on = lost_on.or(redelivered.then_some(shared.worker_id.as_str()));
            invocation::attempts::note_lost_if(&shared.pool, work.id, attempt, lost_on).await;
            let function = format!("function=\"{}\"", label(&work.function.name));
            if attempt == 1 {
                let waited = (chrono::Utc::now() - queued_at).num_milliseconds().max(0);
                shared.metrics.observe(
                    "granda_invocation_queue_wait_seconds",
                    function.clone(),
                    waited as f64 / 1000.0,
                );
            }
            // A function with its own bound waits for one of its slots (per worker).
            let _function_slot = match work.function.run.max_concurrency {
                Some(max) => {
                    let slots = shared
                        .function_slots
                        .lock()
                        .expect("lock")
                        .entry((work.function.name.clone(), max))
                        .or_insert_with(|| Arc::new(Semaphore::new(max.max(1) as usize)))
                        .clone();
                    slots.acquire_owned().await.ok()
                }
                None => None,
            };
            let cancelled = cancel.cancelled.clone();
            run_claimed(
                &shared, &channels, &queue, &delivery, &work, attempt, cancelled,
            )
            .await;
            drop(cancel);
        }
        Claim::AlreadyFinal(record) => {
            tracing::info!("already final; acking without a run");
            // The first run may have died before its callback went out.
            crate::callback::deliver_later(shared.pool.clone(), shared.callbacks.clone(), work.id);
            reply(&channels, &work, &Reply::from_record(&record)).await;
            // A dead record's message goes to the dead letters, as when it was run here.
            if record.status() == Status::Dead {
                reject(&delivery, false).await;
            } else {
                ack(&delivery).await;
            }
        }
        Claim::RunningElsewhere => {
            let delay = elsewhere_delay(&shared, work.id).await;
            tracing::info!(
                delay_ms = delay.as_millis() as u64,
                "running on another live worker; looking again later"
            );
            Box::pin(park_for(
                &shared,
                &channels,
                &queue,
                &delivery,
                ELSEWHERE_DELAY,
                delay,
            ))
            .await;
        }
        Claim::Missing => {
            tracing::error!("no record for this invocation; dead-lettering it");
            reject(&delivery, false).await;
        }
    }
}

/// Header of a message the worker refused to run: why.
pub(super) const REFUSED_HEADER: &str = "x-granda-refused";

/// Dead-letters a message that must not run (malformed, unsigned, or with a function a
/// registration would refuse): republished to the dead-letter queue with the reason in
/// [`REFUSED_HEADER`], then acked; if the broker does not take it, rejected (to the same queue,
/// through the work queue's dead-letter exchange, without the reason). Nothing is recorded.
pub(super) async fn refuse(
    shared: &Shared,
    channels: &Channels,
    delivery: &Delivery,
    reason: &str,
) {
    use lapin::types::{AMQPValue, LongString};
    let mut headers = delivery.properties.headers().clone().unwrap_or_default();
    headers.insert(
        REFUSED_HEADER.into(),
        AMQPValue::LongString(LongString::from(reason.as_bytes().to_vec())),
    );
    let properties = delivery.properties.clone().with_headers(headers);
    let sent = broker::publish_confirmed(
        &channels.publish,
        &shared.topology.dead_letter_queue(),
        &delivery.data,
        properties,
        channels.publish_timeout,
    )
    .await;
    match sent {
        Ok(()) => ack(delivery).await,
        Err(e) => {
            tracing::warn!(error = %e, "could not dead-letter with the reason; rejecting");
            reject(delivery, false).await;
        }
    }
}

/// Runs a claimed invocation and settles its message by the retry verdict.
pub(super) async fn run_claimed(
    shared: &Shared,
    channels: &Channels,
    queue: &str,
    delivery: &Delivery,
    work: &Work,
    attempt: i32,
    mut cancelled: watch::Receiver<bool>,
) {
    let started = Instant::now();
    // Whatever the run does, the invocation is settled: a panic is the platform's failure (its
    // container and pool slot are released by their guards as it unwinds).
    let run_span = tracing::info_span!(
        "run",
        mode = ?work.function.run.mode,
        cold = tracing::field::Empty,
        status = tracing::field::Empty,
        exit_code = tracing::field::Empty,
    );
    let executing = AssertUnwindSafe(execute(shared, work, attempt, &delivery.data))
        .catch_unwind()
        .instrument(run_span.clone());
    // Unless, or until, the invocation is cancelled: the run is dropped unfinished then (its
    // guards kill and remove what it started); one cancelled before it starts never starts.
    // Raced here, not in a helper taking the run: that would store the large future twice.
    let executed = tokio::select! {
        biased;
        _ = cancelled.wait_for(|c| *c) => None,
        done = executing => Some(done),
    };
    let Some(executed) = executed else {
        return Box::pin(super::cancel::settle(shared, channels, delivery, work)).await;
    };
    let (mut outcome, failure, removal) = executed.unwrap_or_else(|panic| {
        let message = panic_message(&*panic);
        tracing::error!(panic = %message, "the run panicked; a platform failure");
        (
            failed(
                format!("the worker failed while running this invocation: {message}"),
                false,
            ),
            Some(Failure::Platform),
            None,
        )
    });
    // Postgres text can't hold NUL: an error naming what a caller sent must stay recordable.
    if let Some(error) = outcome.error.as_mut()
        && error.contains('\0')
    {
        *error = error.replace('\0', "\u{FFFD}");
    }
    run_span.record("cold", outcome.cold);
    run_span.record("status", outcome.status().as_str());
    if let Some(code) = outcome.exit_code {
        run_span.record("exit_code", code);
    }
    drop(run_span);
    if let Some(request) = &work.request {
        outcome.http_method = Some(request.method.clone());
        outcome.http_path = Some(request.path.clone());
    }
    let platform = failure == Some(Failure::Platform);
    if platform {
        // The image may have gone from the engine since it was seen there.
        shared.images.forget(&work.function.run.image);
    }
    shared.ran(queue, platform);
    let class = format!(
        "{}{}",
        work.function.name,
        if outcome.cold { "#cold" } else { "" }
    );
    shared
        .controller
        .lock()
        .expect("lock")
        .record_run(&class, started.elapsed());
    let function = format!("function=\"{}\"", label(&work.function.name));
    shared.metrics.function_seen(&work.function.name);
    if outcome.cold {
        shared
            .metrics
            .inc("granda_cold_starts_total", function.clone());
    }
    if let Some(ms) = outcome.duration_ms {
        shared.metrics.observe(
            "granda_invocation_duration_seconds",
            function.clone(),
            ms as f64 / 1000.0,
        );
    }
    let verdict = retry::decide(
        work.trigger,
        work.function.run.max_attempts,
        &work.function.run.retry_on,
        attempt,
        failure,
        &shared.backoff,
    );
    match verdict {
        Verdict::Final | Verdict::Dead => {
            if verdict == Verdict::Dead {
                outcome.status = Some(Status::Dead);
                tracing::warn!(attempt, "retries spent; dead-lettering");
            }
            outcome.unstored = outcome.status() == Status::Succeeded
                && work.function.run.store_output == crate::function::StoreOutput::OnFailure;
            let outcome = Arc::new(outcome);
            with_db_retries(|| record_final(shared, work, attempt, &delivery.data, &outcome))
                .instrument(tracing::info_span!("record"))
                .await;
            // Sync calls have no callbacks: their caller has the answer.
            if work.trigger != Trigger::Sync {
                crate::callback::deliver_later(
                    shared.pool.clone(),
                    shared.callbacks.clone(),
                    work.id,
                );
            }
            shared.metrics.inc(
                "granda_invocations_total",
                format!("{function},status=\"{}\"", outcome.status().as_str()),
            );
            // Both at once: the connection's I/O thread sends them in one write.
            let answer = Reply::from_outcome(&outcome);
            let settle = async {
                if verdict == Verdict::Dead {
                    reject(delivery, false).await;
                } else {
                    ack(delivery).await;
                }
            };
            tokio::join!(
                reply(channels, work, &answer).instrument(tracing::info_span!("reply")),
                settle
            );
        }
        Verdict::RetryAfter(level) => {
            let delay = retry::jittered(level, (Uuid::new_v4().as_u128() & 0xffff) as u16);
            let retry_at = chrono::Utc::now() + delay;
            tracing::info!(
                attempt,
                ?delay,
                error = outcome.error.as_deref().unwrap_or(""),
                "retrying later"
            );
            shared.metrics.inc(
                "granda_invocation_retries_total",
                format!("{function},reason=\"{}\"", retry_reason(failure)),
            );
            with_db_retries(|| {
                invocation::store::requeue(
                    &shared.pool,
                    work.id,
                    &shared.worker_id,
                    &outcome,
                    retry_at,
                )
            })
            .await;
            Box::pin(park_for(shared, channels, queue, delivery, level, delay)).await;
        }
    }
    // Answered and settled; the slot is held until the container is gone, so a worker never has
    // more containers on the engine than it has slots (removals would otherwise pile up beside
    // new starts and slow them).
    if let Some(removal) = removal {
        let _ = removal.await;
    }
}

/// The `reason` label of a retry: the failure class that was retried.
fn retry_reason(failure: Option<Failure>) -> &'static str {
    match failure {
        Some(Failure::Platform) => "platform",
        Some(Failure::Timeout) => "timeout",
        _ => "error",
    }
}

/// Retries a database call until it succeeds: a worker never acks what it could not record, and
/// holds the message while Postgres is away (the broker gives it to another worker if this one dies).
pub(super) async fn with_db_retries<T, F, Fut>(mut call: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, sqlx::Error>>,
{
    let mut backoff = Duration::from_millis(100);
    loop {
        match call().await {
            Ok(v) => return v,
            Err(e) => {
                tracing::warn!(error = %e, "database call failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_elsewhere_is_looked_at_again_just_after_its_workers_lease_runs_out() {
        assert_eq!(park_delay(Duration::ZERO), Duration::from_millis(100));
        assert_eq!(
            park_delay(Duration::from_millis(700)),
            Duration::from_millis(800)
        );
        // A live worker's run: looked at again after the usual delay, not at the end of its lease.
        assert_eq!(park_delay(Duration::from_secs(5)), ELSEWHERE_DELAY);
    }
}
