//! A hostile function image or a poisoned message can't hurt a worker, the host, or another
//! installation: poisoned deliveries, root images, image `VOLUME`s, hot sockets swapped for
//! symlinks or filled, fork bombs, disk fillers, and two installations on one engine.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use granda::Work;
use granda::function::store as functions;
use granda::invocation::Trigger;
use serde_json::json;
use uuid::Uuid;

use crate::support::{TestApp, error_code, id_of, spawn_app, spawn_app_with};

/// Publishes `work` straight to the app's work queue (as a message the ingress never checked),
/// with a record for it, as the ingress would have written one.
async fn publish_raw(app: &TestApp, work: Work, body: &[u8]) {
    sqlx::query(
        "INSERT INTO invocations (id, function, status, trigger, input, input_size, queued_at, published_at)
         VALUES ($1, $2, 'queued', $3, $4, $5, now(), now())",
    )
    .bind(work.id)
    .bind(&work.function.name)
    .bind(work.trigger.as_str())
    .bind(body)
    .bind(body.len() as i32)
    .execute(&app.pool)
    .await
    .unwrap();
    let publisher = app.publisher().await;
    publisher.publish("default", &work, body).await.unwrap();
}

async fn containers_of_invocation(app: &TestApp, id: Uuid) -> Vec<String> {
    app.containers_labelled(&[&format!("granda.invocation={id}")])
        .await
}

/// Waits until invocation `id` ends failed or dead; returns its error.
async fn failure_of(app: &TestApp, id: Uuid, within: Duration) -> String {
    let record = app.wait_final(id, within).await;
    assert!(
        matches!(record["status"].as_str(), Some("failed" | "dead")),
        "{record}"
    );
    record["error"].as_str().unwrap_or_default().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poisoned_hot_message_ends_final_and_every_function_keeps_answering() {
    let app = spawn_app().await;
    app.register("hot", "granda-test/hot", json!({"mode": "hot"}))
        .await;
    app.register("echo", "granda-test/echo", json!({"timeout_ms": 5000}))
        .await;
    let mut function = functions::get(&app.pool, "hot")
        .await
        .unwrap()
        .unwrap()
        .snapshot();
    // What a webhook's event type or an event's topic carries to a hot function as a header.
    function.run.env.insert(
        "GRANDA_WEBHOOK_EVENT".into(),
        "\u{1}\r\nX-Injected: 1".into(),
    );
    let id = Uuid::now_v7();
    let work = Work {
        id,
        trigger: Trigger::Webhook,
        function,
        queued_at_ms: chrono::Utc::now().timestamp_millis(),
        reply_to: None,
        correlation_id: None,
        request: None,
        key_id: None,
    };
    publish_raw(&app, work, b"poison").await;

    let error = failure_of(&app, id, Duration::from_secs(30)).await;
    assert!(error.contains("header"), "a clear error: {error}");
    assert!(containers_of_invocation(&app, id).await.is_empty());

    // Every function still answers, within its run time, more calls than the worker's slots.
    let started = Instant::now();
    let calls: Vec<_> = (0..8)
        .map(|i| {
            let client = app.client.clone();
            let url = app.url("/v1/functions/echo/invoke");
            tokio::spawn(async move {
                client
                    .post(url)
                    .body(format!("call {i}"))
                    .send()
                    .await
                    .unwrap()
            })
        })
        .collect();
    for (i, call) in calls.into_iter().enumerate() {
        let response = call.await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.text().await.unwrap(), format!("call {i}"));
    }
    let hot = app.invoke("hot", "still here").await;
    assert_eq!(hot.status(), 200);
    assert_eq!(hot.text().await.unwrap(), "still here");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "answers took {:?}",
        started.elapsed()
    );
    app.shutdown().await;
}

