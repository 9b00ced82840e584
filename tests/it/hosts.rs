//! Many hosts on one machine: a second Docker engine ("host B", no images) and a registry on
//! loopback, from `scripts/engines.sh start` (once per test binary). The suite fails, never
//! skips, when it can't start them. Each scenario ends with the ledger check: every 2xx answer
//! has its final record, no invocation recorded twice, no container left on either engine.

use std::sync::Once;
use std::time::Duration;

use granda::producer::Application;
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::faults::infra::{GrandaProcess, free_port};
use crate::hosts_ledger::{EventLog, ledger, leftovers};
use crate::support::{TestApp, eventually, id_of, sample_of, spawn_app_with};

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

/// Pushes the local test image `image` to the registry under a name of its own (tagged with
/// `app`'s worker id); returns it.
pub(crate) fn push(app: &TestApp, registry: &str, image: &str) -> String {
    let tag = app.worker_id();
    let name = format!("{registry}/granda-hosts/{}:{tag}", image.replace('/', "-"));
    docker_cli(None, &["tag", image, &name]);
    docker_cli(None, &["push", &name]);
    docker_cli(None, &["rmi", &name]);
    name
}

pub(crate) fn engine(host: &str) -> bollard::Docker {
    granda::docker::connect(Some(host), 60).unwrap()
}

/// A Granda on host A, with settings changed by `tweak`, and what it needs of the others: host
/// B's engine, the registry, and the log of the run containers of both engines.
pub(crate) async fn on_hosts_a_and_b(
    tweak: impl FnOnce(&mut granda::config::Settings),
) -> (TestApp, String, String, EventLog) {
    let (engine_b, registry) = engines();
    let app = spawn_app_with(tweak).await;
    let runs = EventLog::watch(&[("a", app.docker.clone()), ("b", engine(&engine_b))]);
    (app, engine_b, registry, runs)
}

/// Starts one more in-process worker of `app`, on host B's engine, with settings changed by
/// `tweak`; returns its id.
async fn add_worker_on_b(
    app: &mut TestApp,
    engine_b: &str,
    tweak: impl FnOnce(&mut granda::config::Settings),
) -> String {
    app.add_worker(|s| {
        s.docker_host = Some(engine_b.to_string());
        tweak(s);
    })
    .await
}

/// POSTs `body` to `/v1/functions` of the ingress at `address`, with `app`'s admin client.
async fn register_at(app: &TestApp, address: &str, body: Value) -> reqwest::Response {
    app.client
        .post(format!("{address}/v1/functions"))
        .json(&body)
        .send()
        .await
        .unwrap()
}

/// The ledger check ([`ledger`]) over hosts A and B.
pub(crate) async fn settle(app: &TestApp, accepted: &[uuid::Uuid], engine_b: &str, log: &EventLog) {
    ledger(app, accepted, &[app.docker.clone(), engine(engine_b)], log).await;
}

