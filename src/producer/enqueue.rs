//! Turning an event into a queued invocation, for every trigger: store the `queued` record, then
//! publish it with publisher confirms, waiting at most `GRANDA_PUBLISH_TIMEOUT_MS`. An invocation
//! the broker did not confirm in time is either refused for good (the caller hears 503 and it
//! never runs: its record is removed, so a message that reached the queue anyway finds none) or,
//! when a worker claimed it first or the record could not be removed (it stays for the outbox),
//! answered as accepted. Never both, and never a wait past the timeout.
//!
//! Sync calls skip the first write: the confirmed message is the acceptance, and the worker that
//! claims it writes the record (before it runs anything; its final record is durable before the
//! reply and the ack, and is written whole if a Postgres crash lost the claim). If the reply does not come in
//! time, the ingress writes the `queued` record before answering 202, so its status URL works;
//! if the publish is not confirmed, the id is noted as refused, so a message that reached the
//! queue anyway is never run.

use std::collections::BTreeMap;
use std::time::Duration;

use uuid::Uuid;

use super::AppState;
use crate::broker::BrokerError;
use crate::error::ApiError;
use crate::function::Function;
use crate::invocation::{NewInvocation, Trigger, store};
use crate::message::{Reply, Work};

/// One invocation to queue.
#[derive(Clone, Debug)]
pub(crate) struct Job<'a> {
    pub(crate) trigger: Trigger,
    pub(crate) input: &'a [u8],
    /// The same key for the same function and trigger within 24 h returns the first invocation,
    /// unrun again. Stored as `<trigger>:<key>` (see [`namespaced_key`]), so a caller's key can
    /// never equal a webhook's or an event's.
    pub(crate) idempotency_key: Option<&'a str>,
    /// Sync: how long to wait for the reply.
    pub(crate) reply: Option<Duration>,
    /// Env of this invocation only (`GRANDA_WEBHOOK_*`, `GRANDA_EVENT_*`), added to the function's.
    pub(crate) env: BTreeMap<String, String>,
    /// Where to POST the result when final; else the function's `callback_url` (not for sync).
    pub(crate) callback_url: Option<&'a str>,
    /// The HTTP request of a call of the function's URL.
    pub(crate) request: Option<&'a crate::web::WebRequest>,
    /// The API key that made the call (`Acting::key_id`; a dashboard session's key), kept on the
    /// record. `None` for anonymous, webhook, schedule and event calls.
    pub(crate) key_id: Option<Uuid>,
}

impl<'a> Job<'a> {
    pub(crate) fn new(trigger: Trigger, input: &'a [u8]) -> Self {
        Job {
            trigger,
            input,
            idempotency_key: None,
            reply: None,
            env: BTreeMap::new(),
            callback_url: None,
            request: None,
            key_id: None,
        }
    }
}

/// What [`enqueue`] did.
#[derive(Debug)]
pub(crate) struct Queued {
    pub(crate) id: Uuid,
    /// `false`: an idempotency key matched an earlier invocation, and nothing was published.
    pub(crate) new: bool,
    /// Sync calls: the reply, if it came in time.
    pub(crate) reply: Option<Reply>,
}

/// The idempotency key as stored: `<trigger>:<key>`. Each source has its own namespace, so a
/// caller's `Idempotency-Key: webhook:<hook>:<delivery>` is stored as `async:webhook:…` and
/// can't squat the delivery's own key `webhook:<hook>:<delivery>`.
pub(crate) fn namespaced_key(trigger: Trigger, key: &str) -> String {
    format!("{}:{key}", trigger.as_str())
}

/// Refuses per-invocation env that could not travel safely as env and as hot-call headers.
/// The entry points check their own values first with clearer words; this is the last gate.
fn check_env(env: &BTreeMap<String, String>) -> Result<(), ApiError> {
    match env
        .iter()
        .find_map(|(k, v)| crate::message::invocation_env_problem(k, v))
    {
        Some(problem) => Err(ApiError::BadRequest(format!(
            "a per-invocation value can't be passed on: {problem}"
        ))),
        None => Ok(()),
    }
}