/// Issue 14 (audit): the panic boundary, with panics made on purpose (`GRANDA_TEST_FAULTS`). A
/// run that panics half a second in is a platform failure: retried, then dead, its container
/// removed as the panic unwinds. A handler that panics after its claim gives the message back
/// until its last deliveries, then records it dead and dead-letters it. Other functions answer
/// within their run time throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_a_run_or_in_its_handler_is_settled_and_others_still_answer() {
    let app = spawn_app_with(|s| {
        s.test_faults = true;
        s.retry_base_ms = 100;
        s.retry_max_ms = 200;
    })
    .await;
    app.register(
        "panic-in-execute",
        "granda-test/sleep",
        json!({"env": {"SLEEP_SECONDS": "30"}, "max_attempts": 2}),
    )
    .await;
    app.register("panic-in-handle", "granda-test/echo", json!({}))
        .await;
    app.register("fine", "granda-test/echo", json!({})).await;
    let answers_in_time = || async {
        let started = Instant::now();
        let response = app.invoke("fine", "still here").await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.text().await.unwrap(), "still here");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "took {:?}",
            started.elapsed()
        );
    };

    let in_execute = app.invoke_async("panic-in-execute", "").await;
    let in_handle = app.invoke_async("panic-in-handle", "x").await;
    answers_in_time().await;

    // Both 30 s sleeps would still run, had their containers not gone with the panic.
    let record = app.wait_final(in_execute, Duration::from_secs(20)).await;
    assert_eq!(record["status"], "dead", "{record}");
    assert_eq!(record["attempt"], 2, "{record}");
    let error = record["error"].as_str().unwrap();
    assert!(error.contains("a panic inside execute"), "{error}");
    app.assert_no_containers_left(Duration::from_secs(10)).await;

    let record = app.wait_final(in_handle, Duration::from_secs(60)).await;
    assert_eq!(record["status"], "dead", "{record}");
    let error = record["error"].as_str().unwrap();
    assert!(error.contains("a panic inside handle"), "{error}");
    assert!(error.contains(" 19 times"), "{error}");
    // Both messages went to the dead-letter queue: the first as retries spent, the second
    // through the delivery limit.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let page: serde_json::Value = app.get("/v1/dead-letters").await.json().await.unwrap();
        if page["queue_depth"] == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "{page}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    answers_in_time().await;
    app.assert_no_containers_left(Duration::from_secs(10)).await;
    app.shutdown().await;
}

/// Registering a `granda-test/root` function to run as any of `users` is refused (422).
async fn assert_users_refused(app: &TestApp, users: &[&str]) {
    for user in users {
        let response = app
            .post_json(
                "/v1/functions",
                &json!({"name": "r", "image": "granda-test/root", "user": user}),
            )
            .await;
        assert_eq!(error_code(response, 422).await, "invalid", "{user:?}");
    }
}

/// Registers `name` on `granda-test/root` (which prints the `uid:gid` it runs as) with
/// `settings`: two runs in a row (a warm one reuses its container) both run as `ids`.
async fn assert_runs_as(app: &TestApp, name: &str, settings: serde_json::Value, ids: &str) {
    app.register(name, "granda-test/root", settings).await;
    for _ in 0..2 {
        let response = app.invoke(name, "").await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.text().await.unwrap(), format!("{ids}\n"), "{name}");
    }
}

/// Registers a hot function to run as `user`: its own process, seen from the host, runs as
/// `uid` and `gid`.
async fn assert_hot_runs_as(app: &TestApp, user: &str, uid: &str, gid: &str) {
    app.register(
        "hot",
        "granda-test/hot",
        json!({"mode": "hot", "user": user}),
    )
    .await;
    assert_eq!(app.invoke("hot", "x").await.status(), 200);
    let (uids, gids) = hot_process_ids(app).await;
    assert!(uids.iter().all(|u| u == uid), "{uids:?}");
    assert!(gids.iter().all(|g| g == gid), "{gids:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_warm_and_hot_all_run_as_the_functions_user_and_root_is_refused() {
    let app = spawn_app().await;
    assert_users_refused(
        &app,
        &[
            "0", "root", "0:0", "65534:0", "x:root", "00", " 0", "65534 :0",
        ],
    )
    .await;
    app.register("plain", "granda-test/root", json!({})).await;
    let response = app
        .put_json("/v1/functions/plain", &json!({"user": "65534:0"}))
        .await;
    assert_eq!(error_code(response, 422).await, "invalid");

    for mode in ["cold", "warm"] {
        assert_runs_as(
            &app,
            &format!("as-nobody-{mode}"),
            json!({"mode": mode, "user": "65534:65534"}),
            "65534:65534",
        )
        .await;
        // Unset, every mode runs as the image's user, as a cold run always did.
        assert_runs_as(
            &app,
            &format!("as-image-{mode}"),
            json!({"mode": mode}),
            "0:0",
        )
        .await;
    }

    // Hot: the function's own process, seen from the host.
    assert_hot_runs_as(&app, "1234:4321", "1234", "4321").await;
    app.shutdown().await;
}

/// The ids of the hot container's own process (`Uid:`/`Gid:` of /proc/<pid>/status).
async fn hot_process_ids(app: &TestApp) -> (Vec<String>, Vec<String>) {
    let hot = app.containers_labelled(&["granda.pool=hot"]).await;
    assert_eq!(hot.len(), 1);
    let pid = app
        .docker
        .inspect_container(&hot[0], None)
        .await
        .unwrap()
        .state
        .unwrap()
        .pid
        .unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let ids = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap()
            .split_whitespace()
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    (ids("Uid:"), ids("Gid:"))
}

/// Issue 14 (audit): the engine gives a uid its image's passwd does not name group 0, so
/// `"user": "1234"` ran as 1234:0. A lone uid now runs as uid:uid in every mode; names, which
/// the image resolves (to group 0 if it likes), are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_uid_never_runs_as_group_root_in_any_mode_and_names_are_refused() {
    let app = spawn_app().await;
    assert_users_refused(
        &app,
        &["nobody", "nobody:nogroup", "1234:users", "daemon:1234"],
    )
    .await;
    for mode in ["cold", "warm"] {
        assert_runs_as(
            &app,
            &format!("lone-uid-{mode}"),
            json!({"mode": mode, "user": "1234"}),
            "1234:1234",
        )
        .await;
    }
    assert_hot_runs_as(&app, "1234", "1234", "1234").await;
    app.shutdown().await;
}

