//! Executing a claimed run in its mode: a cold container, a kept warm container (an exec), or a
//! hot container (a request over its socket); and what a run's end means as an outcome.

use super::*;
use std::time::{Duration, Instant};

use crate::function::{Mode, ResponseMode};
use crate::invocation::{Outcome, Status};
use crate::message::Work;
use crate::retry::Failure;
use container::{Exit, PlatformError, Removal, Run};

/// Runs the container and turns whatever happened into the attempt's outcome and failure class,
/// and the removal of a cold run's container, for the caller to wait for after it answered.
pub(super) async fn execute(
    shared: &Shared,
    work: &Work,
    attempt: i32,
    input: &[u8],
) -> (Outcome, Option<Failure>, Option<Removal>) {
    let armed = faults::armed(shared.test_faults, work, faults::IN_EXECUTE);
    let (mut outcome, failure, removal) = tokio::select! {
        biased;
        out = execute_in_mode(shared, work, attempt, input) => out,
        () = faults::panic_later(armed) => unreachable!("panic_later never ends but by a panic"),
    };
    // The record says how it ran, so a hot run reads "hot", not "warm".
    outcome.mode = Some(work.function.run.mode);
    (outcome, failure, removal)
}

async fn execute_in_mode(
    shared: &Shared,
    work: &Work,
    attempt: i32,
    input: &[u8],
) -> (Outcome, Option<Failure>, Option<Removal>) {
    // A call of the function's URL: the CGI meta-variables join its env for this run. The run
    // span's trace context too, so the function's own spans join the trace: `TRACEPARENT` (and
    // `TRACESTATE`), and for a URL call `HTTP_TRACEPARENT` in place of the caller's own.
    // A hot call carries all this as headers instead ([`super::hot`]).
    if work.function.run.mode == Mode::Hot {
        let (outcome, failure) = run_hot(shared, work, attempt, input).await;
        return (outcome, failure, None);
    }
    let trace = crate::telemetry::trace_headers();
    let with_env = (work.request.is_some() || !trace.is_empty()).then(|| {
        let mut function = work.function.clone();
        let env = &mut function.run.env;
        if let Some(request) = &work.request {
            env.extend(super::cgi::meta_variables(request, input.len()));
            env.remove("HTTP_TRACEPARENT");
            env.remove("HTTP_TRACESTATE");
        }
        for (name, value) in &trace {
            let name = name.to_ascii_uppercase();
            if work.request.is_some() {
                env.insert(format!("HTTP_{name}"), value.clone());
            }
            env.insert(name, value.clone());
        }
        function
    });
    let function = with_env.as_ref().unwrap_or(&work.function);
    // Boxed: a container run's future is large, and would otherwise make every delivery's
    // handler (hot calls included) that large, copied as it is moved into its task.
    let (ran, cold, removal) = match work.function.run.mode {
        Mode::Cold => {
            let (ran, removal) = Box::pin(shared.runner.run(work.id, function, input)).await;
            (ran, true, removal)
        }
        Mode::Warm => {
            let (ran, cold) = Box::pin(run_warm(shared, work, function, input)).await;
            (ran, cold, None)
        }
        Mode::Hot => unreachable!("a hot call was answered above"),
    };
    match ran {
        Ok(run) => {
            let (mut outcome, failure) = container_outcome(run, &work.function.run);
            outcome.cold = cold;
            (outcome, failure, removal)
        }
        Err(e) => (
            failed(e.to_string(), cold),
            Some(Failure::Platform),
            removal,
        ),
    }
}

/// What a container's run means as an outcome for a function run as `spec` says (its own HTTP
/// answer parsed from its output in CGI mode).
pub(super) fn container_outcome(
    run: Run,
    spec: &crate::function::RunSpec,
) -> (Outcome, Option<Failure>) {
    let (mut outcome, mut failure) = outcome_of(run, spec.timeout_ms);
    if spec.response == ResponseMode::Cgi && outcome.status == Some(Status::Succeeded) {
        match super::cgi::parse_response(&outcome.output) {
            Ok((answer, body)) => {
                outcome.output = body;
                outcome.http = Some(answer);
            }
            Err(e) => {
                outcome.status = Some(Status::Failed);
                outcome.error = Some(format!("malformed CGI response: {e}"));
                failure = Some(Failure::Error);
            }
        }
    }
    (outcome, failure)
}

