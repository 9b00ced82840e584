//! A dead worker's run, settled from its container on the dead worker's engine before anyone
//! runs it again: a run that ended after its worker died (a short function, before the lease ran
//! out) is recorded from what the engine kept, not run a second time.
//!
//! [`settle`] is called by the takeover sweep ([`super::takeover`]) for every container of a dead
//! worker that names an invocation, and by the claim path ([`super::delivery`]) before it claims
//! a redelivered message whose record is `running` on a dead worker. Under a row lock on the
//! record (`SELECT … FOR UPDATE`, held only while the record is `running` on the dead worker), it
//! looks at the invocation's containers of that worker on its engine:
//!
//! - one **ran to its end** (`exited`, having started): its exit code, times and output (the
//!   engine keeps a run's output, [`super::container::kept_output`]) make the attempt's outcome,
//!   judged by the function's retry policy as the dead worker would have: the final record is
//!   written ([`store::finish_run_of`]), or it is put back to `queued` for its retry; then the
//!   container is removed. The redelivered message then finds the record final and is acked
//!   without a run (its reply sent again), or claims the retry.
//! - one is **still running** (or was created and never started): it is killed (a kill the engine
//!   refuses because it exited meanwhile makes it the case above), removed, and the record put
//!   back to `queued` ([`store::requeue`]) for the message to run it again, as before.
//! - the engine can't be reached or does not answer in [`ENGINE_BOUND`]: nothing is changed; the
//!   message is claimed and run again as before (at least once).
//!
//! **Invariant**: a dead worker's container is recorded as the run only while the record is
//! `running` on that worker, and whatever kills it first moves the record off that worker in the
//! same transaction. So a claim (which waits for the row lock: it updates the same row) either
//! comes first, and the record is no longer the dead worker's (its containers are only stopped,
//! never recorded), or comes after, and finds the record final (no run) or `queued` (the container
//! it would race was killed and removed before). Two collectors (sweeps of several workers, a
//! sweep and a claim) take turns on the lock; the second finds the record moved on. A container
//! killed by one is never read as a run that ended by another: the kill and the record's move
//! commit together.
//!
//! A collected run is settled as its worker would have settled it: its retry policy's `dead` is
//! recorded `dead`, and the redelivered message, finding the record dead, is dead-lettered (not
//! acked); a retry it earned is put back `queued` with its jittered backoff, which the message
//! waits in a delay queue ([`backoff_left`]) before it is claimed; the claim path records a URL
//! call's HTTP method and path (its message has them), and the sweep leaves an ended sync run's
//! container and record to that claim, which comes right after the lease.
//!
//! - **Cold** runs: as above, from the container the run had to itself.
//! - **Warm** runs (an exec in a kept pool container): the exec runs under the idle binary's
//!   `run` (`idle/idle.c`), which passes the output through and keeps a journal in the
//!   container's journal directory ([`JOURNAL_DIR`], a tmpfs of the output caps on the worker's
//!   host, bind-mounted): the invocation it runs, its output within the caps, and once it ended
//!   its exit code and times. The journal is read through the engine's archive API (a remote
//!   engine's too) for each of the dead worker's warm containers: one whose journal has the
//!   run's end is recorded from it (timed out if it ran past the function's timeout); one whose
//!   journal names a run without its end is killed with its container, read once more (a run
//!   that ended meanwhile is recorded), and else put back to `queued`. A warm container with no
//!   journal (a function whose `user` is a name, not a number, or a worker that could not make
//!   the directory) is killed by the sweep and its run goes again (at least once).
//! - **Hot** runs (a request to the function's own process): the answer went over the connection
//!   that died with the worker, but a process that journals (`granda_hot` does, [`hot`]'s
//!   protocol) wrote it first to its container's journal directory ([`JOURNAL_DIR`], a tmpfs on
//!   the worker's host, bind-mounted) as `<id>`. The claim path reads `/granda/journal/<id>` of
//!   the dead worker's hot containers through the archive API; the sweep reads the names in each
//!   hot container's journal and settles them before it removes the container (one with a sync
//!   call left for its message's claim is kept until a later sweep). An answer found is the
//!   call's outcome, made as a live answer makes it ([`execute::answered`]); the pool containers
//!   are not removed by the claim path (other calls' answers may be in their journals). No
//!   answer (a call still going when the lease ran out, a process that does not journal): the
//!   claim path kills the dead worker's hot processes (the sweep does too, whichever comes
//!   first), reads their journals once more (the call may have ended in between), and with
//!   still nothing the call runs again: never beside its first run, which was stopped.