/// [`settle`], then every one of `accepted` ran to its end (`slept`) on `worker`.
async fn settle_all_slept_on(
    app: &TestApp,
    accepted: &[uuid::Uuid],
    engine_b: &str,
    log: &EventLog,
    worker: &str,
) {
    settle(app, accepted, engine_b, log).await;
    for id in accepted {
        let record = app.invocation(*id).await;
        assert_eq!(record["worker"], worker, "{record}");
        assert_eq!(record["output"], "slept\n", "{record}");
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

/// Four sync calls of `name` (`hello 0` to `hello 3`): each answers 200 with what `answer` makes
/// of its input, and is recorded as run by `worker`. Returns their ids.
async fn four_calls_run_by(
    app: &TestApp,
    name: &str,
    answer: impl Fn(&str) -> String,
    worker: &str,
) -> Vec<uuid::Uuid> {
    let mut accepted = vec![];
    for i in 0..4 {
        let input = format!("hello {i}");
        let r = app.invoke(name, input.clone()).await;
        assert_eq!(r.status(), 200);
        accepted.push(id_of(&r));
        assert_eq!(r.text().await.unwrap(), answer(&input));
    }
    for id in &accepted {
        assert_eq!(app.invocation(*id).await["worker"], worker);
    }
    accepted
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_image_only_in_the_registry_is_checked_and_pulled_by_the_worker_on_host_b() {
    let (mut app, engine_b, registry, runs) = on_hosts_a_and_b(|_| {}).await;
    let image = push(&app, &registry, "granda-test/echo");
    let worker_b =
        add_worker_on_b(&mut app, &engine_b, |s| s.queues = vec!["hosts-b".into()]).await;
    let (ingress, stop) = engineless_ingress(&app).await;

    // The standalone ingress asks a worker of the queue: host B pulls the image from the registry.
    let created = eventually(
        Duration::from_secs(30),
        "host B's worker answers",
        || async {
            let body = json!({"name": "pulled", "image": image, "queue": "hosts-b"});
            let r = register_at(&app, &ingress, body).await;
            (r.status() != 503).then_some(r)
        },
    )
    .await;
    assert_eq!(created.status(), 201, "{}", created.text().await.unwrap());
    let on_b = engine(&engine_b);
    assert!(on_b.inspect_image(&image).await.is_ok(), "host B pulled it");

    // An image no registry has: 422 with the engine's reason, and nothing registered.
    let none = format!("{registry}/granda-hosts/none:{}", app.worker_id());
    let missing = register_at(
        &app,
        &ingress,
        json!({"name": "nope", "image": none, "queue": "hosts-b"}),
    )
    .await;
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
    let nobody = register_at(
        &app,
        &ingress,
        json!({"name": "lonely", "image": image, "queue": "nobody"}),
    )
    .await;
    assert_eq!(nobody.status(), 503);
    assert!(started.elapsed() < Duration::from_secs(5));

    // Runs go to host B, whose engine now has the image.
    let accepted = four_calls_run_by(&app, "pulled", str::to_string, &worker_b).await;
    settle(&app, &accepted, &engine_b, &runs).await;
    let _ = stop.send(true);
    remove_image(&on_b, &image).await;
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_host_whose_engine_cant_have_the_image_gives_its_share_to_the_others() {
    let (mut app, engine_b, _, runs) = on_hosts_a_and_b(|s| s.max_concurrency = Some(2)).await;
    app.register("local", "granda-test/echo", json!({})).await;
    // Host B has no granda-test images and may pull nothing: every message it takes, it can't run.
    let worker_b = add_worker_on_b(&mut app, &engine_b, |s| {
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
        accepted.push(id_of(&r));
        sync_ok += 1;
    }
    assert_eq!(sync_ok, 6);
    settle(&app, &accepted, &engine_b, &runs).await;
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

pub(crate) fn remove_image(
    docker: &bollard::Docker,
    image: &str,
) -> impl std::future::Future<Output = ()> {
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
    let (mut app, engine_b, registry, runs) = on_hosts_a_and_b(|_| {}).await;
    // Host B has no images: the runtime's base image comes from the registry too.
    let base = push(&app, &registry, "granda/runtime-shell");
    let worker_b = add_worker_on_b(&mut app, &engine_b, |s| {
        s.queues = vec!["hosts-build".into()];
        s.registry = Some(registry.clone());
    })
    .await;
    let mut settings = app.settings.clone();
    settings.runtime_shell_image = base.clone();
    let (ingress, stop) = engineless_ingress_with(&app, settings).await;
    let deploy = |body: Value| register_at(&app, &ingress, body);

    // A queue no worker serves: 503 at once, saying what builds need.
    let nobody =
        deploy(json!({"name": "lonely", "runtime": "shell", "source": "cat\n", "queue": "nobody"}))
            .await;
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
            .await;
            (r.status() != 503).then_some(r)
        },
    )
    .await;
    assert_eq!(created.status(), 201);
    let function: Value = created.json().await.unwrap();
    let installation = granda::docker::installation(&app.pool).await.unwrap();
    let image = format!(
        "{registry}/{}-fn/{installation}/built:v1",
        app.settings.amqp_prefix
    );
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
    .await;
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
    let accepted = four_calls_run_by(&app, "built", str::to_uppercase, &app.worker_id()).await;
    assert!(
        app.docker.inspect_image(&image).await.is_ok(),
        "pulled on host A"
    );
    settle(&app, &accepted, &engine_b, &runs).await;
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
    worker_process_with(app, id, host, queue, slots, &[])
}

/// [`worker_process`] with `extra` settings.
pub(crate) fn worker_process_with(
    app: &TestApp,
    id: &str,
    host: &str,
    queue: &str,
    slots: usize,
    extra: &[(&str, &str)],
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
        // These tests count one function's runs on every slot: no slot kept for other functions.
        .env("GRANDA_FAIR_SHARE", "false")
        .env("GRANDA_WORKER_LISTEN", "off")
        .env("GRANDA_STATE_DIR", &state)
        .env("DOCKER_HOST", host)
        .envs(extra.iter().copied())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(state.join("worker.log")).unwrap())
        .spawn()
        .expect("starting granda worker")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_host_killed_mid_burst_is_taken_over_within_10_s_and_its_containers_stopped() {
    let (mut app, engine_b, registry, runs) = on_hosts_a_and_b(|_| {}).await;
    let image = push(&app, &registry, "granda-test/sleep");
    const SLEEP_SECONDS: i64 = 20;
    app.register(
        "slow",
        &image,
        json!({"queue": "hosts-kill", "timeout_ms": 60_000,
               "env": {"SLEEP_SECONDS": SLEEP_SECONDS.to_string()}}),
    )
    .await;
    const BURST: usize = 6;
    let id_b = format!("{}-b", app.worker_id());
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
    for id in &accepted {
        let events = runs.of(*id);
        let on = |engine: &str, action: &str| -> Vec<_> {
            events
                .iter()
                .filter(|e| e.engine == engine && e.action == action)
                .collect()
        };
        let (starts, deaths) = (on("b", "start"), on("b", "die"));
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
    settle_all_slept_on(&app, &accepted, &engine_b, &runs, &worker_a).await;
    for docker in [&app.docker, &on_b] {
        remove_image(docker, &image).await;
    }
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_queue_served_by_hosts_a_and_b_is_shared_between_them() {
    const SLOTS: usize = 3;
    let (mut app, engine_b, registry, runs) = on_hosts_a_and_b(|s| {
        s.min_concurrency = SLOTS;
        s.max_concurrency = Some(SLOTS);
    })
    .await;
    // In the registry only: host B pulls it before its first run.
    let image = push(&app, &registry, "granda-test/sleep");
    app.register(
        "shared",
        &image,
        json!({"timeout_ms": 30_000, "env": {"SLEEP_SECONDS": "1"}}),
    )
    .await;
    let worker_b = add_worker_on_b(&mut app, &engine_b, |s| {
        s.min_concurrency = SLOTS;
        s.max_concurrency = Some(SLOTS);
    })
    .await;

    // A burst of async calls and sync calls at once, on the one queue both hosts serve.
    let mut accepted = vec![];
    for i in 0..24 {
        accepted.push(app.invoke_async("shared", format!("n{i}")).await);
    }
    let sync =
        futures_util::future::join_all((0..6).map(|i| app.invoke("shared", format!("s{i}")))).await;
    for response in sync {
        assert_eq!(response.status(), 200);
        accepted.push(id_of(&response));
        assert_eq!(response.text().await.unwrap(), "slept\n");
    }
    settle(&app, &accepted, &engine_b, &runs).await;

    // Both hosts ran their share: each at least a quarter of the calls, with equal slots.
    let by_worker: Vec<(Option<String>, i64)> =
        sqlx::query_as("SELECT worker, count(*) FROM invocations GROUP BY worker")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    let ran = |worker: &str| {
        by_worker
            .iter()
            .find(|(w, _)| w.as_deref() == Some(worker))
            .map_or(0, |(_, n)| *n as usize)
    };
    let (on_a, on_b) = (ran(&app.worker_id()), ran(&worker_b));
    eprintln!(
        "one queue on hosts A and B ({SLOTS} slots each): A ran {on_a}, B ran {on_b} of {}",
        accepted.len()
    );
    assert_eq!(on_a + on_b, accepted.len(), "{by_worker:?}");
    assert!(
        on_a >= accepted.len() / 4 && on_b >= accepted.len() / 4,
        "both hosts ran a fair share: {by_worker:?}"
    );
    // And the engines agree: each host's engine ran the containers of its worker's calls.
    for id in &accepted {
        let worker = app.invocation(*id).await["worker"]
            .as_str()
            .unwrap()
            .to_string();
        let engine = if worker == worker_b { "b" } else { "a" };
        let events = runs.of(*id);
        assert!(
            events.iter().any(|e| e.engine == engine
                && e.action == "die"
                && e.exit_code.as_deref() == Some("0")),
            "{id} ran on host {engine}: {events:?}"
        );
    }
    for docker in [&app.docker, &engine(&engine_b)] {
        remove_image(docker, &image).await;
    }
    app.shutdown().await;
}

/// Starts on `host`'s engine a container labelled as a run of worker `worker` of `app`'s
/// installation (invocation `invocation`), as the engine does for a request that worker made
/// just before it died. Returns when the engine has started it.
async fn late_container(app: &TestApp, host: &str, worker: &str, image: &str, invocation: &str) {
    let installation = granda::docker::installation(&app.pool).await.unwrap();
    let labels = [
        format!("{}={worker}", granda::docker::LABEL_WORKER),
        format!("{}={installation}", granda::docker::LABEL_INSTALLATION),
        format!("{}={invocation}", granda::docker::LABEL_INVOCATION),
    ];
    let mut args = vec!["run", "-d", "--network", "none", "-e", "SLEEP_SECONDS=60"];
    for label in &labels {
        args.extend(["--label", label.as_str()]);
    }
    args.push(image);
    docker_cli(Some(host), &args);
}

/// Nanoseconds since the epoch now, on this machine's clock (the engines' too).
pub(crate) fn now_ns() -> i64 {
    chrono::Utc::now().timestamp_nanos_opt().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_hosts_containers_are_stopped_when_its_lease_ends_though_the_survivor_is_full() {
    let (mut app, engine_b, registry, runs) = on_hosts_a_and_b(|_| {}).await;
    let image = push(&app, &registry, "granda-test/sleep");
    const SLEEP_SECONDS: u64 = 15;
    const SLOTS: usize = 4;
    app.register(
        "long",
        &image,
        json!({"queue": "hosts-full", "timeout_ms": 60_000,
               "env": {"SLEEP_SECONDS": SLEEP_SECONDS.to_string()}}),
    )
    .await;
    let id_b = format!("{}-b", app.worker_id());
    let mut worker_b = worker_process(&app, &id_b, &engine_b, "hosts-full", SLOTS);
    let on_b = engine(&engine_b);
    let pool = app.pool.clone();
    let running_on = move |ids: Vec<uuid::Uuid>, worker: String| {
        let pool = pool.clone();
        async move {
            let rows: Vec<(String, Option<String>)> =
                sqlx::query_as("SELECT status, worker FROM invocations WHERE id = ANY($1)")
                    .bind(&ids)
                    .fetch_all(&pool)
                    .await
                    .unwrap();
            rows.len() == ids.len()
                && rows
                    .iter()
                    .all(|(s, w)| s == "running" && w.as_deref() == Some(worker.as_str()))
        }
    };

    // Host B runs its share (nobody else serves the queue yet).
    let mut on_host_b = vec![];
    for i in 0..SLOTS {
        on_host_b.push(app.invoke_async("long", format!("b{i}")).await);
    }
    eventually(Duration::from_secs(60), "host B runs its share", || async {
        (running_on(on_host_b.clone(), id_b.clone()).await
            && leftovers(&on_b, &id_b).await.len() == SLOTS)
            .then_some(())
    })
    .await;

    // Host A's worker joins with as many slots, and fills them all with long runs of its own.
    let worker_a = app
        .add_worker(|s| {
            s.queues = vec!["hosts-full".into()];
            s.min_concurrency = SLOTS;
            s.max_concurrency = Some(SLOTS);
            s.fair_share = false;
        })
        .await;
    let mut on_host_a = vec![];
    for i in 0..SLOTS {
        on_host_a.push(app.invoke_async("long", format!("a{i}")).await);
    }
    eventually(Duration::from_secs(30), "host A is full", || async {
        running_on(on_host_a.clone(), worker_a.clone())
            .await
            .then_some(())
    })
    .await;

    // Host B dies. Its engine then starts a container B had asked for (after B's last beat).
    worker_b.kill().unwrap();
    let killed = now_ns();
    worker_b.wait().unwrap();
    let late = uuid::Uuid::new_v4();
    late_container(&app, &engine_b, &id_b, &image, &late.to_string()).await;

    // B's containers, the late one too, die on engine B within the lease plus BOUND of the kill,
    // stopped (not finished), while A's slots are all still busy with its own runs.
    const BOUND: Duration = Duration::from_secs(2);
    let lease = Duration::from_millis(app.settings.worker_lease_ms);
    assert_eq!(lease, Duration::from_secs(6), "the default lease");
    let died_on_b = |id: uuid::Uuid| {
        runs.of(id)
            .into_iter()
            .find(|e| e.engine == "b" && e.action == "die")
    };
    let all_b: Vec<uuid::Uuid> = on_host_b.iter().copied().chain([late]).collect();
    let deaths = eventually(
        Duration::from_secs(SLEEP_SECONDS + 10),
        "B's containers die on engine B",
        || async {
            all_b
                .iter()
                .map(|id| died_on_b(*id))
                .collect::<Option<Vec<_>>>()
        },
    )
    .await;
    assert!(
        running_on(on_host_a.clone(), worker_a.clone()).await,
        "host A was full all along"
    );
    let mut after = vec![];
    for (id, death) in all_b.iter().zip(&deaths) {
        assert_ne!(
            death.exit_code.as_deref(),
            Some("0"),
            "{id} was stopped: {death:?}"
        );
        let took = Duration::from_nanos((death.at_ns - killed).max(0) as u64);
        after.push(took);
        assert!(
            took <= lease + BOUND,
            "{id}'s container on B died {took:?} after the kill (lease {lease:?} + {BOUND:?})"
        );
    }

    // A container the engine starts even later (a slow request) is stopped too: the dead worker's
    // label is swept for a while after its lease ran out.
    let later = uuid::Uuid::new_v4();
    let started = now_ns();
    late_container(&app, &engine_b, &id_b, &image, &later.to_string()).await;
    let death = eventually(
        Duration::from_secs(30),
        "the later container dies",
        || async { died_on_b(later) },
    )
    .await;
    let later_took = Duration::from_nanos((death.at_ns - started).max(0) as u64);
    assert!(
        later_took <= BOUND,
        "a container started after the sweep began lived {later_took:?}"
    );
    eprintln!(
        "kill -9 of host B with host A full ({SLOTS} of {SLOTS} slots busy): B's containers died \
         {after:?} after the kill on engine B (lease {lease:?}); one started after the lease ran \
         out died {later_took:?} after its start"
    );

    // B's runs are run again on A as its slots free; each ran to its end exactly once.
    let accepted: Vec<uuid::Uuid> = on_host_b.iter().chain(&on_host_a).copied().collect();
    settle_all_slept_on(&app, &accepted, &engine_b, &runs, &worker_a).await;
    for docker in [&app.docker, &on_b] {
        remove_image(docker, &image).await;
    }
    app.shutdown().await;
}

/// A `granda worker` process of `app` (its database and queues) serving `queue` on `host`'s
/// engine, with its endpoints on a free port and `extra` settings. Returns it and their base URL.
fn worker_with_endpoints(
    app: &TestApp,
    id: &str,
    host: &str,
    queue: &str,
    extra: &[(&str, &str)],
) -> (GrandaProcess, String) {
    let listen = format!("127.0.0.1:{}", free_port());
    let mut env = vec![
        ("GRANDA_DATABASE_URL", app.settings.database_url.clone()),
        ("GRANDA_AMQP_URL", app.settings.amqp_url.clone()),
        ("GRANDA_AMQP_PREFIX", app.settings.amqp_prefix.clone()),
        ("GRANDA_WORKER_ID", id.to_string()),
        ("GRANDA_QUEUES", queue.to_string()),
        ("GRANDA_WORKER_LISTEN", listen.clone()),
        ("DOCKER_HOST", host.to_string()),
    ];
    env.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
    (
        GrandaProcess::spawn(&["worker"], &env),
        format!("http://{listen}"),
    )
}

/// `GET url`: the status and the body as JSON (`null` when it is not JSON).
async fn get_json(url: &str) -> (u16, Value) {
    let response = reqwest::get(url)
        .await
        .expect("the worker's endpoints answer");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// The value of the series `series` (name and labels, exactly) at `base`'s `/metrics`.
async fn sample(base: &str, series: &str) -> Option<f64> {
    // A worker's /metrics asks for an admin key, as the server's does (GRANDA_METRICS_AUTH).
    let response = crate::support::client_with_key(crate::support::ADMIN_KEY)
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap();
    let status = response.status();
    assert_eq!(status, 200, "the worker's /metrics");
    sample_of(response, series).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_whose_only_queue_has_its_breaker_open_is_not_ready_and_says_why() {
    let (app, engine_b, _, runs) = on_hosts_a_and_b(|s| s.max_concurrency = Some(2)).await;
    app.register("local", "granda-test/echo", json!({})).await;
    // Host B serves the same queue but may pull nothing: what it takes, it can't run.
    let id_b = format!("{}-b", app.worker_id());
    let (worker_b, base) = worker_with_endpoints(
        &app,
        &id_b,
        &engine_b,
        "default",
        &[("GRANDA_IMAGE_PULL", "never")],
    );
    worker_b.wait_healthy(&base, Duration::from_secs(30)).await;
    let ready = eventually(Duration::from_secs(30), "worker B ready", || async {
        let (status, body) = get_json(&format!("{base}/readyz")).await;
        (status == 200).then_some(body)
    })
    .await;
    assert_eq!(
        ready["checks"],
        json!({"postgres": "ok", "rabbitmq": "ok", "docker": "ok", "quorum": "ok"}),
        "{ready}"
    );
    assert_eq!(ready["breakers_open"], json!([]), "{ready}");
    let ready_series = format!("granda_worker_ready{{worker=\"{id_b}\"}}");
    let open_series = format!("granda_worker_breaker_open{{worker=\"{id_b}\",queue=\"default\"}}");

    // Calls until B has taken enough it can't run to open its breaker: it takes no work now.
    let accepted = std::sync::Mutex::new(vec![]);
    let not_ready = eventually(Duration::from_secs(60), "worker B not ready", || async {
        let id = app.invoke_async("local", "x").await;
        accepted.lock().unwrap().push(id);
        let (status, body) = get_json(&format!("{base}/readyz")).await;
        (status == 503).then_some(body)
    })
    .await;
    let accepted = accepted.into_inner().unwrap();
    assert_eq!(not_ready["ready"], false, "{not_ready}");
    assert_eq!(
        not_ready["breakers_open"],
        json!(["default"]),
        "{not_ready}"
    );
    assert_eq!(
        not_ready["reasons"],
        json!(["circuit breaker open on every queue it serves"]),
        "{not_ready}"
    );
    assert_eq!(not_ready["checks"]["rabbitmq"], "ok", "{not_ready}");
    assert_eq!(sample(&base, &ready_series).await, Some(0.0));
    assert_eq!(sample(&base, &open_series).await, Some(1.0));
    // Alive all along: a restart cures nothing here.
    assert_eq!(get_json(&format!("{base}/healthz")).await.0, 200);

    settle(&app, &accepted, &engine_b, &runs).await;
    for id in &accepted {
        assert_ne!(app.invocation(*id).await["worker"], id_b.as_str());
    }
    worker_b.sigterm();
    assert!(worker_b.wait_exit(Duration::from_secs(30)).await.is_some());
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn registering_an_image_only_one_host_can_get_is_answered_the_same_every_time() {
    let (mut app, engine_b, registry, runs) = on_hosts_a_and_b(|_| {}).await;
    let image = push(&app, &registry, "granda-test/echo");
    assert!(app.docker.inspect_image(&image).await.is_err());
    // Host A may pull nothing, so it can't have the image; host B pulls it from the registry.
    let worker_a = app
        .add_worker(|s| {
            s.queues = vec!["hosts-reg".into()];
            s.image_pull = granda::config::ImagePull::Never;
        })
        .await;
    let worker_b =
        add_worker_on_b(&mut app, &engine_b, |s| s.queues = vec!["hosts-reg".into()]).await;
    let mut settings = app.settings.clone();
    settings.image_pull_timeout_ms = 20_000;
    let (ingress, stop) = engineless_ingress_with(&app, settings).await;
    let deploy = |name: String, image: String| {
        register_at(
            &app,
            &ingress,
            json!({"name": name, "image": image, "queue": "hosts-reg"}),
        )
    };

    // Once both workers serve the queue, every registration of it is accepted, whichever
    // worker answers first (A answers at once that it can't).
    eventually(Duration::from_secs(60), "both workers answer", || async {
        let r = deploy("only-b".into(), image.clone()).await;
        (r.status() == 201).then_some(())
    })
    .await;
    for i in 0..6 {
        let r = deploy(format!("only-b-{i}"), image.clone()).await;
        let status = r.status();
        assert_eq!(status, 201, "try {i}: {}", r.text().await.unwrap());
    }

    // An image no host can have: 422, with each worker's reason; nothing registered.
    let none = format!("{registry}/granda-hosts/none:{}", app.worker_id());
    let refused = deploy("nowhere".into(), none).await;
    assert_eq!(refused.status(), 422);
    let body: Value = refused.json().await.unwrap();
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("worker {worker_a}"))
            && message.contains(&format!("worker {worker_b}")),
        "{body}"
    );
    assert_eq!(app.get("/v1/functions/nowhere").await.status(), 404);
    settle(&app, &[], &engine_b, &runs).await;
    let _ = stop.send(true);
    remove_image(&engine(&engine_b), &image).await;
    app.shutdown().await;
}
