//! A standalone `granda worker`'s own endpoints on `GRANDA_WORKER_LISTEN` (`/healthz`, `/readyz`,
//! `/metrics`) and the health its heartbeat carries, while its engine or its broker goes away.
//! The worker is the real binary; its engine is a private `dockerd` ([`TestDocker`]) and its
//! broker a private RabbitMQ node ([`TestRabbit`]) where the test stops them, so the shared
//! services are never touched.

use std::time::Duration;

use serde_json::{Value, json};
use uuid::Uuid;

use crate::faults::infra::{GrandaProcess, TestDocker, TestRabbit, free_port};
use crate::support::{TestApp, eventually, postgres_base, spawn_app_with};

/// An ingress (and a database) whose in-process worker serves another queue: the standalone
/// worker alone runs `default`.
async fn ingress_only() -> TestApp {
    spawn_app_with(|s| s.queues = vec!["not-this-one".into()]).await
}

/// A `granda worker` on `app`'s database and queues, on engine `docker_host` and broker
/// `amqp_url`, serving its endpoints on a free port. Returns it and the endpoints' base URL.
fn standalone_worker(
    app: &TestApp,
    id: &str,
    docker_host: &str,
    amqp_url: &str,
) -> (GrandaProcess, String) {
    standalone_worker_with(app, id, docker_host, amqp_url, &[])
}

/// [`standalone_worker`] with more settings.
fn standalone_worker_with(
    app: &TestApp,
    id: &str,
    docker_host: &str,
    amqp_url: &str,
    more: &[(&str, String)],
) -> (GrandaProcess, String) {
    let db = app.settings.database_url.rsplit('/').next().unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let mut env = vec![
        ("GRANDA_DATABASE_URL", format!("{}/{db}", postgres_base())),
        ("GRANDA_AMQP_URL", amqp_url.to_string()),
        ("GRANDA_AMQP_PREFIX", app.settings.amqp_prefix.clone()),
        ("GRANDA_WORKER_ID", id.to_string()),
        ("GRANDA_WORKER_LISTEN", listen.clone()),
        ("GRANDA_SCHEDULER_INTERVAL_MS", "100".to_string()),
        ("DOCKER_HOST", docker_host.to_string()),
    ];
    env.extend(more.iter().cloned());
    let worker = GrandaProcess::spawn(&["worker"], &env);
    (worker, format!("http://{listen}"))
}

/// `SIGTERM`s the worker, which must exit with success within 30 s.
async fn stops_cleanly(worker: GrandaProcess) {
    worker.sigterm();
    assert!(
        worker
            .wait_exit(Duration::from_secs(30))
            .await
            .is_some_and(|s| s.success()),
        "{}",
        worker.log()
    );
}

/// Stops (`SIGSTOP`) a process until dropped (`SIGCONT`): an engine that hangs, its containers
/// running on (they belong to containerd's shims, not to `dockerd`).
struct Frozen(u32);

impl Frozen {
    fn freeze(pid: u32) -> Frozen {
        signal(pid, "-STOP");
        Frozen(pid)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        signal(self.0, "-CONT");
    }
}