use std::collections::HashMap;
use std::time::Duration;

use bollard::Docker;
use bollard::container::LogOutput;
use bollard::models::ContainerStateStatusEnum;
use bollard::query_parameters::{
    InspectContainerOptions, KillContainerOptionsBuilder, LogsOptionsBuilder,
};
use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use uuid::Uuid;

use super::container::{Exit, JOURNAL_DIR, Run, keep, remove};
use super::{Shared, execute, hot, reaper};
use crate::docker::{
    LABEL_DEADLINE, LABEL_INSTALLATION, LABEL_INVOCATION, LABEL_POOL, LABEL_WORKER,
};
use crate::function::{Mode, RunSpec};
use crate::invocation::{Outcome, Status, Trigger, store};
use crate::metrics::label;
use crate::retry::{self, Verdict};
use crate::web::WebRequest;

mod journal;
use journal::{examine_hot, examine_warm, exit_of, hot_journal_ids, read_journal};

/// The longest the engine is waited for while the record is locked (listing, inspecting,
/// killing, reading the output): past it nothing is changed and the run is retried as before.
pub(super) const ENGINE_BOUND: Duration = Duration::from_secs(10);

/// What [`settle`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Settled {
    /// Its container ran to its end: its outcome is recorded, final with this status, or
    /// `queued` for a retry by the function's policy.
    Collected(Status),
    /// Its container was still running (or never started): killed and removed, and the record
    /// put back to `queued` to be run again.
    Stopped,
    /// The record is not `running` on the dead worker any more (claimed or recorded since), or
    /// the dead worker left no container of it: nothing was changed.
    Untouched,
    /// A sync call's run that ended, found by the sweep: left as it is (container and record)
    /// for its redelivered message's claim, which knows the call's HTTP method and path.
    Left,
}

/// Why a dead run could not be settled (nothing was changed).
#[derive(Debug, thiserror::Error)]
pub(super) enum SettleError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("the engine did not answer within {ENGINE_BOUND:?}")]
    Slow,
}

/// What the dead worker's containers of one invocation were found to be.
#[derive(Default)]
struct Found {
    containers: Vec<String>,
    /// One that ran to its end, with its invocation's deadline (ms since the epoch) if labelled.
    ended: Option<(Run, Option<i64>)>,
    /// How it ran: `Cold` (a container of its own) or `Warm` (an exec in a pool container,
    /// found by its journal).
    mode: Mode,
    /// Killed here, or never started.
    stopped: usize,
    /// A hot call's answer, journaled by its process in a pool container (which is left to the
    /// sweep: it is no container of this run alone).
    hot: Option<hot::JournalEntry>,
}