/// Stores a `queued` invocation of `function` and publishes it.
pub(crate) async fn enqueue(
    app: &AppState,
    function: &Function,
    job: Job<'_>,
) -> Result<Queued, ApiError> {
    check_env(&job.env)?;
    // Over its namespace's quotas: 429, nothing enqueued.
    super::quota::check(app, &function.name).await?;
    if let Some(wait) = job.reply {
        return call(app, function, job, wait).await;
    }
    let key = job.idempotency_key.map(|k| namespaced_key(job.trigger, k));
    let (id, new) = store::insert_queued(
        &app.pool,
        &NewInvocation {
            id: Uuid::now_v7(),
            function: &function.name,
            trigger: job.trigger,
            input: job.input,
            stored_input_cap: app.settings.max_stored_input_bytes,
            idempotency_key: key.as_deref(),
            key_id: job.key_id,
        },
        &job.env,
    )
    .await?;
    if !new {
        return Ok(Queued {
            id,
            new: false,
            reply: None,
        });
    }
    let callback = match job.trigger {
        Trigger::Sync => None,
        _ => job.callback_url.or(function.callback_url.as_deref()),
    };
    if let Some(url) = callback
        && let Err(e) = crate::callback::attach(&app.pool, id, url).await
    {
        store::discard(&app.pool, id).await.ok();
        return Err(e.into());
    }
    let work = work(id, function, &job);
    match app
        .publisher
        .publish(&function.queue, &work, job.input)
        .await
    {
        Ok(()) => {
            let pool = app.pool.clone();
            tokio::spawn(async move {
                if let Err(e) = store::mark_published(&pool, id).await {
                    tracing::warn!(%id, error = %e, "could not note the confirm; the outbox may publish it again");
                }
            });
            count_accepted(app, job.trigger);
            Ok(Queued {
                id,
                new: true,
                reply: None,
            })
        }
        Err(e) => match store::discard(&app.pool, id).await {
            // Not confirmed: refused for good (a late message finds no record); the caller hears 503.
            Ok(true) => Err(publish_error(e)),
            // A worker claimed it already, or the record could not be removed and stays
            // unconfirmed for the outbox to publish again: accepted either way.
            done => {
                if let Err(db) = done {
                    tracing::warn!(%id, error = %db, "could not refuse an unconfirmed invocation; the outbox publishes it again");
                }
                count_accepted(app, job.trigger);
                Ok(Queued {
                    id,
                    new: true,
                    reply: None,
                })
            }
        },
    }
}

/// A sync call: published first, recorded by the worker that claims it (see the module's doc).
async fn call(
    app: &AppState,
    function: &Function,
    job: Job<'_>,
    wait: Duration,
) -> Result<Queued, ApiError> {
    let new = NewInvocation {
        id: Uuid::now_v7(),
        function: &function.name,
        trigger: job.trigger,
        input: job.input,
        stored_input_cap: app.settings.max_stored_input_bytes,
        idempotency_key: None,
        key_id: job.key_id,
    };
    let work = work(new.id, function, &job);
    let reply = match app
        .publisher
        .call(&function.queue, work, job.input, wait)
        .await
    {
        Ok(reply) => reply,
        Err(e) => match refuse(app, &new).await {
            true => return Err(publish_error(e)),
            // A worker claimed it before the refusal: accepted, its record tells the end.
            false => None,
        },
    };
    if reply.is_none()
        && let Err(e) = store::note_queued(&app.pool, &new).await
    {
        // The message is on its queue: the worker that claims it writes the record.
        tracing::warn!(id = %new.id, error = %e, "could not write the record of a call that stopped waiting");
    }
    count_accepted(app, job.trigger);
    Ok(Queued {
        id: new.id,
        new: true,
        reply,
    })
}

/// Refuses a sync call whose publish was not confirmed (see [`store::refuse_call`]); `false` when
/// a worker claimed it first. Postgres is tried for a few seconds; if it can't be reached the
/// call is answered 503 all the same, the one case where a refused call may still run.
async fn refuse(app: &AppState, new: &NewInvocation<'_>) -> bool {
    let mut tries = 0;
    loop {
        match store::refuse_call(&app.pool, new, REFUSAL_LINGER).await {
            Ok(refused) => return refused,
            Err(db) if tries < 4 => {
                tries += 1;
                tracing::warn!(id = %new.id, error = %db, "could not note a refused call; trying again");
                tokio::time::sleep(Duration::from_millis(250 * tries)).await;
            }
            Err(db) => {
                tracing::error!(id = %new.id, error = %db, "could not note a refused call");
                return true;
            }
        }
    }
}

/// How long a refused call's placeholder record stays (see [`store::refuse_call`]).
const REFUSAL_LINGER: Duration = Duration::from_millis(500);

/// The message of invocation `id`, with the job's own env (see [`Work::queued`]).
fn work(id: Uuid, function: &Function, job: &Job<'_>) -> Work {
    let mut work = Work::queued(id, job.trigger, function, &job.env);
    work.request = job.request.cloned();
    work.key_id = job.key_id;
    work
}

/// A publish that failed, as the caller hears it: a message too large for the broker's frame
/// is the request's (or the function's) fault, 413, and was never sent; the rest is 503.
pub(crate) fn publish_error(e: BrokerError) -> ApiError {
    match e {
        BrokerError::TooLarge { .. } => ApiError::PayloadTooLarge(format!(
            "refused before queueing: {e}; make the function's env and secrets smaller"
        )),
        other => other.into(),
    }
}

fn count_accepted(app: &AppState, trigger: Trigger) {
    app.metrics.inc(
        "granda_invocations_accepted_total",
        format!("trigger=\"{}\"", trigger.as_str()),
    );
}
