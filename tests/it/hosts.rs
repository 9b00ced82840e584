//! Many hosts on one machine: a second Docker engine ("host B", no images) and a registry on
//! loopback, from `scripts/engines.sh start` (once per test binary). The suite fails, never
//! skips, when it can't start them. Each scenario ends with the ledger check: every 2xx answer
//! has its final record, no invocation recorded twice, no container left on either engine.

use std::sync::Once;
use std::time::Duration;

use granda::producer::Application;
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::support::{TestApp, eventually, spawn_app_with};

static ENGINES: Once = Once::new();

/// Host B's engine and the registry, started once per test binary.
fn engines() -> (String, String) {
    ENGINES.call_once(|| {
        let out = std::process::Command::new("bash")
            .args(["scripts/engines.sh", "start"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .expect("running scripts/engines.sh");
        assert!(
            out.status.success(),
            "scripts/engines.sh start failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    });
    (
        "unix:///run/granda-engine-b.sock".to_string(),
        "127.0.0.1:5000".to_string(),
    )
}

fn docker_cli(host: Option<&str>, args: &[&str]) {
    let mut command = std::process::Command::new("docker");
    if let Some(host) = host {
        command.env("DOCKER_HOST", host);
    }
    let out = command.args(args).output().expect("running docker");
    assert!(
        out.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Pushes the local test image `image` to the registry under a name of its own; returns it.
fn push(registry: &str, image: &str, tag: &str) -> String {
    let name = format!("{registry}/granda-hosts/{}:{tag}", image.replace('/', "-"));
    docker_cli(None, &["tag", image, &name]);
    docker_cli(None, &["push", &name]);
    docker_cli(None, &["rmi", &name]);
    name
}

fn engine(host: &str) -> bollard::Docker {
    granda::docker::connect(Some(host), 60).unwrap()
}

/// Containers of this app's workers on `docker`.
async fn leftovers(docker: &bollard::Docker, worker_prefix: &str) -> Vec<String> {
    let options = bollard::query_parameters::ListContainersOptionsBuilder::new()
        .all(true)
        .filters(&std::collections::HashMap::from([(
            "label",
            vec![granda::docker::LABEL_WORKER],
        )]))
        .build();
    docker
        .list_containers(Some(options))
        .await
        .unwrap()
        .into_iter()
        .filter(|c| {
            c.labels
                .as_ref()
                .and_then(|l| l.get(granda::docker::LABEL_WORKER))
                .is_some_and(|w| w.starts_with(worker_prefix))
        })
        .filter_map(|c| c.id)
        .collect()
}

/// The ledger: every id answered 2xx has exactly one final record, and neither engine keeps a
/// container of this app's workers.
async fn ledger(app: &TestApp, accepted: &[uuid::Uuid], engine_b: &str) {
    for id in accepted {
        let record = app.wait_final(*id, Duration::from_secs(60)).await;
        assert_eq!(record["status"], "succeeded", "{record}");
    }
    let rows: Vec<(i64, i64)> =
        sqlx::query_as("SELECT count(*), count(DISTINCT id) FROM invocations WHERE id = ANY($1)")
            .bind(accepted)
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(rows[0], (accepted.len() as i64, accepted.len() as i64));
    let prefix = app.worker_id();
    for docker in [app.docker.clone(), engine(engine_b)] {
        eventually(Duration::from_secs(20), "no containers left", || {
            let docker = docker.clone();
            let prefix = prefix.clone();
            async move { leftovers(&docker, &prefix).await.is_empty().then_some(()) }
        })
        .await;
    }
}

/// An ingress with no engine (as `granda server`) on the app's database and queues.
async fn engineless_ingress(app: &TestApp) -> (String, watch::Sender<bool>) {
    engineless_ingress_with(app, app.settings.clone()).await
}

/// [`engineless_ingress`] with settings of its own.
async fn engineless_ingress_with(
    app: &TestApp,
    settings: granda::config::Settings,
) -> (String, watch::Sender<bool>) {
    let ingress = Application::build_with_pool(settings, app.pool.clone())
        .await
        .unwrap();
    let address = format!("http://{}", ingress.local_addr());
    let (stop, mut stopped) = watch::channel(false);
    tokio::spawn(ingress.run(async move {
        let _ = stopped.wait_for(|s| *s).await;
    }));
    (address, stop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_image_only_in_the_registry_is_checked_and_pulled_by_the_worker_on_host_b() {
    let (engine_b, registry) = engines();
    let mut app = spawn_app_with(|_| {}).await;
    let tag = app.worker_id();
    let image = push(&registry, "granda-test/echo", &tag);
    let worker_b = app
        .add_worker(|s| {
            s.docker_host = Some(engine_b.clone());
            s.queues = vec!["hosts-b".into()];
        })
        .await;
    let (ingress, stop) = engineless_ingress(&app).await;
    let post = |body: Value| {
        app.client
            .post(format!("{ingress}/v1/functions"))
            .json(&body)
            .send()
    };

    // The standalone ingress asks a worker of the queue: host B pulls the image from the registry.
    let created = eventually(
        Duration::from_secs(30),
        "host B's worker answers",
        || async {
            let r = post(json!({"name": "pulled", "image": image, "queue": "hosts-b"}))
                .await
                .unwrap();
            (r.status() != 503).then_some(r)
        },
    )
    .await;
    assert_eq!(created.status(), 201, "{}", created.text().await.unwrap());
    let on_b = engine(&engine_b);
    assert!(on_b.inspect_image(&image).await.is_ok(), "host B pulled it");

    // An image no registry has: 422 with the engine's reason, and nothing registered.
    let missing = post(json!({"name": "nope", "image": format!("{registry}/granda-hosts/none:{tag}"), "queue": "hosts-b"}))
        .await
        .unwrap();
    assert_eq!(missing.status(), 422);
    let body: Value = missing.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("can't be had"),
        "{body}"
    );
    assert_eq!(app.get("/v1/functions/nope").await.status(), 404);

    // A queue no worker serves: 503 at once, saying so.
    let started = std::time::Instant::now();
    let nobody = post(json!({"name": "lonely", "image": image, "queue": "nobody"}))
        .await
        .unwrap();
    assert_eq!(nobody.status(), 503);
    assert!(started.elapsed() < Duration::from_secs(5));

    // Runs go to host B, whose engine now has the image.
    let mut accepted = vec![];
    for i in 0..4 {
        let r = app.invoke("pulled", format!("hello {i}")).await;
        assert_eq!(r.status(), 200);
        let id = r.headers()["x-granda-invocation-id"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        accepted.push(id);
        assert_eq!(r.text().await.unwrap(), format!("hello {i}"));
    }
    for id in &accepted {
        assert_eq!(app.invocation(*id).await["worker"], worker_b.as_str());
    }
    ledger(&app, &accepted, &engine_b).await;
    let _ = stop.send(true);
    let _ = on_b
        .remove_image(
            &image,
            None::<bollard::query_parameters::RemoveImageOptions>,
            None,
        )
        .await;
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_host_whose_engine_cant_have_the_image_gives_its_share_to_the_others() {
    let (engine_b, _) = engines();
    let mut app = spawn_app_with(|s| s.max_concurrency = Some(2)).await;
    app.register("local", "granda-test/echo", json!({})).await;
    // Host B has no granda-test images and may pull nothing: every message it takes, it can't run.
    let worker_b = app
        .add_worker(|s| {
            s.docker_host = Some(engine_b.clone());
            s.image_pull = granda::config::ImagePull::Never;
            s.max_concurrency = Some(8);
        })
        .await;
    let mut accepted = vec![];
    for i in 0..16 {
        accepted.push(app.invoke_async("local", format!("n{i}")).await);
    }
    let mut sync_ok = 0;
    for i in 0..6 {
        let r = app.invoke("local", format!("s{i}")).await;
        assert_eq!(r.status(), 200, "a sync call is not black-holed by host B");
        accepted.push(
            r.headers()["x-granda-invocation-id"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap(),
        );
        sync_ok += 1;
    }
    assert_eq!(sync_ok, 6);
    ledger(&app, &accepted, &engine_b).await;
    for id in &accepted {
        let record = app.invocation(*id).await;
        assert_ne!(record["worker"], worker_b.as_str(), "{record}");
        assert_eq!(
            record["attempt"], 1,
            "giving a message back uses no attempt: {record}"
        );
    }
    app.shutdown().await;
}

fn remove_image(docker: &bollard::Docker, image: &str) -> impl std::future::Future<Output = ()> {
    let docker = docker.clone();
    let image = image.to_string();
    async move {
        let _ = docker
            .remove_image(
                &image,
                None::<bollard::query_parameters::RemoveImageOptions>,
                None,
            )
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_build_from_source_on_host_b_is_pushed_and_runs_on_host_a() {
    let (engine_b, registry) = engines();
    let mut app = spawn_app_with(|_| {}).await;
    let tag = app.worker_id();
    // Host B has no images: the runtime's base image comes from the registry too.
    let base = push(&registry, "granda/runtime-shell", &tag);
    let worker_b = app
        .add_worker(|s| {
            s.docker_host = Some(engine_b.clone());
            s.queues = vec!["hosts-build".into()];
            s.registry = Some(registry.clone());
        })
        .await;
    let mut settings = app.settings.clone();
    settings.runtime_shell_image = base.clone();
    let (ingress, stop) = engineless_ingress_with(&app, settings).await;
    let deploy = |body: Value| {
        app.client
            .post(format!("{ingress}/v1/functions"))
            .json(&body)
            .send()
    };

    // A queue no worker serves: 503 at once, saying what builds need.
    let nobody =
        deploy(json!({"name": "lonely", "runtime": "shell", "source": "cat\n", "queue": "nobody"}))
            .await
            .unwrap();
    assert_eq!(nobody.status(), 503);
    let body: Value = nobody.json().await.unwrap();
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("GRANDA_REGISTRY") && message.contains("shared"),
        "{body}"
    );
    assert_eq!(app.get("/v1/functions/lonely").await.status(), 404);

    // The server has no engine: host B's worker builds, tags under the registry and pushes.
    let created = eventually(
        Duration::from_secs(60),
        "host B's worker builds",
        || async {
            let r = deploy(json!({"name": "built", "runtime": "shell",
                                  "source": "tr a-z A-Z\n", "queue": "hosts-build"}))
            .await
            .unwrap();
            (r.status() != 503).then_some(r)
        },
    )
    .await;
    assert_eq!(created.status(), 201);
    let function: Value = created.json().await.unwrap();
    let image = format!("{registry}/{}-fn/built:v1", app.settings.amqp_prefix);
    assert_eq!(function["image"], image.as_str(), "{function}");
    let on_b = engine(&engine_b);
    assert!(on_b.inspect_image(&image).await.is_ok(), "built on host B");
    assert!(
        app.docker.inspect_image(&image).await.is_err(),
        "not built on host A"
    );
    let (stored, log): (String, String) =
        sqlx::query_as("SELECT image, log FROM builds WHERE function = 'built'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(stored, image);
    assert!(
        log.contains(&format!("Building on worker {worker_b}")),
        "{log}"
    );
    assert!(log.contains(&format!("Pushed {image}")), "{log}");

    // A failing build is the user's: 422 with the log's tail, nothing registered.
    let broken = deploy(json!({"name": "broken", "runtime": "shell",
                               "source": "case in\n", "queue": "hosts-build"}))
    .await
    .unwrap();
    assert_eq!(broken.status(), 422);
    let body: Value = broken.json().await.unwrap();
    assert_eq!(body["error"]["code"], "build_failed", "{body}");
    assert_eq!(app.get("/v1/functions/broken").await.status(), 404);

    // Moved to host A's queue: its worker pulls the image from the registry and runs it.
    let moved = app
        .client
        .put(format!("{ingress}/v1/functions/built"))
        .json(&json!({"queue": "default"}))
        .send()
        .await
        .unwrap();
    assert_eq!(moved.status(), 200, "{}", moved.text().await.unwrap());
    let mut accepted = vec![];
    for i in 0..4 {
        let r = app.invoke("built", format!("hello {i}")).await;
        assert_eq!(r.status(), 200);
        accepted.push(
            r.headers()["x-granda-invocation-id"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap(),
        );
        assert_eq!(r.text().await.unwrap(), format!("HELLO {i}"));
    }
    for id in &accepted {
        assert_eq!(
            app.invocation(*id).await["worker"],
            app.worker_id().as_str()
        );
    }
    assert!(
        app.docker.inspect_image(&image).await.is_ok(),
        "pulled on host A"
    );
    ledger(&app, &accepted, &engine_b).await;
    let _ = stop.send(true);
    for docker in [&app.docker, &on_b] {
        remove_image(docker, &image).await;
    }
    remove_image(&on_b, &base).await;
    app.shutdown().await;
}

/// A `granda worker` process on `host`'s engine serving `queue`, pinned at `slots` runs at once.
fn worker_process(
    app: &TestApp,
    id: &str,
    host: &str,
    queue: &str,
    slots: usize,
) -> std::process::Child {
    let state = std::env::temp_dir().join(format!("granda-state-{id}"));
    std::fs::create_dir_all(&state).unwrap();
    std::process::Command::new(env!("CARGO_BIN_EXE_granda"))
        .arg("worker")
        .env("GRANDA_DATABASE_URL", &app.settings.database_url)
        .env("GRANDA_AMQP_URL", &app.settings.amqp_url)
        .env("GRANDA_AMQP_PREFIX", &app.settings.amqp_prefix)
        .env("GRANDA_WORKER_ID", id)
        .env("GRANDA_QUEUES", queue)
        .env("GRANDA_MIN_CONCURRENCY", slots.to_string())
        .env("GRANDA_MAX_CONCURRENCY", slots.to_string())
        .env("GRANDA_WORKER_LISTEN", "off")
        .env("GRANDA_STATE_DIR", &state)
        .env("DOCKER_HOST", host)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(state.join("worker.log")).unwrap())
        .spawn()
        .expect("starting granda worker")
}

/// A container's `start` or `die` on an engine: the invocation it ran, its exit code (for `die`)
/// and when, in nanoseconds since the epoch.
#[derive(Debug)]
struct ContainerEvent {
    action: String,
    invocation: String,
    exit_code: Option<String>,
    at_ns: i64,
}

/// The `start` and `die` events of worker `worker`'s containers on `docker` since `since` (Unix
/// seconds), from the engine's own event log.
async fn container_events(
    docker: &bollard::Docker,
    since: i64,
    worker: &str,
) -> Vec<ContainerEvent> {
    use futures_util::StreamExt;
    let until = chrono::Utc::now().timestamp() + 1;
    let options = bollard::query_parameters::EventsOptions {
        since: Some(since.to_string()),
        until: Some(until.to_string()),
        filters: Some(std::collections::HashMap::from([
            ("type".to_string(), vec!["container".to_string()]),
            (
                "event".to_string(),
                vec!["start".to_string(), "die".to_string()],
            ),
            (
                "label".to_string(),
                vec![format!("{}={worker}", granda::docker::LABEL_WORKER)],
            ),
        ])),
    };
    let events: Vec<_> = docker.events(Some(options)).collect().await;
    events
        .into_iter()
        .map(|e| e.expect("the engine's events"))
        .filter_map(|e| {
            let attributes = e.actor?.attributes.unwrap_or_default();
            Some(ContainerEvent {
                action: e.action?,
                invocation: attributes.get(granda::docker::LABEL_INVOCATION)?.clone(),
                exit_code: attributes.get("exitCode").cloned(),
                at_ns: e.time_nano?,
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_host_killed_mid_burst_is_taken_over_within_10_s_and_its_containers_stopped() {
    let (engine_b, registry) = engines();
    let mut app = spawn_app_with(|_| {}).await;
    let tag = app.worker_id();
    let image = push(&registry, "granda-test/sleep", &tag);
    const SLEEP_SECONDS: i64 = 20;
    app.register(
        "slow",
        &image,
        json!({"queue": "hosts-kill", "timeout_ms": 60_000,
               "env": {"SLEEP_SECONDS": SLEEP_SECONDS.to_string()}}),
    )
    .await;
    const BURST: usize = 6;
    let id_b = format!("{tag}-b");
    let since = chrono::Utc::now().timestamp() - 1;
    let mut worker_b = worker_process(&app, &id_b, &engine_b, "hosts-kill", 8);
    let on_b = engine(&engine_b);

    // Host B takes the whole burst (nobody else serves the queue yet) and runs it.
    let mut accepted = vec![];
    for i in 0..BURST {
        accepted.push(app.invoke_async("slow", format!("n{i}")).await);
    }
    eventually(
        Duration::from_secs(60),
        "host B runs the whole burst",
        || async {
            let running: Vec<(String, Option<String>)> =
                sqlx::query_as("SELECT status, worker FROM invocations WHERE id = ANY($1)")
                    .bind(&accepted)
                    .fetch_all(&app.pool)
                    .await
                    .unwrap();
            let all = running
                .iter()
                .all(|(s, w)| s == "running" && w.as_deref() == Some(id_b.as_str()));
            (all && leftovers(&on_b, &id_b).await.len() == BURST).then_some(())
        },
    )
    .await;

    // Host A's worker serves the queue too (with the default lease); then host B dies, its
    // containers still running.
    let worker_a = app
        .add_worker(|s| {
            s.queues = vec!["hosts-kill".into()];
            s.min_concurrency = 8;
            s.max_concurrency = Some(8);
        })
        .await;
    worker_b.kill().unwrap();
    let killed = std::time::Instant::now();
    worker_b.wait().unwrap();
    assert_eq!(leftovers(&on_b, &id_b).await.len(), BURST, "B's runs go on");

    // Worker A claims every invocation of B's, and B's containers are gone.
    eventually(
        Duration::from_secs(30),
        "worker A takes over every run",
        || async {
            let workers: Vec<(Option<String>,)> =
                sqlx::query_as("SELECT worker FROM invocations WHERE id = ANY($1)")
                    .bind(&accepted)
                    .fetch_all(&app.pool)
                    .await
                    .unwrap();
            workers
                .iter()
                .all(|(w,)| w.as_deref() == Some(worker_a.as_str()))
                .then_some(())
        },
    )
    .await;
    let took_over = killed.elapsed();
    eventually(
        Duration::from_secs(20),
        "B's containers removed",
        || async { leftovers(&on_b, &id_b).await.is_empty().then_some(()) },
    )
    .await;
    let removed = killed.elapsed();
    eprintln!(
        "kill -9 of host B's worker: {BURST} runs taken over by host A within {took_over:?}, \
         B's containers removed within {removed:?} (lease {} ms)",
        app.settings.worker_lease_ms
    );
    assert_eq!(app.settings.worker_lease_ms, 6_000, "the default lease");
    assert!(
        took_over < Duration::from_secs(10) && removed < Duration::from_secs(10),
        "taken over within 10 s of the death: {took_over:?}, {removed:?}"
    );

    // B's containers were stopped, not run to their end: each of B's invocations started once
    // on B and died there killed, well before its sleep could have ended.
    let events = container_events(&on_b, since, &id_b).await;
    for id in &accepted {
        let id = id.to_string();
        let of = |action: &str| -> Vec<&ContainerEvent> {
            events
                .iter()
                .filter(|e| e.invocation == id && e.action == action)
                .collect()
        };
        let (starts, deaths) = (of("start"), of("die"));
        assert_eq!(starts.len(), 1, "{id} started once on B: {events:?}");
        assert_eq!(deaths.len(), 1, "{id} died once on B: {events:?}");
        assert_ne!(
            deaths[0].exit_code.as_deref(),
            Some("0"),
            "{id}'s container on B was stopped, not finished: {events:?}"
        );
        let lived = Duration::from_nanos((deaths[0].at_ns - starts[0].at_ns).max(0) as u64);
        assert!(
            lived < Duration::from_secs(SLEEP_SECONDS as u64 - 2),
            "{id}'s container on B lived {lived:?}, near its whole sleep"
        );
    }
    ledger(&app, &accepted, &engine_b).await;
    for id in &accepted {
        let record = app.invocation(*id).await;
        assert_eq!(record["worker"], worker_a.as_str(), "{record}");
        assert_eq!(record["output"], "slept\n", "{record}");
    }
    for docker in [&app.docker, &on_b] {
        remove_image(docker, &image).await;
    }
    app.shutdown().await;
}