/// Settles invocation `id`, `running` on dead worker `dead`, from its containers on `docker` (the
/// dead worker's engine). `message`: the function and the call's HTTP request as its message
/// carries them (the claim path); else the function is read from the functions table. See the
/// module doc for what happens when.
#[tracing::instrument(skip(shared, docker, message), fields(%id, dead))]
pub(super) async fn settle(
    shared: &Shared,
    docker: &Docker,
    dead: &str,
    id: Uuid,
    message: Option<(&RunSpec, Option<&WebRequest>)>,
) -> Result<Settled, SettleError> {
    let spec = message.map(|(spec, _)| spec);
    let request = message.and_then(|(_, request)| request);
    let mut tx = shared.pool.begin().await?;
    let row: Option<(String, i32, String)> = sqlx::query_as(
        "SELECT trigger, attempt, function FROM invocations
         WHERE id = $1 AND status = 'running' AND worker = $2 FOR UPDATE",
    )
    .bind(id)
    .bind(dead)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((trigger, attempt, function)) = row else {
        return Ok(Settled::Untouched);
    };
    let installation = shared.runner.installation().unwrap_or_default();
    let caps = shared.runner.caps();
    let mut found = Found::default();
    let examined = tokio::time::timeout(
        ENGINE_BOUND,
        examine(docker, dead, installation, id, caps, &mut found),
    )
    .await;
    if examined.is_err() {
        if found.stopped == 0 {
            return Err(SettleError::Slow);
        }
        // Something was killed already: the record must leave the dead worker with it.
        found.ended = None;
    }
    if found.containers.is_empty() && found.hot.is_none() {
        return Ok(Settled::Untouched);
    }
    let killed = found.stopped > 0;
    // A sync call may have come through the function's URL, whose method and path only its
    // message knows: an ended one is recorded by the message's claim (right after the lease).
    let ended = found.ended.is_some() || found.hot.is_some();
    if message.is_none() && !killed && ended && trigger == Trigger::Sync.as_str() {
        return Ok(Settled::Left);
    }
    let written = record(
        shared,
        tx,
        id,
        dead,
        &mut found,
        (spec, request),
        (&trigger, attempt, &function),
    )
    .await;
    // A killed container is removed even when the record could not be written, so that no one
    // can read it later as a run that ended: the run then goes again as before.
    if written.is_ok() || killed {
        futures_util::future::join_all(found.containers.iter().map(|c| remove(docker, c))).await;
    }
    let settled = written?;
    match settled {
        Settled::Collected(status) => {
            tracing::info!(
                status = status.as_str(),
                stopped = found.stopped,
                "a dead worker's run had ended: recorded from its container, not run again"
            );
            shared
                .metrics
                .inc("granda_worker_takeover_runs_collected_total", String::new());
        }
        _ => tracing::info!(
            stopped = found.stopped,
            "a dead worker's run was still going: stopped, to be run again"
        ),
    }
    Ok(settled)
}

/// Writes, in `tx` (which holds the record's lock), what `found` makes of the attempt, and
/// commits: its outcome when a container ran to its end, else the record back to `queued`.
async fn record(
    shared: &Shared,
    mut tx: sqlx::Transaction<'_, sqlx::Postgres>,
    id: Uuid,
    dead: &str,
    found: &mut Found,
    (spec, request): (Option<&RunSpec>, Option<&WebRequest>),
    (trigger, attempt, function): (&str, i32, &str),
) -> Result<Settled, SettleError> {
    let hot = found.hot.take();
    let ended = match (hot, found.ended.take()) {
        (Some(entry), _) => Some(Ended::Hot(entry)),
        (None, Some((run, deadline))) => Some(Ended::Run(run, deadline)),
        (None, None) => None,
    };
    Ok(match ended {
        Some(ended) => {
            let owned;
            let spec = match spec {
                Some(spec) => Some(spec),
                None => {
                    owned = crate::function::store::get(&shared.pool, function)
                        .await?
                        .map(|f| f.run);
                    owned.as_ref()
                }
            };
            let (mut outcome, verdict) = match ended {
                Ended::Hot(entry) => {
                    found.mode = Mode::Hot;
                    judge_hot(shared, entry, spec, trigger, attempt)
                }
                Ended::Run(mut run, deadline) => {
                    // A warm run is timed by its exec, as a live worker times it.
                    if let (Mode::Warm, Some(spec)) = (found.mode, spec)
                        && run.duration > Duration::from_millis(spec.timeout_ms.max(1) as u64)
                    {
                        run.exit = Exit::TimedOut;
                    }
                    judge(shared, run, deadline, spec, trigger, attempt)
                }
            };
            outcome.cold = found.mode == Mode::Cold;
            outcome.mode = Some(found.mode);
            if let Some(request) = request {
                outcome.http_method = Some(request.method.clone());
                outcome.http_path = Some(request.path.clone());
            }
            match verdict {
                Verdict::RetryAfter(level) => {
                    // Its backoff, as a live worker's retry waits it: the redelivered message
                    // finds the record `queued` for later and waits ([`backoff_left`]).
                    let delay = retry::jittered(level, (Uuid::new_v4().as_u128() & 0xffff) as u16);
                    store::requeue(&mut *tx, id, dead, &outcome, Utc::now() + delay).await?;
                    tx.commit().await?;
                    Settled::Collected(Status::Queued)
                }
                Verdict::Final | Verdict::Dead => {
                    store::finish_run_of(&mut *tx, id, dead, &outcome).await?;
                    tx.commit().await?;
                    let status = outcome.status();
                    if Trigger::parse(trigger) != Some(Trigger::Sync) {
                        crate::callback::deliver_later(
                            shared.pool.clone(),
                            shared.callbacks.clone(),
                            id,
                        );
                    }
                    shared.metrics.function_seen(function);
                    shared.metrics.inc(
                        "granda_invocations_total",
                        format!(
                            "function=\"{}\",status=\"{}\"",
                            label(function),
                            status.as_str()
                        ),
                    );
                    Settled::Collected(status)
                }
            }
        }
        None => {
            let outcome = execute::failed(
                format!("its worker {dead} died during the run; the run was stopped"),
                true,
            );
            store::requeue(&mut *tx, id, dead, &outcome, Utc::now()).await?;
            tx.commit().await?;
            Settled::Stopped
        }
    })
}