/// A warm run: an exec in a kept container, taking another when the one it got is gone.
pub(super) async fn run_warm(
    shared: &Shared,
    work: &Work,
    function: &crate::function::Snapshot,
    input: &[u8],
) -> (Result<Run, PlatformError>, bool) {
    let mut tries = 0;
    loop {
        let (warm, cold) = match shared.warm.acquire(&work.function).await {
            Ok(got) => got,
            Err(e) => return (Err(e), true),
        };
        let ran = shared
            .runner
            .exec(&warm.id, warm.journal.is_some(), work.id, function, input)
            .await;
        // Only a clean run gives its container back; anything else may have left it dirty.
        let clean = matches!(&ran, Ok(run) if run.exit == Exit::Code(0));
        shared.warm.release(warm, clean);
        match ran {
            Err(PlatformError::Gone(e)) if tries < 3 => {
                tracing::info!(error = %e, "a kept container was gone; taking another");
                tries += 1;
            }
            ran => return (ran, cold),
        }
    }
}

/// A hot run: one request to the function's own process in a kept container, taking another
/// container when the one it got no longer accepts requests.
pub(super) async fn run_hot(
    shared: &Shared,
    work: &Work,
    attempt: i32,
    input: &[u8],
) -> (Outcome, Option<Failure>) {
    let timeout_ms = work.function.run.timeout_ms.max(1);
    // What can't be put into a request fails here, before a container is taken or started.
    let probe = hot::Call {
        id: work.id,
        function: &work.function,
        trigger: work.trigger,
        attempt,
        deadline_ms: 0,
        input,
        request: work.request.as_ref(),
    };
    if let Err(e) = hot::request_headers(&probe) {
        return (failed(e, false), Some(Failure::Error));
    }
    let mut tries = 0;
    loop {
        let (mut kept, cold) = match shared.warm.acquire(&work.function).await {
            Ok(got) => got,
            Err(PlatformError::NotReady(e)) => {
                return (failed(e.to_string(), true), Some(Failure::Error));
            }
            Err(e) => return (failed(e.to_string(), true), Some(Failure::Platform)),
        };
        let started_at = chrono::Utc::now();
        let started = Instant::now();
        let deadline_ms = started_at.timestamp_millis().saturating_add(timeout_ms);
        let (connection, _) = kept.hot.as_mut().expect("a hot pool container");
        let called = tokio::time::timeout(
            Duration::from_millis(timeout_ms as u64),
            connection.call(
                hot::Call {
                    id: work.id,
                    function: &work.function,
                    trigger: work.trigger,
                    attempt,
                    deadline_ms,
                    input,
                    request: work.request.as_ref(),
                },
                shared.runner.caps().stdout,
            ),
        )
        .await;
        let duration = started.elapsed();
        let mut outcome = Outcome {
            started_at: Some(started_at),
            finished_at: Some(chrono::Utc::now()),
            duration_ms: Some(duration.as_millis() as i64),
            cold,
            ..Default::default()
        };
        let failure = match called {
            Ok(Ok(answer)) => {
                let (healthy, failure) = answered(&mut outcome, answer, work.function.run.response);
                // A failed run may have left the process in a bad state: never reused.
                shared.warm.release(kept, healthy);
                failure
            }
            Ok(Err(hot::CallError::Stale(e))) if tries < 3 => {
                tracing::info!(error = %e, "a hot container no longer accepts requests; taking another");
                shared.warm.release(kept, false);
                tries += 1;
                continue;
            }
            Ok(Err(e)) => {
                let ended = hot::ended(shared.runner.docker(), &kept.id).await;
                shared.warm.release(kept, false);
                outcome.status = Some(Status::Failed);
                match ended {
                    Some(end) => {
                        outcome.exit_code = Some(end.exit_code as i32);
                        outcome.error = Some(if end.oom_killed {
                            "out of memory: the engine killed the container at its memory limit"
                                .to_string()
                        } else {
                            format!(
                                "the function exited with code {} during the call",
                                end.exit_code
                            )
                        });
                    }
                    None => outcome.error = Some(e.to_string()),
                }
                Some(Failure::Error)
            }
            Err(_) => {
                shared.warm.release(kept, false);
                outcome.status = Some(Status::TimedOut);
                outcome.error = Some(format!(
                    "timed out after {timeout_ms} ms; the container was killed"
                ));
                Some(Failure::Timeout)
            }
        };
        return (outcome, failure);
    }
}

