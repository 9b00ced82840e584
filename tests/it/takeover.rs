//! Issue 32: a dead host's work never runs twice. Host B's worker (a `granda worker` process on
//! the second engine, [`crate::hosts`]) is `kill -9`ed while its short runs go on, with a lease
//! long enough for them to end before it runs out: each ended run is recorded from its container
//! on engine B (output and exit code as the engine kept them), not run again by host A.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;

use serde_json::json;

use crate::hosts::{
    engine, now_ns, on_hosts_a_and_b, push, remove_image, settle, worker_process_with,
};
use crate::hosts_ledger::leftovers;
use crate::support::eventually;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn short_runs_that_end_after_their_host_died_are_recorded_from_its_engine_not_run_again() {
    let (mut app, engine_b, registry, runs) = on_hosts_a_and_b(|_| {}).await;
    let image = push(&app, &registry, "granda-test/sh");
    const LEASE_MS: u64 = 8_000;
    // Each run sleeps 1-2 s, then prints something no other run prints.
    app.register(
        "short",
        &image,
        json!({"queue": "takeover", "timeout_ms": 30_000, "input": "args"}),
    )
    .await;
    let script = |i: usize| {
        format!(
            "sleep 1.{}; echo run-$(cat /proc/sys/kernel/random/uuid); echo to-stderr >&2",
            i * 2
        )
    };
    let (worker_b, id_b) = host_b_worker(&app, &engine_b, 8, LEASE_MS);
    let on_b = engine(&engine_b);

    // Host B takes every call (nobody else serves the queue yet): async ones, and two sync
    // calls whose callers wait through B's death.
    const ASYNC: usize = 4;
    let mut accepted = vec![];
    for i in 0..ASYNC {
        accepted.push(app.invoke_async("short", script(i)).await);
    }
    let mut callers = vec![];
    for i in ASYNC..ASYNC + 2 {
        callers.push(waiting_call(&app, "/v1/functions/short/invoke", script(i)));
    }
    let all_running = || async {
        let rows = running_on(&app, &id_b).await;
        let started = rows
            .iter()
            .filter(|id| runs.of(**id).iter().any(|e| e.action == "start"))
            .count();
        (rows.len() == ASYNC + 2 && started == ASYNC + 2).then_some(rows)
    };
    let on_host_b = eventually(
        Duration::from_secs(60),
        "host B runs every call",
        all_running,
    )
    .await;

    // Host A serves the queue too; then host B dies while its containers run.
    let worker_a = host_a_worker(&mut app, 8).await;
    let (killed, killed_at) = kill(worker_b);

    // Every run is recorded from its container on B, the first run's output, not run again.
    let ids: Vec<uuid::Uuid> = on_host_b;
    let mut recorded_after = vec![];
    for id in &ids {
        let record = app.wait_final(*id, Duration::from_secs(60)).await;
        recorded_after.push(killed_at.elapsed());
        assert_eq!(record["status"], "succeeded", "{record}");
        assert_eq!(record["worker"], id_b, "recorded as B's run: {record}");
        assert_eq!(record["attempt"], 1, "{record}");
        assert_eq!(record["exit_code"], 0, "{record}");
        let output = record["output"].as_str().unwrap();
        assert!(
            output.starts_with("run-") && output.ends_with('\n') && output.len() == 41,
            "the run's own output: {record}"
        );
        assert_eq!(record["logs"], "to-stderr\n", "{record}");
        let events = runs.of(*id);
        let ended: Vec<_> = events
            .iter()
            .filter(|e| e.action == "die" && e.exit_code.as_deref() == Some("0"))
            .collect();
        assert_eq!(ended.len(), 1, "{id} ran to its end once: {events:?}");
        assert_eq!(ended[0].engine, "b", "{events:?}");
        assert!(
            ended[0].at_ns < killed + LEASE_MS as i64 * 1_000_000,
            "{id} ended before B's lease ran out (the case under test): {events:?}"
        );
        assert!(
            events.iter().all(|e| e.engine == "b"),
            "{id} never ran on A: {events:?}"
        );
    }
    let lease = all_within_lease(&recorded_after, LEASE_MS);

    // The sync callers got the very output recorded.
    for caller in callers {
        let (status, id, body) = caller.await.unwrap();
        assert_eq!(status, 200, "{body}");
        let record = app.invocation(id).await;
        assert_eq!(record["output"], body, "{record}");
    }
    b_cleaned_up(&on_b, &id_b).await;
    eprintln!(
        "kill -9 of host B with {} short runs going: each ended on B before its lease ({lease:?}) \
         ran out, and was recorded from engine B {recorded_after:?} after the kill, none run \
         again (worker A: {worker_a})",
        ids.len()
    );
    settle(&app, &ids, &engine_b, &runs).await;
    finish(app, &on_b, &image).await;
}