fn signal(pid: u32, which: &str) {
    let status = std::process::Command::new("kill")
        .args([which, &pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill {which} {pid}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_that_hangs_pauses_runs_that_need_it_never_hot_calls_to_running_processes() {
    let app = ingress_only().await;
    app.register("hot-echo", "granda-test/hot", json!({"mode": "hot"}))
        .await;
    app.register("echo", "granda-test/echo", json!({})).await;
    let engine = TestDocker::start().await;
    let id = format!("engine-away-{}", Uuid::new_v4().simple());
    // A beat a second: the engine counts as away after two missed pings (2 to 3 s).
    let (worker, base) = standalone_worker_with(
        &app,
        &id,
        &engine.host(),
        &app.settings.amqp_url,
        &[("GRANDA_WORKER_LEASE_MS", "3000".to_string())],
    );
    worker.wait_healthy(&base, Duration::from_secs(30)).await;
    wait_health(&app, &id, &base, true, Duration::from_secs(30)).await;
    // The hot process starts with the first call.
    let first = app.invoke("hot-echo", "first").await;
    assert_eq!(first.status(), 200, "{}", worker.log());
    assert_eq!(first.text().await.unwrap(), "first");

    let frozen = Frozen::freeze(engine.pid().expect("the engine runs"));
    let (health, _) = wait_health(&app, &id, &base, false, Duration::from_secs(30)).await;
    assert!(
        health.as_deref().unwrap_or("").contains("docker engine"),
        "{health:?}"
    );
    // Hot calls to the running process go on, each answered well within its wait.
    for i in 0..5 {
        let body = format!("while away {i}");
        let answered = tokio::time::timeout(
            Duration::from_secs(10),
            app.invoke("hot-echo", body.clone()),
        )
        .await
        .expect("a hot call is answered while the engine hangs");
        assert_eq!(answered.status(), 200, "{}", worker.log());
        assert_eq!(answered.text().await.unwrap(), body);
    }
    // A run that needs the engine waits, queued: not failed, not run.
    let cold = app.invoke_async("echo", "after the engine").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let waiting = app.invocation(cold).await;
    assert_eq!(waiting["status"], "queued", "{waiting}");
    assert_eq!(waiting["attempt"], 0, "{waiting}");

    // The engine answers again: the parked run runs, once.
    drop(frozen);
    wait_health(&app, &id, &base, true, Duration::from_secs(30)).await;
    let done = app.wait_final(cold, Duration::from_secs(60)).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["attempt"], 1, "{done}");
    let hot = app.invocations_of("hot-echo").await;
    assert_eq!(hot.len(), 6);
    assert!(
        hot.iter()
            .all(|r| r["status"] == "succeeded" && r["attempt"] == 1),
        "{hot:?}"
    );
    stops_cleanly(worker).await;
}

/// `GET url`: the status and the body as JSON (`null` when it is not JSON).
async fn get(url: &str) -> (u16, Value) {
    let response = reqwest::get(url)
        .await
        .expect("the worker's endpoints answer");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// The worker's heartbeat row: `healthy` and what is wrong.
async fn heartbeat(app: &TestApp, id: &str) -> Option<(bool, Option<String>)> {
    sqlx::query_as("SELECT healthy, health FROM workers WHERE id = $1")
        .bind(id)
        .fetch_optional(&app.pool)
        .await
        .unwrap()
}

/// Waits until the heartbeat row says `healthy` and `/readyz` answers `ready` (200) or 503;
/// returns the last row and `/readyz` body.
async fn wait_health(
    app: &TestApp,
    id: &str,
    base: &str,
    healthy: bool,
    within: Duration,
) -> (Option<String>, Value) {
    let what = format!("worker {id} healthy={healthy} in its heartbeat and /readyz");
    eventually(within, &what, || async {
        let (row_healthy, health) = heartbeat(app, id).await?;
        let (status, body) = get(&format!("{base}/readyz")).await;
        let ready_status = if healthy { 200 } else { 503 };
        (row_healthy == healthy && status == ready_status).then_some((health, body))
    })
    .await
}

/// The value of the series `series` (name and labels, exactly) in Prometheus text.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standalone_worker_serves_health_readiness_and_its_own_metrics() {
    let app = ingress_only().await;
    app.register("echo", "granda-test/echo", json!({})).await;
    let engine = TestDocker::start().await;
    let id = format!("endpoints-{}", Uuid::new_v4().simple());
    let (worker, base) = standalone_worker(&app, &id, &engine.host(), &app.settings.amqp_url);
    worker.wait_healthy(&base, Duration::from_secs(30)).await;

    let (status, body) = get(&format!("{base}/healthz")).await;
    assert_eq!((status, &body), (200, &json!({"status": "ok"})));
    let (_, ready) = wait_health(&app, &id, &base, true, Duration::from_secs(30)).await;
    assert_eq!(ready["ready"], true, "{ready}");
    assert_eq!(ready["worker"], id.as_str(), "{ready}");
    assert_eq!(
        ready["checks"],
        json!({"postgres": "ok", "rabbitmq": "ok", "docker": "ok", "quorum": "ok"})
    );
    assert_eq!(ready["degraded"], false, "{ready}");
    assert_eq!(ready["reasons"], json!([]), "{ready}");

    // Runs on this worker show in its own series.
    for i in 0..3 {
        let response = app.invoke("echo", format!("hello {i}")).await;
        let status = response.status();
        let text = response.text().await.unwrap();
        assert_eq!((status.as_u16(), text), (200, format!("hello {i}")));
    }
    // One rule for /metrics on the ingress and a worker (GRANDA_METRICS_AUTH=key): an admin key.
    let anonymous = reqwest::get(format!("{base}/metrics")).await.unwrap();
    assert_eq!(anonymous.status(), 401);
    let metrics = crate::support::client_with_key(crate::support::ADMIN_KEY)
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(metrics.status(), 200);
    assert!(
        metrics.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain"),
    );
    let text = metrics.text().await.unwrap();
    assert_eq!(
        sample(
            &text,
            r#"granda_invocations_total{function="echo",status="succeeded"}"#
        ),
        Some(3.0),
        "{text}"
    );
    let target = sample(
        &text,
        &format!(r#"granda_worker_concurrency_target{{worker="{id}"}}"#),
    );
    assert!(target.is_some_and(|t| t >= 1.0), "{text}");
    assert!(
        sample(&text, r#"granda_cold_starts_total{function="echo"}"#).is_some_and(|n| n >= 1.0),
        "{text}"
    );

    // Its engine stops: not ready (naming the engine), unhealthy in its heartbeat, still alive.
    engine.stop().await;
    let (health, ready) = wait_health(&app, &id, &base, false, Duration::from_secs(20)).await;
    assert_eq!(ready["checks"]["docker"], "unavailable", "{ready}");
    assert_eq!(ready["checks"]["rabbitmq"], "ok", "{ready}");
    assert!(
        health.as_deref().unwrap().contains("docker engine"),
        "{health:?}"
    );
    assert_eq!(get(&format!("{base}/healthz")).await.0, 200);

    // Back: ready and healthy again, and it runs again.
    engine.start_again().await;
    wait_health(&app, &id, &base, true, Duration::from_secs(30)).await;
    let response = app.invoke("echo", "again").await;
    assert_eq!(response.status(), 200);
    stops_cleanly(worker).await;
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_cut_off_from_its_broker_says_so_in_its_heartbeat_and_readyz() {
    let app = ingress_only().await;
    let broker = TestRabbit::start().await;
    let id = format!("cut-off-{}", Uuid::new_v4().simple());
    let docker_host = app
        .settings
        .docker_host
        .clone()
        .unwrap_or_else(|| "unix:///var/run/docker.sock".into());
    let (worker, base) = standalone_worker(&app, &id, &docker_host, &broker.url());
    worker.wait_healthy(&base, Duration::from_secs(30)).await;
    let (health, _) = wait_health(&app, &id, &base, true, Duration::from_secs(30)).await;
    assert_eq!(health, None);

    // The broker goes: the heartbeat says the worker is unhealthy and why; /readyz says 503.
    broker.stop_app().await;
    let (health, ready) = wait_health(&app, &id, &base, false, Duration::from_secs(20)).await;
    let health = health.expect("what is wrong");
    assert!(health.contains("RabbitMQ"), "{health}");
    assert_eq!(ready["checks"]["rabbitmq"], "unavailable", "{ready}");
    assert_eq!(ready["checks"]["docker"], "ok", "{ready}");
    assert_eq!(
        get(&format!("{base}/healthz")).await.0,
        200,
        "alive all along"
    );

    // The broker is back: the worker reconnects and is healthy again.
    broker.start_app().await;
    let (health, _) = wait_health(&app, &id, &base, true, Duration::from_secs(30)).await;
    assert_eq!(health, None);
    worker.sigterm();
    assert!(worker.wait_exit(Duration::from_secs(30)).await.is_some());
    app.shutdown().await;
}

/// The address a worker's log says its endpoints listen on.
fn listening_on(log: &str) -> Option<String> {
    let line = log
        .lines()
        .find(|l| l.contains("worker endpoints listening"))?;
    let at = line.find("127.0.0.1:")?;
    let port: String = line[at + 10..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    Some(format!("127.0.0.1:{port}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_on_one_host_both_start_with_the_default_listen_address() {
    let app = ingress_only().await;
    let db = app.settings.database_url.rsplit('/').next().unwrap();
    let docker_host = app
        .settings
        .docker_host
        .clone()
        .unwrap_or_else(|| "unix:///var/run/docker.sock".into());
    // No GRANDA_WORKER_LISTEN: the default.
    let spawn = |id: &str, listen: Option<&str>| {
        let mut env = vec![
            ("GRANDA_DATABASE_URL", format!("{}/{db}", postgres_base())),
            ("GRANDA_AMQP_URL", app.settings.amqp_url.clone()),
            ("GRANDA_AMQP_PREFIX", app.settings.amqp_prefix.clone()),
            ("GRANDA_WORKER_ID", id.to_string()),
            ("DOCKER_HOST", docker_host.clone()),
        ];
        if let Some(listen) = listen {
            env.push(("GRANDA_WORKER_LISTEN", listen.to_string()));
        }
        GrandaProcess::spawn(&["worker"], &env)
    };
    let suffix = Uuid::new_v4().simple().to_string();
    let first = spawn(&format!("one-{suffix}"), None);
    let second = spawn(&format!("two-{suffix}"), None);
    let mut addresses = vec![];
    for worker in [&first, &second] {
        let addr = eventually(
            Duration::from_secs(30),
            "the worker says where it listens",
            || async { listening_on(&worker.log()) },
        )
        .await;
        worker
            .wait_healthy(&format!("http://{addr}"), Duration::from_secs(30))
            .await;
        addresses.push(addr);
    }
    assert_ne!(addresses[0], addresses[1]);
    for addr in &addresses {
        let port: u16 = addr.rsplit(':').next().unwrap().parse().unwrap();
        assert!((9090..=9109).contains(&port), "{addr}");
    }

    // An address set explicitly and taken: the worker exits, naming the setting to change.
    let third = spawn(&format!("three-{suffix}"), Some(&addresses[0]));
    let status = third
        .wait_exit(Duration::from_secs(30))
        .await
        .expect("exits");
    assert!(!status.success());
    let log = third.log();
    assert!(
        log.contains("GRANDA_WORKER_LISTEN") && log.contains("in use") && log.contains("auto"),
        "{log}"
    );
    for worker in [&first, &second] {
        worker.sigterm();
        assert!(worker.wait_exit(Duration::from_secs(30)).await.is_some());
    }
    app.shutdown().await;
}