/// The names of the volumes on `docker`'s engine.
async fn volume_names(docker: &bollard::Docker) -> HashSet<String> {
    docker
        .list_volumes(None::<bollard::query_parameters::ListVolumesOptions>)
        .await
        .unwrap()
        .volumes
        .unwrap_or_default()
        .into_iter()
        .map(|v| v.name)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_volume_is_a_capped_tmpfs_and_nothing_stays_on_the_host() {
    let app = spawn_app().await;
    let docker = app.docker.clone();
    let before = volume_names(&docker).await;
    for mode in ["cold", "warm"] {
        let name = format!("vol-{mode}");
        app.register(
            &name,
            "granda-test/volume",
            json!({"mode": mode, "tmp_mb": 8, "memory_mb": 64}),
        )
        .await;
        for _ in 0..2 {
            let response = app.invoke(&name, "").await;
            assert_eq!(response.status(), 200);
            let written: u32 = response.text().await.unwrap().trim().parse().unwrap();
            assert!(written <= 8, "{mode}: wrote {written} MB past an 8 MB cap");
        }
    }
    let response = app.delete("/v1/functions/vol-warm").await;
    assert!(response.status().is_success());
    app.shutdown().await;
    // Removed with their volumes, pool containers included (at shutdown).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let new: Vec<_> = volume_names(&docker)
            .await
            .difference(&before)
            .cloned()
            .collect();
        if new.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "volumes left behind: {new:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Registers `name` on `image`, which must be refused (422) and not stored; returns the message.
async fn refused_at_registration(app: &TestApp, name: &str, image: &str) -> String {
    let response = app
        .post_json("/v1/functions", &json!({"name": name, "image": image}))
        .await;
    assert_eq!(response.status(), 422);
    let body: serde_json::Value = response.json().await.unwrap();
    let message = body["error"]["message"].as_str().unwrap().to_string();
    assert_eq!(
        app.get(&format!("/v1/functions/{name}")).await.status(),
        404
    );
    message
}

/// A tag that was fine when registered and points at the hostile image by the first run: a fresh
/// tag of `granda-test/volume`, under which `later-{mode}` is registered for each of `modes`,
/// then pointed at `hostile`. Returns the tag (see [`remove_tag`]).
async fn register_then_retag(app: &TestApp, modes: &[&str], hostile: &str) -> String {
    let tag = format!("granda-test/retagged-{}", Uuid::new_v4().simple());
    let retag = |from: &str| {
        let status = std::process::Command::new("docker")
            .args(["tag", from, &tag])
            .status()
            .unwrap();
        assert!(status.success());
    };
    retag("granda-test/volume");
    for mode in modes {
        app.register(&format!("later-{mode}"), &tag, json!({"mode": mode}))
            .await;
    }
    retag(hostile);
    tag
}

/// Removes `tag` from the engine (best effort).
fn remove_tag(tag: &str) {
    let _ = std::process::Command::new("docker")
        .args(["rmi", tag])
        .status();
}

/// Issue 14 (audit): a `VOLUME` path with a `,` can't be a capped tmpfs, and the engine made it
/// an uncapped volume on the host's disk. Such an image is refused at registration (422), and at
/// run time in every mode when it turns up under a tag registered before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_volume_that_cant_be_capped_is_refused_at_registration_and_at_run() {
    let app = spawn_app().await;
    let message = refused_at_registration(&app, "comma", "granda-test/volume-comma").await;
    assert!(message.contains("VOLUME \"/data,size=100g\""), "{message}");

    let tag = register_then_retag(&app, &["cold", "warm", "hot"], "granda-test/volume-comma").await;
    let before = volume_names(&app.docker).await;
    for mode in ["cold", "warm", "hot"] {
        let id = app.invoke_async(&format!("later-{mode}"), "").await;
        let error = failure_of(&app, id, Duration::from_secs(60)).await;
        assert!(error.contains("declares VOLUME"), "{mode}: {error}");
    }
    app.assert_no_containers_left(Duration::from_secs(10)).await;
    let new: Vec<_> = volume_names(&app.docker)
        .await
        .difference(&before)
        .cloned()
        .collect();
    assert!(new.is_empty(), "volumes made: {new:?}");
    remove_tag(&tag);
    app.shutdown().await;
}

/// Issue 26: an image's `VOLUME "/q/../vN"` x16 is mounted where the engine puts it (`/vN`), so
/// every one is a tmpfs capped at `tmp_mb`. Keyed by the raw path, the tmpfs covered nothing and
/// some became uncapped volumes on the host's disk (6 MB written where the cap is 4).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_volumes_spelled_with_dotdot_are_capped_where_the_engine_mounts_them() {
    let app = spawn_app().await;
    for mode in ["cold", "warm"] {
        let name = format!("dotdot-{mode}");
        app.register(
            &name,
            "granda-test/volume-dotdot",
            json!({"mode": mode, "tmp_mb": 4, "memory_mb": 256}),
        )
        .await;
        for _ in 0..2 {
            let response = app.invoke(&name, "").await;
            assert_eq!(response.status(), 200);
            let text = response.text().await.unwrap();
            let written: Vec<u32> = text.lines().map(|l| l.trim().parse().unwrap()).collect();
            assert_eq!(written.len(), 16, "{mode}: {text}");
            // Each write stopped at the 4 MB cap (the image tries 6).
            assert!(written.iter().all(|&mb| mb == 4), "{mode}: {written:?}");
        }
    }
    app.shutdown().await;
}