/// The dead worker's containers of `id`, into `found`: running ones killed, and the output of
/// one that ran to its end read. A container the engine can't say more of counts as stopped
/// (it is removed, the run goes again): nothing is ever recorded from a container that was
/// killed, or might have been.
async fn examine(
    docker: &Docker,
    dead: &str,
    installation: &str,
    id: Uuid,
    caps: super::container::Caps,
    found: &mut Found,
) {
    let labels = [
        format!("{LABEL_WORKER}={dead}"),
        format!("{LABEL_INSTALLATION}={installation}"),
        format!("{LABEL_INVOCATION}={id}"),
    ];
    let by_worker = [labels[0].as_str(), labels[1].as_str()];
    let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
    for (container, labels) in reaper::list(docker, &labels).await {
        let deadline = labels.get(LABEL_DEADLINE).and_then(|d| d.parse().ok());
        found.containers.push(container.clone());
        let Ok(mut state) = inspect(docker, &container).await else {
            found.stopped += 1;
            continue;
        };
        if matches!(
            state.status,
            Some(ContainerStateStatusEnum::RUNNING | ContainerStateStatusEnum::RESTARTING)
        ) {
            match kill(docker, &container).await {
                Ok(()) => {
                    found.stopped += 1;
                    continue;
                }
                // Not running any more: it exited between the look and the kill.
                Err(bollard::errors::Error::DockerResponseServerError {
                    status_code: 409, ..
                }) => match inspect(docker, &container).await {
                    Ok(now) => state = now,
                    Err(_) => {
                        found.stopped += 1;
                        continue;
                    }
                },
                Err(_) => {
                    found.stopped += 1;
                    continue;
                }
            }
        }
        let started = state.started_at.as_deref().and_then(engine_time);
        match (state.status, started) {
            (Some(ContainerStateStatusEnum::EXITED), Some(started_at)) if found.ended.is_none() => {
                match output(docker, &container, caps).await {
                    Ok((stdout, stdout_truncated, stderr, stderr_truncated)) => {
                        let finished_at = state
                            .finished_at
                            .as_deref()
                            .and_then(engine_time)
                            .unwrap_or_else(Utc::now)
                            .max(started_at);
                        let exit = exit_of(
                            state.exit_code.unwrap_or(-1),
                            finished_at.timestamp_millis(),
                            deadline,
                        );
                        let run = Run {
                            exit,
                            oom_killed: state.oom_killed.unwrap_or(false),
                            stdout,
                            stdout_truncated,
                            stderr,
                            stderr_truncated,
                            started_at,
                            finished_at,
                            duration: (finished_at - started_at).to_std().unwrap_or_default(),
                        };
                        found.ended = Some((run, deadline));
                    }
                    Err(e) => {
                        // No output to be had (a container of a worker from before the engine
                        // kept it): run it again rather than record an output it did not make.
                        tracing::warn!(%container, error = %e, "a dead worker's run ended, but its output can't be read; it runs again");
                        found.stopped += 1;
                    }
                }
            }
            _ => found.stopped += 1,
        }
    }
    examine_warm(docker, &by_worker, id, caps, found).await;
    if found.containers.is_empty() {
        examine_hot(docker, &by_worker, id, caps, found).await;
    }
}

/// Kills `container` (SIGKILL); 409 when it is not running.
async fn kill(docker: &Docker, container: &str) -> Result<(), bollard::errors::Error> {
    let options = KillContainerOptionsBuilder::new().signal("KILL").build();
    docker.kill_container(container, Some(options)).await
}

async fn inspect(
    docker: &Docker,
    container: &str,
) -> Result<bollard::models::ContainerState, bollard::errors::Error> {
    let inspected = docker
        .inspect_container(container, None::<InspectContainerOptions>)
        .await?;
    Ok(inspected.state.unwrap_or_default())
}