/// (engine, exec id, action or "die <exit code>", when in ns since the epoch).
type ExecEvent = (&'static str, String, String, i64);

/// The execs an engine started in warm pool containers (`exec_start`, whose action names the
/// command: a journaled run's names its invocation) and how they ended (`exec_die`), followed
/// live, by engine name.
struct ExecLog {
    events: Arc<Mutex<Vec<ExecEvent>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl ExecLog {
    fn watch(engines: &[(&'static str, bollard::Docker)]) -> ExecLog {
        let events: Arc<Mutex<Vec<ExecEvent>>> = Arc::default();
        let since = chrono::Utc::now().timestamp() - 1;
        let tasks = engines
            .iter()
            .map(|(name, docker)| {
                let (name, docker, events) = (*name, docker.clone(), events.clone());
                tokio::spawn(async move {
                    let options = bollard::query_parameters::EventsOptions {
                        since: Some(since.to_string()),
                        until: None,
                        filters: Some(HashMap::from([
                            ("type".to_string(), vec!["container".to_string()]),
                            (
                                "event".to_string(),
                                vec!["exec_start".to_string(), "exec_die".to_string()],
                            ),
                            (
                                "label".to_string(),
                                vec![format!("{}=warm", granda::docker::LABEL_POOL)],
                            ),
                        ])),
                    };
                    let mut stream = docker.events(Some(options));
                    while let Some(event) = stream.next().await {
                        let event = event.unwrap_or_else(|e| panic!("engine {name}'s events: {e}"));
                        let action = event.action.unwrap_or_default();
                        let attributes = event.actor.and_then(|a| a.attributes).unwrap_or_default();
                        let exec = attributes.get("execID").cloned().unwrap_or_default();
                        let what = if action == "exec_die" {
                            let code = attributes.get("exitCode").cloned().unwrap_or_default();
                            format!("die {code}")
                        } else {
                            action
                        };
                        let at_ns = event.time_nano.unwrap_or_default();
                        events.lock().unwrap().push((name, exec, what, at_ns));
                    }
                })
            })
            .collect();
        ExecLog { events, tasks }
    }

    /// Each exec of invocation `id` on any engine: the engine and how it ended (`None`: not yet).
    fn of(&self, id: uuid::Uuid) -> Vec<(&'static str, Option<String>)> {
        self.timed(id)
            .into_iter()
            .map(|(engine, died)| (engine, died.map(|(code, _)| code)))
            .collect()
    }

    /// [`ExecLog::of`], with when each exec ended.
    fn timed(&self, id: uuid::Uuid) -> Vec<(&'static str, Option<(String, i64)>)> {
        let id = id.to_string();
        let events = self.events.lock().unwrap();
        events
            .iter()
            .filter(|(_, _, what, _)| what.starts_with("exec_start") && what.contains(&id))
            .map(|(engine, exec, _, _)| {
                let died = events
                    .iter()
                    .find(|(e, x, what, _)| e == engine && x == exec && what.starts_with("die "))
                    .map(|(_, _, what, at)| (what["die ".len()..].to_string(), *at));
                (*engine, died)
            })
            .collect()
    }
}

impl Drop for ExecLog {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn warm_runs_that_end_after_their_host_died_are_recorded_from_their_journal_not_run_again() {
    let (mut app, engine_b, registry, _runs) = on_hosts_a_and_b(|_| {}).await;
    let on_b = engine(&engine_b);
    let execs = ExecLog::watch(&[("a", app.docker.clone()), ("b", on_b.clone())]);
    let image = push(&app, &registry, "granda-test/sh");
    const LEASE_MS: u64 = 8_000;
    app.register(
        "short-warm",
        &image,
        json!({"queue": "takeover", "mode": "warm", "timeout_ms": 30_000, "input": "args"}),
    )
    .await;
    // Each run sleeps 2-3 s, then prints something no other run prints.
    let script = |i: usize| {
        format!(
            "sleep 2.{}; echo run-$(cat /proc/sys/kernel/random/uuid); echo to-stderr >&2",
            i * 2
        )
    };
    let (worker_b, id_b) = host_b_worker(&app, &engine_b, 8, LEASE_MS);
    const CALLS: usize = 4;
    for i in 0..CALLS {
        app.invoke_async("short-warm", script(i)).await;
    }
    // And a call of the function's URL, whose caller waits through B's death.
    let url_call = waiting_call(&app, "/fn/short-warm/from/url", script(CALLS));
    // Every call runs as an exec on B before B dies.
    let ids = eventually(
        Duration::from_secs(60),
        "host B execs every call",
        || async {
            let rows = running_on(&app, &id_b).await;
            let execed = rows.iter().filter(|id| execs.of(**id).len() == 1).count();
            (rows.len() == CALLS + 1 && execed == CALLS + 1).then_some(rows)
        },
    )
    .await;
    let worker_a = host_a_worker(&mut app, 4).await;
    let (_, killed_at) = kill(worker_b);

    let mut recorded_after = vec![];
    for id in &ids {
        let record = app.wait_final(*id, Duration::from_secs(60)).await;
        recorded_after.push(killed_at.elapsed());
        assert_eq!(record["status"], "succeeded", "{record}");
        assert_eq!(record["worker"], id_b, "recorded as B's run: {record}");
        assert_eq!(record["attempt"], 1, "{record}");
        assert_eq!(record["exit_code"], 0, "{record}");
        assert_eq!(record["mode"], "warm", "{record}");
        let output = record["output"].as_str().unwrap();
        assert!(
            output.starts_with("run-") && output.ends_with('\n') && output.len() == 41,
            "the run's own output: {record}"
        );
        assert_eq!(record["logs"], "to-stderr\n", "{record}");
        // One exec over both engines, on B, which ran to its end.
        let ran = execs.of(*id);
        assert_eq!(ran.len(), 1, "{id} was execed once: {ran:?}");
        assert_eq!(ran[0].0, "b", "{ran:?}");
    }
    // The URL call's caller got the output recorded, and its record its method and path.
    let (status, url_id, body) = url_call.await.unwrap();
    assert_eq!(status, 200, "{body}");
    let record = app.invocation(url_id).await;
    assert_eq!(record["output"], body, "{record}");
    assert_eq!(record["http_method"], "POST", "{record}");
    assert_eq!(record["http_path"], "/from/url", "{record}");
    // Each exec ended on B by itself (the engine says so; its exit code is not to be trusted
    // once the exec's client is gone: engine B reports 127 then, for a plain `docker exec` too;
    // the journal has the run's own, 0 above).
    eventually(
        Duration::from_secs(10),
        "each exec's end seen on B",
        || async {
            ids.iter()
                .all(|id| execs.of(*id).iter().all(|(_, died)| died.is_some()))
                .then_some(())
        },
    )
    .await;
    for id in &ids {
        let ran = execs.of(*id);
        assert_eq!(ran.len(), 1, "{id} was execed once: {ran:?}");
        assert_ne!(
            ran[0].1.as_deref(),
            Some("137"),
            "{id}'s exec was not killed: {ran:?}"
        );
    }
    let lease = all_within_lease(&recorded_after, LEASE_MS);
    b_cleaned_up(&on_b, &id_b).await;
    eprintln!(
        "kill -9 of host B with {} warm runs going (one a URL call): each ended on B before its \
         lease ({lease:?}) ran out, and was recorded from its journal {recorded_after:?} after \
         the kill, none run again (worker A: {worker_a})",
        ids.len()
    );
    finish(app, &on_b, &image).await;
}

/// The dead-letter queue's depth of `app`'s installation.
async fn dead_queue_depth(app: &crate::support::TestApp) -> u32 {
    let connection = granda::broker::connect(&app.settings.amqp_url, "test")
        .await
        .unwrap();
    let topology = granda::broker::Topology::new(&app.settings.amqp_prefix);
    let depth = granda::broker::queue_depth(&connection, &topology.dead_letter_queue())
        .await
        .unwrap();
    let _ = connection.close(200, "".into()).await;
    depth
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_run_collected_from_a_dead_host_is_dead_lettered_or_retried_after_its_backoff() {
    const BACKOFF_MS: u64 = 3_000;
    let (mut app, engine_b, registry, runs) = on_hosts_a_and_b(|s| {
        s.retry_base_ms = BACKOFF_MS;
        s.retry_max_ms = BACKOFF_MS;
    })
    .await;
    let image = push(&app, &registry, "granda-test/sh");
    const LEASE_MS: u64 = 8_000;
    let with = |max_attempts: i32| {
        json!({"queue": "takeover", "timeout_ms": 30_000, "input": "args",
               "max_attempts": max_attempts, "retry_on": ["error"]})
    };
    app.register("dies", &image, with(1)).await;
    app.register("retries", &image, with(2)).await;
    let (worker_b, id_b) = host_b_worker(&app, &engine_b, 2, LEASE_MS);
    let on_b = engine(&engine_b);
    let dies = app.invoke_async("dies", "sleep 1; exit 3").await;
    let retries = app.invoke_async("retries", "sleep 1.2; exit 3").await;
    eventually(Duration::from_secs(60), "host B runs both", || async {
        let rows = running_on(&app, &id_b).await;
        let started = [dies, retries]
            .iter()
            .filter(|id| runs.of(**id).iter().any(|e| e.action == "start"))
            .count();
        (rows.len() == 2 && started == 2).then_some(())
    })
    .await;
    host_a_worker(&mut app, 2).await;
    kill(worker_b);

    // Its policy says dead: recorded dead from B's container, and its message dead-lettered.
    let record = app.wait_final(dies, Duration::from_secs(60)).await;
    assert_eq!(record["status"], "dead", "{record}");
    assert_eq!(record["worker"], id_b, "{record}");
    assert_eq!(record["attempt"], 1, "{record}");
    assert_eq!(record["exit_code"], 3, "{record}");
    // Its policy says retry: attempt 1 recorded from B's container, attempt 2 after the backoff.
    let record = app.wait_final(retries, Duration::from_secs(60)).await;
    assert_eq!(record["status"], "dead", "the retry failed too: {record}");
    assert_eq!(record["attempt"], 2, "{record}");
    let attempt_1: (String, Option<chrono::DateTime<chrono::Utc>>) = sqlx::query_as(
        "SELECT status, finished_at FROM invocation_attempts
         WHERE invocation_id = $1 AND attempt = 1",
    )
    .bind(retries)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(attempt_1.0, "retried", "{attempt_1:?}");
    let collected = attempt_1.1.expect("attempt 1 finished");
    let started_2: chrono::DateTime<chrono::Utc> =
        serde_json::from_value(record["started_at"].clone()).unwrap();
    let waited = (started_2 - collected).to_std().unwrap_or_default();
    // Jitter makes it 80-100 % of the level; a margin for the clocks.
    assert!(
        waited >= Duration::from_millis(BACKOFF_MS * 8 / 10 - 400),
        "attempt 2 started {waited:?} after attempt 1 was collected (backoff {BACKOFF_MS} ms)"
    );
    let ended_on_b = runs
        .of(retries)
        .iter()
        .filter(|e| e.engine == "b" && e.action == "die" && e.exit_code.as_deref() == Some("3"))
        .count();
    assert_eq!(
        ended_on_b,
        1,
        "attempt 1 ran once, on B: {:?}",
        runs.of(retries)
    );
    // Both messages are dead letters: the collected one, and the retry's (a run on A).
    eventually(
        Duration::from_secs(20),
        "both dead runs' messages in the dead letters",
        || async { (dead_queue_depth(&app).await == 2).then_some(()) },
    )
    .await;
    b_cleaned_up(&on_b, &id_b).await;
    eprintln!("a collected retry waited {waited:?} (backoff {BACKOFF_MS} ms)");
    finish(app, &on_b, &image).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_warm_run_still_going_when_its_hosts_lease_ends_is_killed_and_run_again() {
    let (mut app, engine_b, registry, _runs) = on_hosts_a_and_b(|_| {}).await;
    let on_b = engine(&engine_b);
    let execs = ExecLog::watch(&[("a", app.docker.clone()), ("b", on_b.clone())]);
    let image = push(&app, &registry, "granda-test/sh");
    const LEASE_MS: u64 = 6_000;
    const RUN_S: i64 = 14;
    app.register(
        "long-warm",
        &image,
        json!({"queue": "takeover", "mode": "warm", "timeout_ms": 60_000, "input": "args"}),
    )
    .await;
    let (worker_b, id_b) = host_b_worker(&app, &engine_b, 1, LEASE_MS);
    let id = app
        .invoke_async("long-warm", format!("sleep {RUN_S}; echo done"))
        .await;
    eventually(Duration::from_secs(60), "host B execs the call", || async {
        (execs.of(id).len() == 1).then_some(())
    })
    .await;
    host_a_worker(&mut app, 1).await;
    let (killed, _) = kill(worker_b);

    // B's exec is killed with its container once the lease ran out, long before its end.
    let died = eventually(Duration::from_secs(30), "B's exec ended", || async {
        execs
            .timed(id)
            .into_iter()
            .find(|(engine, _)| *engine == "b")
            .and_then(|(_, died)| died)
    })
    .await;
    let after = Duration::from_nanos((died.1 - killed).max(0) as u64);
    assert!(
        after <= Duration::from_millis(LEASE_MS) + Duration::from_secs(3),
        "B's exec ended {after:?} after the kill: {died:?}"
    );
    // It runs again on A, to its end, as attempt 2.
    let record = app.wait_final(id, Duration::from_secs(60)).await;
    assert_eq!(record["status"], "succeeded", "{record}");
    assert_eq!(record["attempt"], 2, "{record}");
    assert_eq!(record["output"], "done\n", "{record}");
    assert_ne!(record["worker"], id_b, "{record}");
    let ran = execs.of(id);
    assert_eq!(ran.len(), 2, "one exec on B, one on A: {ran:?}");
    assert_eq!(ran[1].0, "a", "{ran:?}");
    b_cleaned_up(&on_b, &id_b).await;
    eprintln!("a warm run still going on dead host B: its exec ended {after:?} after the kill");
    finish(app, &on_b, &image).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hot_calls_that_end_after_their_host_died_are_recorded_from_their_journal_not_run_again() {
    let (mut app, engine_b, registry, _runs) = on_hosts_a_and_b(|_| {}).await;
    let on_b = engine(&engine_b);
    let image = push(&app, &registry, "granda-test/hot");
    const LEASE_MS: u64 = 8_000;
    app.register(
        "short-hot",
        &image,
        json!({"queue": "takeover", "mode": "hot", "timeout_ms": 30_000}),
    )
    .await;
    // Each call sleeps 2-3 s in the function's own process, then answers with its id, the
    // process's count of requests served and its container's hostname.
    let nap = |i: usize| format!("nap:{}", 2_000 + i * 200);
    let (worker_b, id_b) = host_b_worker(&app, &engine_b, 8, LEASE_MS);
    const CALLS: usize = 4;
    for i in 0..CALLS {
        app.invoke_async("short-hot", nap(i)).await;
    }
    // And a sync call, whose caller waits through B's death.
    let sync_call = waiting_call(&app, "/v1/functions/short-hot/invoke", nap(CALLS));
    // Every call is running on B (its hot containers started and called) before B dies.
    let ids = eventually(
        Duration::from_secs(60),
        "host B runs every call",
        || async {
            let rows = running_on(&app, &id_b).await;
            let napping = napping(&on_b, &id_b).await;
            let reached = rows.iter().filter(|id| napping.contains(id)).count();
            (rows.len() == CALLS + 1 && reached == CALLS + 1).then_some(rows)
        },
    )
    .await;
    let worker_a = host_a_worker(&mut app, 4).await;
    let (_, killed_at) = kill(worker_b);

    let mut recorded_after = vec![];
    let mut served: HashMap<String, Vec<u64>> = HashMap::new();
    for id in &ids {
        let record = app.wait_final(*id, Duration::from_secs(60)).await;
        recorded_after.push(killed_at.elapsed());
        assert_eq!(record["status"], "succeeded", "{record}");
        assert_eq!(record["worker"], id_b, "recorded as B's run: {record}");
        assert_eq!(record["attempt"], 1, "{record}");
        assert_eq!(record["mode"], "hot", "{record}");
        // The call's own answer, from the process on B.
        let output = record["output"].as_str().unwrap();
        let fields: Vec<&str> = output.split(' ').collect();
        assert_eq!(fields.len(), 4, "{record}");
        assert_eq!(fields[..2], ["ran", id.to_string().as_str()], "{record}");
        let count: u64 = fields[2].strip_prefix("served=").unwrap().parse().unwrap();
        served.entry(fields[3].to_string()).or_default().push(count);
        let ms = record["duration_ms"].as_i64().unwrap();
        assert!(
            (2_000..10_000).contains(&ms),
            "timed by its process: {record}"
        );
    }
    // Each process served exactly the calls recorded from it, once each: nothing ran twice there.
    for (host, mut counts) in served.clone() {
        counts.sort();
        let once: Vec<u64> = (1..=counts.len() as u64).collect();
        assert_eq!(
            counts, once,
            "the process in {host} on B served each of its calls once"
        );
    }
    // The sync call's caller got the output recorded.
    let (status, sync_id, body) = sync_call.await.unwrap();
    assert_eq!(status, 200, "{body}");
    let record = app.invocation(sync_id).await;
    assert_eq!(record["output"], body, "{record}");
    // And no call ran again on A: it never had a hot container (its pool would keep it).
    assert!(
        leftovers(&app.docker, &worker_a).await.is_empty(),
        "worker A started no container"
    );
    let lease = all_within_lease(&recorded_after, LEASE_MS);
    b_cleaned_up(&on_b, &id_b).await;
    eprintln!(
        "kill -9 of host B with {} hot calls going (one sync): each answered on B before its \
         lease ({lease:?}) ran out, and was recorded from its journal {recorded_after:?} after \
         the kill, none run again (worker A: {worker_a}; processes: {served:?})",
        ids.len()
    );
    finish(app, &on_b, &image).await;
}

/// The calls granda-test/hot's processes in `worker`'s hot containers on `docker` are in the
/// middle of (`nap:<ms>` marks each in its journal directory while it sleeps), read through the
/// engine's archive API.
async fn napping(docker: &bollard::Docker, worker: &str) -> Vec<uuid::Uuid> {
    use bollard::query_parameters::DownloadFromContainerOptionsBuilder;
    let mut ids = vec![];
    for container in leftovers(docker, worker).await {
        let options = DownloadFromContainerOptionsBuilder::new()
            .path("/granda/journal")
            .build();
        let mut archive = docker.download_from_container(&container, Some(options));
        let mut tar = vec![];
        while let Some(Ok(chunk)) = archive.next().await {
            tar.extend_from_slice(&chunk);
        }
        let mut archive = tar::Archive::new(tar.as_slice());
        let Ok(entries) = archive.entries() else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry
                .path()
                .ok()
                .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()));
            if let Some(id) = name
                .as_deref()
                .and_then(|n| n.strip_prefix("napping-"))
                .and_then(|id| uuid::Uuid::parse_str(id).ok())
            {
                ids.push(id);
            }
        }
    }
    ids
}

/// The times (ns since the epoch) at which `docker`'s hot pool containers died, followed live
/// from now.
fn hot_deaths(docker: &bollard::Docker) -> (Arc<Mutex<Vec<i64>>>, tokio::task::JoinHandle<()>) {
    let deaths: Arc<Mutex<Vec<i64>>> = Arc::default();
    let (docker, seen) = (docker.clone(), deaths.clone());
    let since = chrono::Utc::now().timestamp() - 1;
    let task = tokio::spawn(async move {
        let options = bollard::query_parameters::EventsOptions {
            since: Some(since.to_string()),
            until: None,
            filters: Some(HashMap::from([
                ("type".to_string(), vec!["container".to_string()]),
                ("event".to_string(), vec!["die".to_string()]),
                (
                    "label".to_string(),
                    vec![format!("{}=hot", granda::docker::LABEL_POOL)],
                ),
            ])),
        };
        let mut stream = docker.events(Some(options));
        while let Some(Ok(event)) = stream.next().await {
            if let Some(at) = event.time_nano {
                seen.lock().unwrap().push(at);
            }
        }
    });
    (deaths, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hot_call_still_going_when_its_hosts_lease_ends_is_stopped_before_it_runs_again() {
    let (mut app, engine_b, registry, _runs) = on_hosts_a_and_b(|_| {}).await;
    let on_b = engine(&engine_b);
    let image = push(&app, &registry, "granda-test/hot");
    const LEASE_MS: u64 = 6_000;
    app.register(
        "long-hot",
        &image,
        json!({"queue": "takeover", "mode": "hot", "timeout_ms": 60_000}),
    )
    .await;
    let (worker_b, id_b) = host_b_worker(&app, &engine_b, 1, LEASE_MS);
    // A call that naps 15 s: far longer than the lease.
    let id = app.invoke_async("long-hot", "nap:15000").await;
    eventually(
        Duration::from_secs(60),
        "host B's process naps on the call",
        || async { napping(&on_b, &id_b).await.contains(&id).then_some(()) },
    )
    .await;
    let (deaths, watching) = hot_deaths(&on_b);
    host_a_worker(&mut app, 1).await;
    let (killed, _) = kill(worker_b);

    // It runs again on A, to its end, as attempt 2: B's process never answered it.
    let record = app.wait_final(id, Duration::from_secs(90)).await;
    assert_eq!(record["status"], "succeeded", "{record}");
    assert_eq!(record["attempt"], 2, "{record}");
    assert_ne!(record["worker"], id_b, "{record}");
    let output = record["output"].as_str().unwrap();
    assert!(
        output.starts_with(&format!("ran {id} served=1 ")),
        "{record}"
    );
    // B's process was stopped before A's run began, and within the lease and a bound.
    let started = chrono::DateTime::parse_from_rfc3339(record["started_at"].as_str().unwrap())
        .unwrap()
        .timestamp_nanos_opt()
        .unwrap();
    let died = eventually(
        Duration::from_secs(10),
        "B's hot container died",
        || async { deaths.lock().unwrap().iter().min().copied() },
    )
    .await;
    watching.abort();
    assert!(
        died <= started,
        "B's process died {} ms after A's run began",
        (died - started) / 1_000_000
    );
    let after = Duration::from_nanos((died - killed).max(0) as u64);
    assert!(
        after <= Duration::from_millis(LEASE_MS) + Duration::from_secs(4),
        "B's process died {after:?} after the kill"
    );
    eprintln!(
        "a hot call still going on dead host B: its process was stopped {after:?} after the kill, before the call ran again on A"
    );
    finish(app, &on_b, &image).await;
}

/// Worker B: a `granda worker` process on engine `engine_b` serving `takeover` with
/// `concurrency` slots and a lease of `lease_ms`; and its id.
fn host_b_worker(
    app: &crate::support::TestApp,
    engine_b: &str,
    concurrency: usize,
    lease_ms: u64,
) -> (std::process::Child, String) {
    let id_b = format!("{}-b", app.worker_id());
    let lease = lease_ms.to_string();
    let worker = worker_process_with(
        app,
        &id_b,
        engine_b,
        "takeover",
        concurrency,
        &[("GRANDA_WORKER_LEASE_MS", lease.as_str())],
    );
    (worker, id_b)
}

/// A caller that POSTs `body` to `path` and waits for the answer: its status, the invocation's
/// id and the body.
fn waiting_call(
    app: &crate::support::TestApp,
    path: &str,
    body: String,
) -> tokio::task::JoinHandle<(u16, uuid::Uuid, String)> {
    let (client, url) = (app.client.clone(), app.url(path));
    tokio::spawn(async move {
        let r = client.post(url).body(body).send().await.unwrap();
        let status = r.status().as_u16();
        let id = crate::support::id_of(&r);
        (status, id, r.text().await.unwrap())
    })
}

/// The invocations `running` on `worker` now.
async fn running_on(app: &crate::support::TestApp, worker: &str) -> Vec<uuid::Uuid> {
    let rows: Vec<(uuid::Uuid,)> =
        sqlx::query_as("SELECT id FROM invocations WHERE status = 'running' AND worker = $1")
            .bind(worker)
            .fetch_all(&app.pool)
            .await
            .unwrap();
    rows.into_iter().map(|(id,)| id).collect()
}

/// Worker A, beside the app: serving `takeover` with `concurrency` slots, fair sharing off;
/// its id.
async fn host_a_worker(app: &mut crate::support::TestApp, concurrency: usize) -> String {
    app.add_worker(|s| {
        s.queues = vec!["takeover".into()];
        s.min_concurrency = concurrency;
        s.max_concurrency = Some(concurrency);
        s.fair_share = false;
    })
    .await
}

/// `kill -9`s worker B and reaps it: when (ns since the epoch, and as an instant).
fn kill(mut worker_b: std::process::Child) -> (i64, Instant) {
    worker_b.kill().unwrap();
    let (killed, killed_at) = (now_ns(), Instant::now());
    worker_b.wait().unwrap();
    (killed, killed_at)
}

/// Asserts each run was recorded within `lease_ms` (and a margin) of B's death; the lease.
fn all_within_lease(recorded_after: &[Duration], lease_ms: u64) -> Duration {
    let lease = Duration::from_millis(lease_ms);
    let slowest = *recorded_after.iter().max().unwrap();
    assert!(
        slowest <= lease + Duration::from_secs(4),
        "recorded {slowest:?} after the kill (lease {lease:?})"
    );
    lease
}

/// Waits until no container of worker `id_b` is left on engine B.
async fn b_cleaned_up(on_b: &bollard::Docker, id_b: &str) {
    eventually(
        Duration::from_secs(20),
        "B's containers removed",
        || async { leftovers(on_b, id_b).await.is_empty().then_some(()) },
    )
    .await;
}

/// Removes the test's image from both engines and stops the app.
async fn finish(app: crate::support::TestApp, on_b: &bollard::Docker, image: &str) {
    for docker in [&app.docker, on_b] {
        remove_image(docker, image).await;
    }
    app.shutdown().await;
}
