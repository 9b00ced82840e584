//! Hot functions: the function's own process stays up and serves each invocation as an HTTP
//! request over a unix socket (`granda-test/hot` is `hot/examples/echo.rs`).

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use uuid::Uuid;

use crate::support::{TestApp, id_of, spawn_app};

async fn hot_containers(app: &TestApp) -> Vec<String> {
    app.containers_labelled(&["granda.pool=hot"]).await
}

async fn wait_hot_containers(app: &TestApp, n: usize, within: Duration) -> Vec<String> {
    let start = Instant::now();
    loop {
        let now = hot_containers(app).await;
        if now.len() == n {
            return now;
        }
        assert!(
            start.elapsed() < within,
            "{} hot containers, not {n}",
            now.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Invokes `name` with `body`; returns the HTTP status, the body and the invocation's record.
async fn call(app: &TestApp, name: &str, body: &str) -> (u16, String, Value) {
    let response = app.invoke(name, body.to_string()).await;
    let status = response.status().as_u16();
    let id = id_of(&response);
    let text = response.text().await.unwrap();
    (status, text, app.invocation(id).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_hot_process_serves_consecutive_calls_with_the_invocation_in_headers() {
    let app = spawn_app().await;
    app.register("hot", "granda-test/hot", json!({"mode": "hot"}))
        .await;

    let mut counts = Vec::new();
    let mut cold = Vec::new();
    for _ in 0..3 {
        let (status, text, record) = call(&app, "hot", "count").await;
        assert_eq!(status, 200, "{text}");
        assert_eq!(record["status"], "succeeded");
        assert_eq!(
            record["output"],
            text.as_str(),
            "the record holds the output"
        );
        counts.push(text);
        cold.push(record["cold"].as_bool().unwrap());
    }
    assert_eq!(counts, ["1", "2", "3"], "one process served all three");
    assert_eq!(cold, [true, false, false]);
    assert_eq!(
        wait_hot_containers(&app, 1, Duration::from_secs(5))
            .await
            .len(),
        1
    );

    let (status, text, _) = call(&app, "hot", "hello hot").await;
    assert_eq!((status, text.as_str()), (200, "hello hot"));

    // The invocation travels in headers.
    let response = app.invoke("hot", "headers").await;
    let id = id_of(&response);
    let headers = response.text().await.unwrap().to_lowercase() + "\n";
    assert!(
        headers.contains(&format!("granda-invocation-id: {id}\n")),
        "{headers}"
    );
    assert!(headers.contains("granda-function: hot\n"), "{headers}");
    assert!(headers.contains("granda-trigger: sync\n"), "{headers}");
    assert!(headers.contains("granda-attempt: 1\n"), "{headers}");
    let deadline: i64 = headers
        .lines()
        .find_map(|l| l.strip_prefix("granda-deadline-ms: "))
        .expect("a deadline header")
        .parse()
        .unwrap();
    let now = chrono::Utc::now().timestamp_millis();
    assert!(
        deadline > now && deadline <= now + 31_000,
        "{deadline} vs {now}"
    );

    // The process sees GRANDA_SOCKET and none of an invocation's own variables.
    let (_, env, _) = call(&app, "hot", "env").await;
    assert!(
        env.contains("GRANDA_SOCKET=/run/granda/granda.sock"),
        "{env}"
    );
    assert!(!env.contains("GRANDA_INVOCATION_ID"), "{env}");

    // Async calls go through the same process and are recorded.
    let id = app.invoke_async("hot", "count".to_string()).await;
    let record = app.wait_final(id, Duration::from_secs(10)).await;
    assert_eq!(record["status"], "succeeded");
    // The same process: its 7th request (3 counts, hello, headers, env, this one).
    assert_eq!(record["output"], "7");
    assert_eq!(record["cold"], false);
    assert_eq!(record["trigger"], "async");

    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_crashed_and_hung_hot_processes_are_replaced() {
    let app = spawn_app().await;
    app.register(
        "hot",
        "granda-test/hot",
        json!({"mode": "hot", "timeout_ms": 1_000}),
    )
    .await;
    let (status, _, _) = call(&app, "hot", "count").await;
    assert_eq!(status, 200);
    let first = wait_hot_containers(&app, 1, Duration::from_secs(5)).await;

    // A failure the function answers: 502 with its message, the container discarded.
    let response = app.invoke("hot", "fail").await;
    assert_eq!(response.status(), 502);
    assert_eq!(response.headers()["x-granda-exit-code"], "1");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "function_failed");
    let detail = body["error"]["detail"].as_str().unwrap();
    assert!(
        detail.contains("HTTP 500") && detail.contains("asked to fail"),
        "{detail}"
    );
    wait_hot_containers(&app, 0, Duration::from_secs(10)).await;

    // A fresh process: its count starts again.
    let (status, text, record) = call(&app, "hot", "count").await;
    assert_eq!((status, text.as_str()), (200, "1"));
    assert_eq!(record["cold"], true);
    let second = wait_hot_containers(&app, 1, Duration::from_secs(5)).await;
    assert_ne!(first, second);

    // The process dies mid-call: its exit code is the answer.
    let (status, text, record) = call(&app, "hot", "crash").await;
    assert_eq!(status, 502, "{text}");
    assert_eq!(record["status"], "failed");
    assert_eq!(record["exit_code"], 3);
    wait_hot_containers(&app, 0, Duration::from_secs(10)).await;

    // It hangs: killed at its timeout, and the next call gets a new process.
    let start = Instant::now();
    let (status, _, record) = call(&app, "hot", "hang").await;
    assert_eq!(status, 504);
    assert_eq!(record["status"], "timed_out");
    assert!(
        start.elapsed() < Duration::from_secs(8),
        "{:?}",
        start.elapsed()
    );
    wait_hot_containers(&app, 0, Duration::from_secs(10)).await;
    let (status, text, _) = call(&app, "hot", "count").await;
    assert_eq!((status, text.as_str()), (200, "1"));

    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_function_that_does_not_listen_fails_with_a_reason() {
    let app = spawn_app().await;
    // busybox `cat` with no stdin exits at once: it never listens.
    app.register("notserver", "granda-test/echo", json!({"mode": "hot"}))
        .await;
    let start = Instant::now();
    let (status, text, record) = call(&app, "notserver", "x").await;
    assert_eq!(status, 502, "{text}");
    assert_eq!(record["status"], "failed");
    let error = record["error"].as_str().unwrap();
    assert!(
        error.contains("before it listened on GRANDA_SOCKET"),
        "{error}"
    );
    assert!(start.elapsed() < Duration::from_secs(5));
    app.assert_no_containers_left(Duration::from_secs(10)).await;
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_hot_processes_expire_and_shutdown_removes_the_rest() {
    let app = spawn_app().await;
    app.register(
        "brief",
        "granda-test/hot",
        // Long enough to outlive the other function's cold start on a busy host, so both are
        // seen at once; short enough to expire within the wait below.
        json!({"mode": "hot", "idle_timeout_ms": 2000}),
    )
    .await;
    app.register(
        "kept",
        "granda-test/hot",
        json!({"mode": "hot", "idle_timeout_ms": 300, "min_warm": 1}),
    )
    .await;
    assert_eq!(call(&app, "brief", "x").await.0, 200);
    assert_eq!(call(&app, "kept", "x").await.0, 200);
    wait_hot_containers(&app, 2, Duration::from_secs(5)).await;
    // `brief` expires; `kept` stays for min_warm.
    wait_hot_containers(&app, 1, Duration::from_secs(15)).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let left = hot_containers(&app).await;
    assert_eq!(left.len(), 1);
    let (status, text, record) = call(&app, "kept", "count").await;
    assert_eq!(
        (status, text.as_str(), &record["cold"]),
        (200, "2", &json!(false))
    );

    let docker = app.docker.clone();
    let worker = app.worker_id();
    let sockets = app.socket_root().await;
    app.shutdown().await;
    let label = format!("granda.worker={worker}");
    let filters = std::collections::HashMap::from([("label", vec![label.as_str()])]);
    let options = bollard::query_parameters::ListContainersOptionsBuilder::new()
        .all(true)
        .filters(&filters)
        .build();
    let remaining = docker.list_containers(Some(options)).await.unwrap();
    assert!(remaining.is_empty(), "{remaining:?}");
    // Nor its socket directories.
    assert!(!sockets.exists(), "{} is left", sockets.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_reach_one_hot_process_with_their_topic_as_a_header() {
    let app = spawn_app().await;
    app.register("hot", "granda-test/hot", json!({"mode": "hot"}))
        .await;
    let r = app
        .post_json(
            "/v1/functions/hot/subscriptions",
            &json!({"pattern": "orders.*"}),
        )
        .await;
    assert_eq!(r.status(), 201);
    let mut outputs = Vec::new();
    for topic in ["orders.created", "orders.paid"] {
        let r = app
            .post_with(
                &format!("/v1/events/{topic}"),
                &[("content-type", "text/plain")],
                "headers".to_string(),
            )
            .await;
        assert_eq!(r.status(), 202);
        let answer: Value = r.json().await.unwrap();
        let id = answer["invocations"][0]["id"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        let record = app.wait_final(id, Duration::from_secs(10)).await;
        assert_eq!(record["status"], "succeeded", "{record}");
        assert_eq!(record["trigger"], "event");
        outputs.push(record["output"].as_str().unwrap().to_lowercase());
    }
    assert!(
        outputs[0].contains("granda-event-topic: orders.created"),
        "{}",
        outputs[0]
    );
    assert!(
        outputs[1].contains("granda-event-topic: orders.paid"),
        "{}",
        outputs[1]
    );
    assert!(
        outputs[1].contains("granda-trigger: event"),
        "{}",
        outputs[1]
    );
    // Per-invocation variables don't make containers differ: one process served both.
    assert_eq!(hot_containers(&app).await.len(), 1);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_containers_of_a_worker_that_is_gone_are_reaped_by_the_installation() {
    use std::collections::HashMap;
    let app = spawn_app().await;
    app.register("hot", "granda-test/hot", json!({"mode": "hot"}))
        .await;
    assert_eq!(call(&app, "hot", "x").await.0, 200);
    let live = wait_hot_containers(&app, 1, Duration::from_secs(5)).await;
    let installation = granda::docker::installation(&app.pool).await.unwrap();

    // A pool container of a worker that never beat here, one of another installation, and one
    // of ours started by a worker that beats.
    let start = |worker: String, installation: String| {
        let docker = app.docker.clone();
        async move {
            let labels = HashMap::from([
                ("granda.worker".to_string(), worker),
                ("granda.pool".to_string(), "hot".to_string()),
                ("granda.installation".to_string(), installation),
            ]);
            let config = bollard::models::ContainerCreateBody {
                image: Some("granda-test/sleep".into()),
                env: Some(vec!["SLEEP_SECONDS=60".into()]),
                labels: Some(labels),
                network_disabled: Some(true),
                host_config: Some(bollard::models::HostConfig {
                    network_mode: Some("none".into()),
                    ..Default::default()
                }),
                ..Default::default()
            };
            let id = docker
                .create_container(
                    None::<bollard::query_parameters::CreateContainerOptions>,
                    config,
                )
                .await
                .unwrap()
                .id;
            docker
                .start_container(
                    &id,
                    None::<bollard::query_parameters::StartContainerOptions>,
                )
                .await
                .unwrap();
            id
        }
    };
    let ghost = start(format!("ghost-{}", Uuid::new_v4()), installation.clone()).await;
    let other = start("ghost".into(), format!("other-{}", Uuid::new_v4())).await;

    let removed =
        granda::worker::reaper::reap_orphaned_pools(&app.docker, &app.pool, &installation).await;
    assert_eq!(
        removed, 1,
        "only the ghost's container is an orphan of this installation"
    );
    assert!(app.docker.inspect_container(&ghost, None).await.is_err());
    assert!(app.docker.inspect_container(&other, None).await.is_ok());
    assert_eq!(
        hot_containers(&app).await,
        live,
        "the live worker's pool stays"
    );
    granda::worker::container::remove(&app.docker, &other).await;
    app.shutdown().await;
}

/// Fair sharing never sends a quick hot call round a delay queue: with its process running here
/// and runs of a few ms, the call frees its slot long before a message sent round would be back
/// (which cost 1.2 % of closed-loop callers 0.5 to 2 s each before).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_loop_hot_callers_are_never_sent_round_for_fair_sharing() {
    let app = spawn_app().await;
    app.register("hot", "granda-test/hot", json!({"mode": "hot"}))
        .await;
    // Warm: one process, and run times known to the scheduler.
    for _ in 0..5 {
        assert_eq!(call(&app, "hot", "warm").await.0, 200);
    }
    let calls = 60;
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let (client, url) = (app.client.clone(), app.url("/v1/functions/hot/invoke"));
            tokio::spawn(async move {
                let mut slowest = Duration::ZERO;
                for _ in 0..calls {
                    let start = Instant::now();
                    let response = client.post(&url).body("x").send().await.unwrap();
                    assert_eq!(response.status(), 200);
                    slowest = slowest.max(start.elapsed());
                }
                slowest
            })
        })
        .collect();
    let mut slowest = Duration::ZERO;
    for client in clients {
        slowest = slowest.max(client.await.unwrap());
    }
    let deferred = app
        .metric("granda_fair_share_deferred_total{function=\"hot\"}")
        .await
        .unwrap_or(0.0);
    let (max_wait,): (Option<i64>,) =
        sqlx::query_as("SELECT max(queue_ms) FROM invocations WHERE function = 'hot'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    eprintln!(
        "8 closed-loop callers x {calls}: slowest call {slowest:?}, longest queue wait {max_wait:?} ms, sent round {deferred}"
    );
    assert_eq!(deferred, 0.0, "no quick hot call is sent round");
    app.shutdown().await;
}
