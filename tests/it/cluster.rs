//! Granda on a 3-node RabbitMQ cluster (`scripts/rabbit-cluster.sh`, ports 5681–5683): a node
//! stopped, the ingress's node stopped, quorum lost. The cluster is started once per test binary
//! when it is not running (a test fails, never skips, if it can't be), and the tests take turns
//! (they stop nodes). Each ends with the ledger check: every 2xx answer has exactly one final
//! record, nothing else is recorded (a refused call leaves no record and never runs), and no
//! container is left on the engine.

use std::process::Command;
use std::sync::Once;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::MutexGuard;

use crate::faults::ledger::Ledger;
use crate::support::{TestApp, spawn_app_with};

const NODES: [(&str, u16); 3] = [("a", 5681), ("b", 5682), ("c", 5683)];
const PUBLISH_TIMEOUT_MS: u64 = 2_000;

static CLUSTER: Once = Once::new();
pub static TURNS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Runs `scripts/rabbit-cluster.sh ARGS`; its stdout, or a panic when it fails.
fn script(args: &[&str]) -> String {
    let out = Command::new("bash")
        .arg("scripts/rabbit-cluster.sh")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("running scripts/rabbit-cluster.sh");
    assert!(
        out.status.success(),
        "scripts/rabbit-cluster.sh {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Starts the cluster once per test binary (a no-op when it runs).
pub fn ensure_cluster() {
    CLUSTER.call_once(|| {
        script(&["start"]);
    });
}

/// Every node's URL, as `GRANDA_AMQP_URL` takes them.
pub fn cluster_urls() -> String {
    NODES
        .iter()
        .map(|(_, port)| format!("amqp://guest:guest@127.0.0.1:{port}/%2f"))
        .collect::<Vec<_>>()
        .join(",")
}

async fn run_script(args: &[&'static str]) -> String {
    let args = args.to_vec();
    tokio::task::spawn_blocking(move || script(&args))
        .await
        .unwrap()
}

/// Brings every node's application up, with the default memory watermark (after a test that
/// failed half-way, too).
pub(crate) async fn all_up() {
    for (node, _) in NODES {
        run_script(&["start-app", node]).await;
        run_script(&["ctl", node, "set_vm_memory_high_watermark", "0.4"]).await;
    }
}

/// Waits for this test's turn on the cluster (started if need be, every node up), then starts a
/// Granda (ingress + worker) on it, with an `echo` function. The turn lasts as long as its guard.
async fn cluster_app() -> (MutexGuard<'static, ()>, TestApp) {
    ensure_cluster();
    let turn = TURNS.lock().await;
    all_up().await;
    let app = spawn_app_with(|s| {
        s.amqp_url = cluster_urls();
        s.publish_timeout_ms = PUBLISH_TIMEOUT_MS;
    })
    .await;
    app.register("echo", "granda-test/echo", json!({})).await;
    (turn, app)
}

/// An ingress with no Docker engine (as `granda server`) on `app`'s database and the cluster: it
/// checks registrations with a worker over the broker. Returns its address and its stop signal.
async fn engineless_ingress(app: &TestApp) -> (String, tokio::sync::watch::Sender<bool>) {
    let ingress =
        granda::producer::Application::build_with_pool(app.settings.clone(), app.pool.clone())
            .await
            .unwrap();
    let address = format!("http://{}", ingress.local_addr());
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(ingress.run(async move {
        let _ = stopped.wait_for(|s| *s).await;
    }));
    (address, stop)
}

/// The node the ingress of `app` is connected to, from the cluster's list of connections.
async fn ingress_node(app: &TestApp) -> &'static str {
    let wanted = format!("granda-ingress-{}", app.settings.amqp_prefix);
    for (node, _) in NODES {
        let Ok(out) = tokio::task::spawn_blocking(move || {
            Command::new("bash")
                .args(["scripts/rabbit-cluster.sh", "ctl", node, "-q"])
                .args(["list_connections", "port", "client_properties"])
                .current_dir(env!("CARGO_MANIFEST_DIR"))
                .output()
        })
        .await
        .unwrap() else {
            continue;
        };
        let out = String::from_utf8_lossy(&out.stdout).into_owned();
        if let Some(line) = out.lines().find(|l| l.contains(&wanted)) {
            let port: u16 = line.split_whitespace().next().unwrap().parse().unwrap();
            return NODES.iter().find(|(_, p)| *p == port).unwrap().0;
        }
    }
    panic!("no connection named {wanted} on the cluster");
}

/// The ledger check that ends each test, then the app's shutdown: exactly the accepted
/// invocations are recorded, each once, final, succeeded and run once; no container is left.
async fn settle(ledger: &Ledger, app: TestApp, within: Duration) {
    // Refused calls' placeholders are gone within half a second.
    tokio::time::sleep(Duration::from_millis(700)).await;
    for (id, status, attempt) in ledger.settle(&app.pool, within).await {
        assert_eq!(status, "succeeded", "{id}");
        assert_eq!(attempt, 1, "{id} ran once");
    }
    app.assert_no_containers_left(Duration::from_secs(20)).await;
    app.shutdown().await;
}

async fn invoke_async(app: &TestApp, body: &str) -> reqwest::Response {
    app.client
        .post(app.url("/v1/functions/echo/invocations"))
        .body(body.to_string())
        .send()
        .await
        .expect("request")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn requests_keep_being_accepted_when_the_ingress_node_stops() {
    let (_turn, app) = cluster_app().await;
    let mut ledger = Ledger::default();
    assert_eq!(ledger.note(app.invoke("echo", "before").await).await, 200);

    let node = ingress_node(&app).await;
    run_script(&["stop-app", node]).await;
    let stopped = Instant::now();
    // Accepted again through another node within a bound; nothing hangs meanwhile.
    loop {
        let asked = Instant::now();
        let status = ledger.note(app.invoke("echo", "during").await).await;
        assert!(
            asked.elapsed() < Duration::from_millis(PUBLISH_TIMEOUT_MS + 10_000),
            "a call took {:?}",
            asked.elapsed()
        );
        if status == 200 {
            break;
        }
        assert!(
            stopped.elapsed() < Duration::from_secs(20),
            "no call accepted 20 s after the ingress's node stopped"
        );
    }
    let failover = stopped.elapsed();
    for i in 0..10 {
        assert_eq!(
            ledger
                .note(app.invoke("echo", format!("after {i}")).await)
                .await,
            200
        );
        assert_eq!(ledger.note(invoke_async(&app, "async").await).await, 202);
    }
    assert_ne!(
        ingress_node(&app).await,
        node,
        "the ingress moved to another node"
    );
    eprintln!(
        "failover took {failover:?}, {} refused meanwhile",
        ledger.refused
    );
    run_script(&["start-app", node]).await;
    settle(&ledger, app, Duration::from_secs(60)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_node_stopped_mid_burst_loses_and_doubles_nothing() {
    let (_turn, app) = cluster_app().await;
    let ingress = ingress_node(&app).await;
    let follower = NODES.iter().map(|n| n.0).find(|n| *n != ingress).unwrap();
    let mut burst = Vec::new();
    for i in 0..30 {
        let (client, url) = (
            app.client.clone(),
            app.url("/v1/functions/echo/invocations"),
        );
        burst.push(tokio::spawn(async move {
            client
                .post(url)
                .body(format!("burst {i}"))
                .send()
                .await
                .unwrap()
        }));
        if i == 10 {
            run_script(&["stop-app", follower]).await;
        }
    }
    let mut ledger = Ledger::default();
    for response in burst {
        ledger.note(response.await.unwrap()).await;
    }
    assert_eq!(ledger.refused, 0, "a follower's stop refuses nothing");
    run_script(&["start-app", follower]).await;
    settle(&ledger, app, Duration::from_secs(90)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_quorum_callers_get_503_within_the_bound_and_refused_calls_never_run() {
    let (_turn, app) = cluster_app().await;
    let mut ledger = Ledger::default();
    assert_eq!(ledger.note(app.invoke("echo", "before").await).await, 200);

    run_script(&["stop-app", "b"]).await;
    run_script(&["stop-app", "c"]).await;
    // The publish timeout, plus a reconnect to the surviving node and a margin.
    let bound = Duration::from_millis(PUBLISH_TIMEOUT_MS + 6_000);
    let mut answers: Vec<Value> = Vec::new();
    for i in 0..3 {
        let asked = Instant::now();
        let sync = ledger
            .note(app.invoke("echo", format!("sync {i}")).await)
            .await;
        let sync_took = asked.elapsed();
        let asked = Instant::now();
        let r#async = ledger.note(invoke_async(&app, "async").await).await;
        let async_took = asked.elapsed();
        assert!(sync_took < bound, "a sync call took {sync_took:?}");
        assert!(async_took < bound, "an async call took {async_took:?}");
        answers.push(json!({"sync": sync, "async": r#async, "ms": [sync_took.as_millis() as u64, async_took.as_millis() as u64]}));
    }
    // A registration through an ingress with no engine asks a worker over the broker (its
    // control queue is a classic one, which needs no quorum): a worker on the node still up
    // answers (201, registered); else 503 within the bound, and nothing is registered.
    let (ingress, stop_ingress) = engineless_ingress(&app).await;
    let asked = Instant::now();
    let registered = app
        .client
        .post(format!("{ingress}/v1/functions"))
        .json(&json!({"name": "late", "image": "granda-test/echo"}))
        .send()
        .await
        .unwrap();
    let took = asked.elapsed();
    let status = registered.status().as_u16();
    let body = registered.text().await.unwrap();
    answers.push(json!({"registration": status, "ms": took.as_millis() as u64, "body": body}));
    assert!(took < bound, "a registration took {took:?}");
    let stored = app.get("/v1/functions/late").await.status().as_u16();
    match status {
        201 => assert_eq!(stored, 200, "{body}"),
        503 => assert_eq!(stored, 404, "refused yet registered: {body}"),
        other => panic!("a registration without quorum answered {other}: {body}"),
    }
    let _ = stop_ingress.send(true);
    eprintln!("answers without quorum: {answers:?}");
    assert!(
        ledger.refused >= 4,
        "without quorum calls are refused: {answers:?}"
    );

    run_script(&["start-app", "b"]).await;
    run_script(&["start-app", "c"]).await;
    let back = Instant::now();
    loop {
        if ledger.note(app.invoke("echo", "after").await).await == 200 {
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(60),
            "no call accepted after quorum came back"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(ledger.note(invoke_async(&app, "after").await).await, 202);
    // Refused messages that reached a queue anyway had their chance to run by now.
    tokio::time::sleep(Duration::from_secs(3)).await;
    settle(&ledger, app, Duration::from_secs(60)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_registration_the_broker_does_not_take_answers_503_within_the_bound() {
    let (_turn, app) = cluster_app().await;
    let (ingress, stop_ingress) = engineless_ingress(&app).await;
    let register = |name: &'static str| {
        app.client
            .post(format!("{ingress}/v1/functions"))
            .json(&json!({"name": name, "image": "granda-test/echo"}))
            .send()
    };
    // The worker answers the ingress's check over the broker.
    let first = crate::support::eventually(
        Duration::from_secs(30),
        "a worker of the queue answers",
        || async {
            let r = register("first").await.unwrap();
            (r.status() != 503).then_some(r)
        },
    )
    .await;
    assert_eq!(first.status(), 201, "{}", first.text().await.unwrap());

    // A memory alarm (cluster-wide) blocks publishers: the request is never taken nor confirmed.
    run_script(&["ctl", "a", "set_vm_memory_high_watermark", "0.0001"]).await;
    let bound = Duration::from_millis(PUBLISH_TIMEOUT_MS + 3_000);
    let asked = Instant::now();
    let blocked = tokio::time::timeout(bound * 3, register("blocked"))
        .await
        .expect("the registration answers, not hangs")
        .unwrap();
    let took = asked.elapsed();
    let status = blocked.status().as_u16();
    let body = blocked.text().await.unwrap();
    eprintln!("a registration with publishers blocked: {status} in {took:?}: {body}");
    assert!(took < bound, "the registration took {took:?}");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("GRANDA_PUBLISH_TIMEOUT_MS"), "{body}");

    // Refused for good: registered neither now nor once the alarm clears.
    run_script(&["ctl", "a", "set_vm_memory_high_watermark", "0.4"]).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(app.get("/v1/functions/blocked").await.status(), 404);
    assert_eq!(app.get("/v1/functions/first").await.status(), 200);
    let _ = stop_ingress.send(true);
    settle(&Ledger::default(), app, Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_quorum_neither_a_worker_nor_an_ingress_is_ready_until_quorum_returns() {
    use crate::faults::infra::{GrandaProcess, free_port};
    let (_turn, app) = cluster_app().await;
    let listen = format!("127.0.0.1:{}", free_port());
    let base = format!("http://{listen}");
    let id = format!("{}-standalone", app.worker_id());
    let docker_host = app
        .settings
        .docker_host
        .clone()
        .unwrap_or_else(|| "unix:///var/run/docker.sock".into());
    let worker = GrandaProcess::spawn(
        &["worker"],
        &[
            ("GRANDA_DATABASE_URL", app.settings.database_url.clone()),
            // Node a only, the one that stays up: its connection never breaks, so only the
            // quorum probe can tell (a worker that fails over is not consuming meanwhile).
            (
                "GRANDA_AMQP_URL",
                cluster_urls().split(',').next().unwrap().to_string(),
            ),
            ("GRANDA_AMQP_PREFIX", app.settings.amqp_prefix.clone()),
            ("GRANDA_PUBLISH_TIMEOUT_MS", PUBLISH_TIMEOUT_MS.to_string()),
            ("GRANDA_WORKER_ID", id.clone()),
            ("GRANDA_WORKER_LISTEN", listen.clone()),
            ("DOCKER_HOST", docker_host),
        ],
    );
    worker.wait_healthy(&base, Duration::from_secs(30)).await;
    let readyz = || async {
        let response = reqwest::get(format!("{base}/readyz")).await.unwrap();
        let status = response.status().as_u16();
        (status, response.json::<Value>().await.unwrap())
    };
    let wait_for = |want: u16, within: Duration| async move {
        let deadline = Instant::now() + within;
        loop {
            let (status, body) = readyz().await;
            if status == want {
                return body;
            }
            assert!(
                Instant::now() < deadline,
                "/readyz not {want} within {within:?}: {body}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let ready = wait_for(200, Duration::from_secs(30)).await;
    assert_eq!(ready["checks"]["quorum"], "ok", "{ready}");
    // An ingress (as `granda server`) on node a only, too.
    let mut on_a = app.settings.clone();
    on_a.amqp_url = cluster_urls().split(',').next().unwrap().to_string();
    let ingress = granda::producer::Application::build_with_pool(on_a, app.pool.clone())
        .await
        .unwrap();
    let ingress_base = format!("http://{}", ingress.local_addr());
    let (stop_ingress, mut stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(ingress.run(async move {
        let _ = stopped.wait_for(|s| *s).await;
    }));
    let ingress_readyz = || async {
        let response = reqwest::get(format!("{ingress_base}/readyz"))
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json::<Value>().await.unwrap())
    };
    let (status, body) = ingress_readyz().await;
    assert_eq!(
        (status, &body["checks"]["quorum"]),
        (200, &json!("ok")),
        "{body}"
    );

    // Quorum lost: not ready within the probe's period plus the publish timeout, and it stays
    // so while quorum is lost, though its own node is up.
    run_script(&["stop-app", "b"]).await;
    run_script(&["stop-app", "c"]).await;
    let lost = Instant::now();
    let not_ready = wait_for(
        503,
        Duration::from_millis(2_000 + PUBLISH_TIMEOUT_MS + 2_000),
    )
    .await;
    let took = lost.elapsed();
    let mut seen = vec![not_ready.clone()];
    // A few probes more.
    while lost.elapsed() < took + Duration::from_secs(8) {
        let (status, body) = readyz().await;
        assert_eq!(status, 503, "ready again without quorum: {body}");
        seen.push(body);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // The ingress: 503 too (it can't accept an invoke), inside the publish timeout, though
    // its node answers; still alive.
    let asked = Instant::now();
    let (status, body) = ingress_readyz().await;
    let ingress_took = asked.elapsed();
    assert_eq!(status, 503, "the ingress is ready without quorum: {body}");
    assert_eq!(body["checks"]["quorum"], "unavailable", "{body}");
    assert_eq!(body["checks"]["rabbitmq"], "ok", "{body}");
    assert!(
        ingress_took < Duration::from_millis(PUBLISH_TIMEOUT_MS + 1_000),
        "the ingress's /readyz took {ingress_took:?}"
    );
    let alive = reqwest::get(format!("{ingress_base}/healthz"))
        .await
        .unwrap();
    assert_eq!(alive.status(), 200, "the ingress is alive all along");
    let last = seen.last().unwrap();
    assert_eq!(last["checks"]["postgres"], "ok", "{last}");
    assert_eq!(last["checks"]["quorum"], "unavailable", "{last}");
    assert_eq!(last["checks"]["rabbitmq"], "ok", "{last}");
    let quorum = format!("granda_worker_broker_quorum{{worker=\"{id}\"}} 0");
    let metrics = crate::support::client_with_key(crate::support::ADMIN_KEY)
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap();
    let text = metrics.text().await.unwrap();
    assert!(text.contains(&quorum), "{quorum} in:\n{text}");
    assert_eq!(
        reqwest::get(format!("{base}/healthz"))
            .await
            .unwrap()
            .status(),
        200,
        "alive all along"
    );

    run_script(&["start-app", "b"]).await;
    run_script(&["start-app", "c"]).await;
    let back = Instant::now();
    wait_for(200, Duration::from_secs(60)).await;
    let worker_back = back.elapsed();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = ingress_readyz().await;
        if status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the ingress is not ready again: {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "without quorum: a worker's /readyz 503 within {took:?}, ({}) ; 200 again {worker_back:?} after quorum returned; the ingress's 503 answered in {ingress_took:?}, 200 again {:?} after",
        last["reasons"],
        back.elapsed()
    );
    let _ = stop_ingress.send(true);
    worker.sigterm();
    assert!(worker.wait_exit(Duration::from_secs(30)).await.is_some());
    let ledger = Ledger::default();
    settle(&ledger, app, Duration::from_secs(30)).await;
}