/// A time as the engine gives it (when a container started, finished); `None` for its "never"
/// (year 1).
fn engine_time(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc))
        .filter(|t| t.timestamp() > 0)
}

/// The container's stdout and stderr as the engine kept them, under `caps` (each with whether it
/// was cut).
async fn output(
    docker: &Docker,
    container: &str,
    caps: super::container::Caps,
) -> Result<(Vec<u8>, bool, Vec<u8>, bool), bollard::errors::Error> {
    let options = LogsOptionsBuilder::new().stdout(true).stderr(true).build();
    let mut logs = docker.logs(container, Some(options));
    let (mut out, mut out_cut, mut err, mut err_cut) = (vec![], false, vec![], false);
    while let Some(chunk) = logs.next().await {
        match chunk? {
            LogOutput::StdOut { message } | LogOutput::Console { message } => {
                keep(&mut out, &mut out_cut, caps.stdout, &message)
            }
            LogOutput::StdErr { message } => keep(&mut err, &mut err_cut, caps.stderr, &message),
            LogOutput::StdIn { .. } => {}
        }
    }
    Ok((out, out_cut, err, err_cut))
}

/// How a dead worker's run ended: its container's (cold or warm) run, with its invocation's
/// deadline if labelled, or a hot call's journaled answer.
enum Ended {
    Run(Run, Option<i64>),
    Hot(hot::JournalEntry),
}

/// The attempt's outcome from a hot call's journaled answer, made as a live call's answer
/// makes it ([`execute::answered`]), and what the function's retry policy makes of it. An answer
/// that came after the call's timeout is a timeout, as the live worker's would have been.
fn judge_hot(
    shared: &Shared,
    entry: hot::JournalEntry,
    spec: Option<&RunSpec>,
    trigger: &str,
    attempt: i32,
) -> (Outcome, Verdict) {
    let started_at = DateTime::from_timestamp_millis(entry.started_ms).unwrap_or_else(Utc::now);
    let finished_at = DateTime::from_timestamp_millis(entry.finished_ms)
        .unwrap_or(started_at)
        .max(started_at);
    let duration_ms = (finished_at - started_at).num_milliseconds();
    let mut outcome = Outcome {
        started_at: Some(started_at),
        finished_at: Some(finished_at),
        duration_ms: Some(duration_ms),
        ..Default::default()
    };
    let response = spec.map(|s| s.response).unwrap_or_default();
    let failure = match spec {
        Some(spec) if duration_ms > spec.timeout_ms.max(1) => {
            outcome.status = Some(Status::TimedOut);
            outcome.error = Some(format!(
                "timed out after {} ms; the container was killed",
                spec.timeout_ms.max(1)
            ));
            Some(retry::Failure::Timeout)
        }
        _ => execute::answered(&mut outcome, entry.answer, response).1,
    };
    verdict_on(shared, outcome, failure, spec, trigger, attempt)
}

/// The attempt's outcome from a container that ran to its end, and what the function's retry
/// policy makes of it (`Final` when the function is gone).
fn judge(
    shared: &Shared,
    run: Run,
    deadline: Option<i64>,
    spec: Option<&RunSpec>,
    trigger: &str,
    attempt: i32,
) -> (Outcome, Verdict) {
    let (outcome, failure) = match spec {
        Some(spec) => execute::container_outcome(run, spec),
        None => {
            let timeout_ms = deadline
                .map(|d| (d - run.started_at.timestamp_millis()).max(1))
                .unwrap_or(1);
            execute::outcome_of(run, timeout_ms)
        }
    };
    verdict_on(shared, outcome, failure, spec, trigger, attempt)
}

/// What the function's retry policy makes of an attempt that ended with `failure` (`Final` when
/// the function is gone), `dead` written into the outcome when that is the verdict: as the dead
/// worker would have judged it.
fn verdict_on(
    shared: &Shared,
    mut outcome: Outcome,
    failure: Option<retry::Failure>,
    spec: Option<&RunSpec>,
    trigger: &str,
    attempt: i32,
) -> (Outcome, Verdict) {
    let verdict = match (spec, Trigger::parse(trigger)) {
        (Some(spec), Some(trigger)) => retry::decide(
            trigger,
            spec.max_attempts,
            &spec.retry_on,
            attempt,
            failure,
            &shared.backoff,
        ),
        _ => Verdict::Final,
    };
    if verdict == Verdict::Dead {
        outcome.status = Some(Status::Dead);
    }
    (outcome, verdict)
}