/// What a hot function's answer makes of the attempt's `outcome` (a live call's, or one a dead
/// worker's hot container journaled, [`super::dead_run`]), and whether its container may serve
/// again.
pub(super) fn answered(
    outcome: &mut Outcome,
    answer: hot::Answer,
    response: ResponseMode,
) -> (bool, Option<Failure>) {
    match answer {
        // Its own HTTP answer, passed on: a 4xx is its answer, a 5xx its failure, and a
        // status that is no final one (1xx, past 599) no answer at all.
        answer if response == ResponseMode::Cgi && !(200..=599).contains(&answer.status) => {
            outcome.status = Some(Status::Failed);
            outcome.exit_code = Some(0);
            outcome.error = Some(format!(
                "malformed CGI response: the function answered HTTP {}, which is no final \
                 status (200 to 599)",
                answer.status
            ));
            (false, Some(Failure::Error))
        }
        answer if response == ResponseMode::Cgi => {
            let failed = answer.status >= 500;
            outcome.status = Some(if failed {
                Status::Failed
            } else {
                Status::Succeeded
            });
            outcome.exit_code = Some(if failed { 1 } else { 0 });
            if failed {
                let detail = String::from_utf8_lossy(&answer.body).replace('\0', "\u{FFFD}");
                outcome.error = Some(format!(
                    "the function answered HTTP {}: {}",
                    answer.status,
                    tail(&detail, crate::message::ERROR_TAIL_BYTES)
                ));
            }
            outcome.http = Some(crate::web::WebAnswer {
                status: answer.status,
                headers: answer.headers,
            });
            outcome.output = answer.body;
            outcome.output_truncated = answer.truncated;
            (!failed, failed.then_some(Failure::Error))
        }
        answer if (200..300).contains(&answer.status) => {
            outcome.status = Some(Status::Succeeded);
            outcome.exit_code = Some(0);
            outcome.output = answer.body;
            outcome.output_truncated = answer.truncated;
            (true, None)
        }
        answer => {
            let detail = String::from_utf8_lossy(&answer.body).replace('\0', "\u{FFFD}");
            outcome.status = Some(Status::Failed);
            outcome.exit_code = Some(1);
            outcome.error = Some(format!(
                "the function answered HTTP {}: {}",
                answer.status,
                tail(&detail, crate::message::ERROR_TAIL_BYTES)
            ));
            outcome.output = answer.body;
            outcome.output_truncated = answer.truncated;
            (false, Some(Failure::Error))
        }
    }
}

/// A run that never got an answer from the function.
pub(super) fn failed(error: String, cold: bool) -> Outcome {
    Outcome {
        status: Some(Status::Failed),
        error: Some(error),
        cold,
        ..Default::default()
    }
}

/// The last `max` bytes of `s`, on a character boundary.
pub(super) fn tail(s: &str, max: usize) -> &str {
    let mut start = s.len().saturating_sub(max);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

pub(super) fn outcome_of(run: Run, timeout_ms: i64) -> (Outcome, Option<Failure>) {
    let (status, exit_code, error, failure) = match run.exit {
        Exit::Code(0) => (Status::Succeeded, Some(0), None, None),
        Exit::Code(code) if run.oom_killed => (
            Status::Failed,
            Some(code as i32),
            Some("out of memory: the engine killed the container at its memory limit".to_string()),
            Some(Failure::Error),
        ),
        // SIGKILL, not Granda's (a timeout is `TimedOut`), with no OOM flag after the settle
        // time: the engine can lose the OOM event of a process that dies at once (cgroup v1), so
        // say what is most likely rather than nothing.
        Exit::Code(137) => (
            Status::Failed,
            Some(137),
            Some(
                "killed by SIGKILL (exit 137), not by Granda: most likely out of memory at its \
                 memory limit (the engine did not report it)"
                    .to_string(),
            ),
            Some(Failure::Error),
        ),
        Exit::Code(code) => (
            Status::Failed,
            Some(code as i32),
            None,
            Some(Failure::Error),
        ),
        Exit::TimedOut => (
            Status::TimedOut,
            None,
            Some(format!(
                "timed out after {timeout_ms} ms; the container was killed"
            )),
            Some(Failure::Timeout),
        ),
    };
    let outcome = Outcome {
        status: Some(status),
        output: run.stdout,
        output_truncated: run.stdout_truncated,
        // Postgres text can't hold NUL: a function writing one must not make its record unwritable.
        logs: String::from_utf8_lossy(&run.stderr).replace('\0', "\u{FFFD}"),
        logs_truncated: run.stderr_truncated,
        exit_code,
        error,
        started_at: Some(run.started_at),
        finished_at: Some(run.finished_at),
        duration_ms: Some(run.duration.as_millis() as i64),
        cold: true,
        ..Default::default()
    };
    (outcome, failure)
}