/// Issue 26: an image declaring `VOLUME /proc` (a kernel filesystem) is refused at registration
/// with a 422 that says why, and at run time when it turns up under a tag registered before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_volume_on_a_kernel_filesystem_is_refused_at_registration_and_at_run() {
    let app = spawn_app().await;
    let message = refused_at_registration(&app, "procvol", "granda-test/volume-proc").await;
    assert!(message.contains("VOLUME \"/proc\""), "{message}");
    assert!(message.contains("kernel filesystem"), "{message}");

    let tag = register_then_retag(&app, &["cold"], "granda-test/volume-proc").await;
    let id = app.invoke_async("later-cold", "").await;
    let error = failure_of(&app, id, Duration::from_secs(60)).await;
    assert!(error.contains("kernel filesystem"), "{error}");
    app.assert_no_containers_left(Duration::from_secs(10)).await;
    remove_tag(&tag);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_socket_swapped_for_a_symlink_is_refused_and_never_followed() {
    let app = spawn_app().await;
    // A socket of the test's own, on the host: what the symlink points at. It must never be
    // connected to.
    let trap_dir = std::env::temp_dir().join(format!("granda-trap-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&trap_dir).unwrap();
    let trap_path = trap_dir.join("trap.sock");
    let trap = tokio::net::UnixListener::bind(&trap_path).unwrap();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counting = tokio::spawn({
        let accepted = accepted.clone();
        async move {
            while trap.accept().await.is_ok() {
                accepted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        }
    });
    let target = trap_path.to_string_lossy().into_owned();
    for (name, env) in [
        ("to-trap", json!({"TARGET": target})),
        ("to-engine", json!({})),
    ] {
        app.register(
            name,
            "granda-test/symlink",
            json!({"mode": "hot", "timeout_ms": 3000, "env": env}),
        )
        .await;
        let response = app.invoke(name, "hello").await;
        assert_eq!(response.status(), 502, "{name}");
        let record = app.invocation(id_of(&response)).await;
        assert_eq!(record["status"], "failed");
        let error = record["error"].as_str().unwrap_or_default();
        assert!(
            error.contains("symlink") && error.contains("refused"),
            "{name}: {record}"
        );
    }
    assert_eq!(
        accepted.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "the worker connected to what the symlink pointed at"
    );
    counting.abort();
    let _ = std::fs::remove_dir_all(&trap_dir);
    app.shutdown().await;
}

/// The socket directories of this app's hot containers, on the host.
async fn socket_dirs(app: &TestApp) -> Vec<std::path::PathBuf> {
    let root = app.socket_root().await;
    std::fs::read_dir(root)
        .map(|entries| entries.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_socket_directory_is_the_functions_own_and_capped() {
    use std::os::unix::fs::MetadataExt;
    let app = spawn_app().await;
    app.register(
        "filler",
        "granda-test/sockfill",
        json!({"mode": "hot", "timeout_ms": 6000, "env": {"MB": "16"}}),
    )
    .await;
    let id = app.invoke_async("filler", "").await;
    let (mut biggest, mut seen) = (0u64, false);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        for dir in socket_dirs(&app).await {
            if let Ok(meta) = std::fs::metadata(&dir) {
                assert_eq!(meta.mode() & 0o777, 0o700, "{dir:?}");
                assert_eq!(meta.uid(), 65534, "{dir:?}");
                seen = true;
            }
            if let Ok(fill) = std::fs::metadata(dir.join("fill")) {
                biggest = biggest.max(fill.len());
            }
        }
        let record = app.invocation(id).await;
        if !matches!(record["status"].as_str(), Some("queued" | "running")) {
            assert_eq!(record["status"], "failed", "it never listened: {record}");
            break;
        }
        assert!(Instant::now() < deadline, "still {record}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(seen, "the socket directory was never seen");
    assert!(
        biggest <= granda::worker::hot::SOCKET_DIR_BYTES,
        "{biggest} bytes written into the socket directory"
    );
    app.assert_no_containers_left(Duration::from_secs(20)).await;
    assert!(
        socket_dirs(&app).await.is_empty(),
        "socket directories left: {:?}",
        socket_dirs(&app).await
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_bomb_and_a_disk_filler_stay_in_their_limits() {
    let app = spawn_app().await;
    app.register(
        "bomb",
        "granda-test/forkbomb",
        json!({"pids": 32, "timeout_ms": 4000, "cpus": 0.5}),
    )
    .await;
    app.register("filler", "granda-test/diskfill", json!({"tmp_mb": 8}))
        .await;
    app.register("echo", "granda-test/echo", json!({})).await;
    let bomb = app.invoke_async("bomb", "").await;
    let filler = app.invoke("filler", "").await;
    assert_eq!(filler.status(), 200);
    let written: u32 = filler.text().await.unwrap().trim().parse().unwrap();
    assert!(written <= 8, "wrote {written} MB to an 8 MB /tmp");
    // While the bomb runs, other functions answer.
    for i in 0..3 {
        let response = app.invoke("echo", format!("{i}")).await;
        assert_eq!(response.status(), 200);
    }
    let record = app.wait_final(bomb, Duration::from_secs(30)).await;
    assert!(
        matches!(
            record["status"].as_str(),
            Some("succeeded" | "failed" | "timed_out")
        ),
        "{record}"
    );
    app.assert_no_containers_left(Duration::from_secs(20)).await;
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_installations_with_one_worker_id_leave_each_others_runs_alone() {
    let shared_id = format!("shared-{}", &Uuid::new_v4().simple().to_string()[..8]);
    let first = spawn_app_with(|s| s.worker_id = Some(shared_id.clone())).await;
    first
        .register(
            "long",
            "granda-test/sleep",
            json!({"timeout_ms": 60000, "env": {"SLEEP_SECONDS": "10"}}),
        )
        .await;
    first
        .register(
            "hot",
            "granda-test/hot",
            json!({"mode": "hot", "idle_timeout_ms": 120000}),
        )
        .await;
    let response = first.invoke("hot", "count").await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "1");
    let id = first.invoke_async("long", "").await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while containers_of_invocation(&first, id).await.is_empty() {
        assert!(Instant::now() < deadline, "the long run never started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A second installation (its own database and queues) with the same worker id starts on the
    // same engine: its start-up sweep and stray sweeps (every 5 s) run while the first's run does.
    let second = spawn_app_with(|s| s.worker_id = Some(shared_id.clone())).await;
    second.register("echo", "granda-test/echo", json!({})).await;
    assert_eq!(second.invoke("echo", "hi").await.status(), 200);
    let record = first.wait_final(id, Duration::from_secs(40)).await;
    assert_eq!(record["status"], "succeeded", "{record}");
    assert_eq!(record["output"], "slept\n");
    // The second's start cleared its own hot socket directories, not the first's: the first's
    // hot process still answers, the same one. (Its container's journal directory is there too.)
    let dirs = socket_dirs(&first).await;
    assert_eq!(
        dirs.iter()
            .filter(|d| d.join("granda.sock").exists())
            .count(),
        1,
        "the first's hot socket directory is gone: {dirs:?}"
    );
    assert_eq!(
        dirs.len(),
        2,
        "its socket and journal directories: {dirs:?}"
    );
    let response = first.invoke("hot", "count").await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "2");
    second.shutdown().await;
    first.shutdown().await;
}