/// Settles, on `docker`, every container of dead worker `dead` that runs an invocation (in
/// `containers`, as listed with their labels); returns the containers it left alone: those of
/// no invocation (pool containers), and those whose record is not the dead worker's any more
/// (to be stopped as before). A container whose settling failed is kept for the next sweep.
pub(super) async fn settle_all(
    shared: &Shared,
    docker: &Docker,
    dead: &str,
    containers: Vec<(String, HashMap<String, String>)>,
) -> Vec<String> {
    let mut rest = vec![];
    let mut done: Vec<Uuid> = vec![];
    let caps = shared.runner.caps();
    for (container, labels) in containers {
        let mut id = labels
            .get(LABEL_INVOCATION)
            .and_then(|i| Uuid::parse_str(i).ok());
        // A warm pool container: the invocation its journal names, run or running in it.
        if id.is_none() && labels.get(LABEL_POOL).map(String::as_str) == Some("warm") {
            let read = tokio::time::timeout(ENGINE_BOUND, read_journal(docker, &container, caps));
            if let Ok(Ok(journal)) = read.await {
                id = journal.run.or(journal.end.map(|e| e.id));
            }
        }
        // A hot pool container: the calls its process journaled answers to, settled before it
        // is removed; one left for its message's claim keeps it until a later sweep.
        if id.is_none() && labels.get(LABEL_POOL).map(String::as_str) == Some("hot") {
            let read =
                tokio::time::timeout(ENGINE_BOUND, hot_journal_ids(docker, &container, caps));
            let ids = match read.await {
                Ok(Ok(ids)) => ids,
                _ => vec![],
            };
            let mut keep = false;
            for id in ids {
                if done.contains(&id) {
                    continue;
                }
                match settle(shared, docker, dead, id, None).await {
                    Ok(Settled::Untouched) => {}
                    Ok(settled) => {
                        keep |= settled == Settled::Left;
                        done.push(id);
                    }
                    Err(e) => {
                        keep = true;
                        tracing::warn!(%id, error = %e, "can't settle a dead worker's hot call now; the next sweep tries again")
                    }
                }
            }
            if !keep {
                rest.push(container);
            }
            continue;
        }
        let Some(id) = id else {
            rest.push(container);
            continue;
        };
        if done.contains(&id) {
            continue;
        }
        match settle(shared, docker, dead, id, None).await {
            Ok(Settled::Untouched) => rest.push(container),
            // Collected, stopped, or left for its message's claim: not removed here.
            Ok(_) => done.push(id),
            Err(e) => {
                tracing::warn!(%id, error = %e, "can't settle a dead worker's run now; the next sweep tries again")
            }
        }
    }
    rest
}

/// What is left of the backoff of invocation `id` when its record is `queued` for a retry later
/// (a retry a dead worker's collected run earned, [`settle`]; or one whose worker died before it
/// parked the message): the delay queue to park its message in (the backoff's level that holds
/// it, or the longest) and for how long. `None` when it is due (within a margin for the clocks).
pub(super) async fn backoff_left(shared: &Shared, id: Uuid) -> Option<(Duration, Duration)> {
    let left: Option<(f64,)> = sqlx::query_as(
        "SELECT EXTRACT(EPOCH FROM (retry_at - now()))::float8 FROM invocations
         WHERE id = $1 AND status = 'queued' AND retry_at > now() + interval '250 milliseconds'",
    )
    .bind(id)
    .fetch_optional(&shared.pool)
    .await
    .ok()
    .flatten();
    let left = Duration::from_secs_f64(left?.0.max(0.0));
    let levels = shared.backoff.levels();
    let level = levels
        .iter()
        .copied()
        .find(|l| *l >= left)
        .or(levels.last().copied())?;
    Some((level, left.min(level)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_engines_never_is_no_start() {
        assert!(engine_time("0001-01-01T00:00:00Z").is_none());
        let t = engine_time("2026-12-05T20:20:28.184785438Z").unwrap();
        assert_eq!(t.timestamp(), 1_796_502_028);
        assert!(engine_time("garbage").is_none());
    }
}
