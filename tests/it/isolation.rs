//! Isolation, proven from inside the container: pids, memory, CPU, read-only root, `/tmp`,
//! network, capabilities, user, runtime, secrets, and output floods.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::{TestApp, error_code, id_of, spawn_app};

/// Runs `script` in `granda-test/sh` registered as `name` with `extra` fields; returns the answer.
async fn run_script(app: &TestApp, name: &str, extra: Value, script: &str) -> reqwest::Response {
    let mut fields = json!({"input": "args"});
    fields
        .as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    app.register(name, "granda-test/sh", fields).await;
    app.invoke(name, json!([script]).to_string()).await
}

async fn stdout_of(response: reqwest::Response) -> String {
    let status = response.status();
    let body = response.text().await.unwrap();
    assert_eq!(status, 200, "{body}");
    body
}

/// `key=value` words of one line of output.
fn field<'a>(output: &'a str, key: &str) -> &'a str {
    output
        .split_whitespace()
        .find_map(|w| w.strip_prefix(key).and_then(|w| w.strip_prefix('=')))
        .unwrap_or_else(|| panic!("no {key}= in {output:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_bomb_hits_the_pids_limit_and_the_host_is_fine() {
    let app = spawn_app().await;
    // Forks until the engine refuses, then counts processes with shell builtins only (every
    // pid is taken), reads the limit, and kills the rest.
    let script = r#"( while :; do sleep 30 & done ) 2>/tmp/err
n=0; for p in /proc/[0-9]*; do n=$((n+1)); done
read max </sys/fs/cgroup/pids/pids.max
read err </tmp/err
kill -9 -1
echo "procs=$n max=$max err=$err""#;
    let out = stdout_of(run_script(&app, "forks", json!({"pids": 32}), script).await).await;
    assert_eq!(field(&out, "max"), "32", "{out}");
    let procs: u32 = field(&out, "procs").parse().unwrap();
    assert!((2..=32).contains(&procs), "{out}");
    assert!(out.contains("can't fork"), "{out}");

    // The classic bomb, against the default limit: it ends (timeout or failure), nothing stays.
    let bomb = run_script(
        &app,
        "bomb",
        json!({"timeout_ms": 3000, "cpus": 0.5}),
        "b() { b | b & }; b; sleep 10",
    )
    .await;
    assert!(
        [502, 504].contains(&bomb.status().as_u16()),
        "{}",
        bomb.status()
    );
    // The host is fine: it forks, and the next function runs at once.
    assert!(
        std::process::Command::new("true")
            .status()
            .unwrap()
            .success()
    );
    app.register("echo", "granda-test/echo", json!({})).await;
    let started = Instant::now();
    assert_eq!(
        stdout_of(app.invoke("echo", "still here").await).await,
        "still here"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    app.assert_no_containers_left(Duration::from_secs(15)).await;
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allocating_past_the_memory_limit_fails_the_run_as_out_of_memory() {
    let app = spawn_app().await;
    // dd allocates its whole block at once: 100 MiB in a 32 MiB box.
    let response = run_script(
        &app,
        "hog",
        json!({"memory_mb": 32}),
        "exec dd if=/dev/zero of=/dev/null bs=100M count=1",
    )
    .await;
    assert_eq!(response.status(), 502);
    let id = id_of(&response);
    let record = app.wait_final(id, Duration::from_secs(10)).await;
    assert_eq!(record["status"], "failed", "{record}");
    assert_eq!(record["exit_code"], 137, "{record}");
    // The engine's OOM flag, or (when the engine lost the event) the SIGKILL Granda did not send.
    let error = record["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error: {record}"));
    assert!(error.contains("out of memory"), "{error}");

    // Within the limit, the same allocation works, and the limits are the ones asked for.
    let script = r#"dd if=/dev/zero of=/dev/null bs=10M count=1 2>/dev/null && echo alloc=ok
read m </sys/fs/cgroup/memory/memory.limit_in_bytes; echo mem=$m
read q </sys/fs/cgroup/cpu/cpu.cfs_quota_us; read p </sys/fs/cgroup/cpu/cpu.cfs_period_us; echo quota=$q period=$p
read s </sys/fs/cgroup/memory/memory.swappiness; echo swappiness=$s"#;
    let out = stdout_of(
        run_script(
            &app,
            "limits",
            json!({"memory_mb": 48, "cpus": 0.5}),
            script,
        )
        .await,
    )
    .await;
    assert_eq!(field(&out, "alloc"), "ok", "{out}");
    assert_eq!(field(&out, "mem"), (48 * 1024 * 1024).to_string(), "{out}");
    let quota: f64 = field(&out, "quota").parse().unwrap();
    let period: f64 = field(&out, "period").parse().unwrap();
    assert!((quota / period - 0.5).abs() < 0.01, "{out}");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_root_is_read_only_and_tmp_is_a_capped_tmpfs() {
    let app = spawn_app().await;
    let script = r#"touch /x 2>/dev/null && echo root=writable || echo root=readonly
echo hi >/tmp/x && read t </tmp/x && echo tmp=$t
dd if=/dev/zero of=/tmp/big bs=1M count=20 2>/dev/null && echo cap=none || echo cap=hit
echo size=$(du -m /tmp/big | cut -f1)"#;
    let out = stdout_of(run_script(&app, "fs", json!({"tmp_mb": 8}), script).await).await;
    assert_eq!(field(&out, "root"), "readonly", "{out}");
    assert_eq!(field(&out, "tmp"), "hi", "{out}");
    assert_eq!(field(&out, "cap"), "hit", "{out}");
    assert!(field(&out, "size").parse::<u32>().unwrap() <= 8, "{out}");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_loopback_no_capabilities_no_new_privileges_and_not_root_when_asked() {
    let app = spawn_app().await;
    let script = r#"for i in $(tail -n +3 /proc/net/dev | cut -d: -f1); do echo iface=$i; done
grep -E '^(CapEff|CapBnd|CapPrm|NoNewPrivs):' /proc/self/status | tr -d ' \t' | tr ':' '='
echo uid=$(id -u)"#;
    let out = stdout_of(run_script(&app, "box", json!({}), script).await).await;
    let ifaces: Vec<&str> = out
        .lines()
        .filter_map(|l| l.strip_prefix("iface="))
        .collect();
    assert_eq!(ifaces, ["lo"], "{out}");
    assert_eq!(field(&out, "CapEff"), "0000000000000000", "{out}");
    assert_eq!(field(&out, "CapPrm"), "0000000000000000", "{out}");
    assert_eq!(field(&out, "CapBnd"), "0000000000000000", "{out}");
    assert_eq!(field(&out, "NoNewPrivs"), "1", "{out}");
    assert_eq!(
        field(&out, "uid"),
        "0",
        "the image's user by default: {out}"
    );

    let out = stdout_of(
        run_script(
            &app,
            "nobody",
            json!({"user": "65534"}),
            "echo $(id -u):$(id -g)",
        )
        .await,
    )
    .await;
    assert_eq!(out.trim(), "65534:65534", "a lone uid is its own gid too");
    let out = stdout_of(
        run_script(
            &app,
            "numeric",
            json!({"user": "1234:1234"}),
            "echo $(id -u):$(id -g)",
        )
        .await,
    )
    .await;
    assert_eq!(out.trim(), "1234:1234");

    for root in ["root", "0", "0:0", "root:x", "nobody", "65534:nogroup"] {
        let r = app
            .post_json(
                "/v1/functions",
                &json!({"name": "r", "image": "granda-test/sh", "user": root}),
            )
            .await;
        assert_eq!(error_code(r, 422).await, "invalid", "user {root}");
    }
    app.shutdown().await;
}

/// Inspects the container running invocation `id`, as soon as it runs.
async fn running_container(
    app: &TestApp,
    id: uuid::Uuid,
) -> bollard::models::ContainerInspectResponse {
    let started = Instant::now();
    let filters =
        std::collections::HashMap::from([("label", vec![format!("granda.invocation={id}")])]);
    loop {
        let options = bollard::query_parameters::ListContainersOptionsBuilder::new()
            .filters(&filters)
            .build();
        let listed = app.docker.list_containers(Some(options)).await.unwrap();
        if let Some(c) = listed.into_iter().find_map(|c| c.id) {
            match app
                .docker
                .inspect_container(
                    &c,
                    None::<bollard::query_parameters::InspectContainerOptions>,
                )
                .await
            {
                Ok(inspected) => return inspected,
                Err(e) => panic!("{e}: {}", app.invocation(id).await),
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no running container: {}",
            app.invocation(id).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_inspect_of_a_running_function_shows_its_settings() {
    let app = spawn_app().await;
    app.register(
        "sleepy",
        "granda-test/sleep",
        json!({"memory_mb": 48, "cpus": 0.25, "pids": 40, "tmp_mb": 16, "user": "65534",
               "container_runtime": "runc", "env": {"SLEEP_SECONDS": "3"}}),
    )
    .await;
    let id = app.invoke_async("sleepy", "").await;
    let c = running_container(&app, id).await;
    let host = c.host_config.unwrap();
    let config = c.config.unwrap();
    assert_eq!(host.memory, Some(48 * 1024 * 1024));
    assert_eq!(
        host.memory_swap,
        Some(48 * 1024 * 1024),
        "no swap beyond memory"
    );
    assert_eq!(host.nano_cpus, Some(250_000_000));
    assert_eq!(host.pids_limit, Some(40));
    assert_eq!(host.cap_drop, Some(vec!["ALL".to_string()]));
    assert!(host.cap_add.unwrap_or_default().is_empty());
    assert_eq!(
        host.security_opt,
        Some(vec!["no-new-privileges".to_string()])
    );
    assert_eq!(host.readonly_rootfs, Some(true));
    assert_eq!(host.privileged, Some(false));
    assert_eq!(host.network_mode.as_deref(), Some("none"));
    assert_eq!(host.runtime.as_deref(), Some("runc"));
    // The engine keeps a run's output, bounded (one file, no rotation kept), so that a survivor
    // can record a run whose worker died (issue 32).
    let log = host.log_config.unwrap();
    assert_eq!(log.typ.as_deref(), Some("local"));
    let log = log.config.unwrap();
    assert_eq!(log["max-file"], "1", "{log:?}");
    assert!(
        log["max-size"].parse::<u64>().unwrap() <= 64 * 1024 * 1024,
        "{log:?}"
    );
    let tmpfs = host.tmpfs.unwrap();
    assert!(tmpfs["/tmp"].contains("size=16m"), "{tmpfs:?}");
    assert!(host.binds.unwrap_or_default().is_empty(), "no host paths");
    assert!(c.mounts.unwrap_or_default().iter().all(|m| {
        m.source
            .as_deref()
            .is_none_or(|s| !s.contains("docker.sock"))
    }));
    assert_eq!(config.user.as_deref(), Some("65534:65534"));
    assert_eq!(config.network_disabled, Some(true));
    let record = app.wait_final(id, Duration::from_secs(15)).await;
    assert_eq!(record["status"], "succeeded", "{record}");

    // `network: "bridge"` is passed through. This engine may have no bridge, and the test
    // sends no traffic: the container the worker would run is created and inspected, not started.
    let bridged = app
        .register("bridged", "granda-test/sleep", json!({"network": "bridge"}))
        .await;
    assert_eq!(bridged["network"], "bridge");
    let function = granda::function::store::get(&app.pool, "bridged")
        .await
        .unwrap()
        .unwrap();
    let runner = granda::worker::container::Runner::new(
        app.docker.clone(),
        app.worker_id(),
        granda::worker::container::Caps {
            stdout: 1024,
            stderr: 1024,
        },
    );
    let config = runner
        .config(uuid::Uuid::now_v7(), &function.snapshot(), b"")
        .unwrap();
    let created = app
        .docker
        .create_container(
            None::<bollard::query_parameters::CreateContainerOptions>,
            config,
        )
        .await
        .unwrap();
    let c = app
        .docker
        .inspect_container(
            &created.id,
            None::<bollard::query_parameters::InspectContainerOptions>,
        )
        .await
        .unwrap();
    granda::worker::container::remove(&app.docker, &created.id).await;
    let host = c.host_config.unwrap();
    assert_eq!(host.network_mode.as_deref(), Some("bridge"));
    assert_eq!(
        host.cap_drop,
        Some(vec!["ALL".to_string()]),
        "the rest stays"
    );
    assert_eq!(c.config.unwrap().network_disabled, None);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fields_out_of_range_and_unknown_runtimes_are_refused() {
    let app = spawn_app().await;
    let cases = [
        json!({"pids": 0}),
        json!({"pids": 1_000_000}),
        json!({"tmp_mb": 0}),
        json!({"network": "host"}),
        json!({"network": "container:abc"}),
        json!({"container_runtime": "no-such-runtime"}),
        json!({"runtime": "../x"}),
        json!({"user": "a b"}),
        json!({"public": "yes"}),
        json!({"secrets": {"A": 1}}),
        json!({"secrets": {"GRANDA_X": "v"}}),
        json!({"env": {"A": "1"}, "secrets": {"A": "2"}}),
        // Env travels in the message header: it must fit the broker's frame.
        json!({"env": {"A": "x".repeat(30_000), "B": "x".repeat(30_000), "C": "x".repeat(30_000)}}),
    ];
    for extra in cases {
        let mut body = json!({"name": "f", "image": "granda-test/echo"});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let r = app.post_json("/v1/functions", &body).await;
        assert_eq!(r.status(), 422, "{extra}");
    }
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_reach_the_function_and_never_the_api() {
    let app = spawn_app().await;
    let secret = "s3cret-value-8d1f";
    let created = app
        .register(
            "env",
            "granda-test/env",
            json!({"env": {"PLAIN": "shown"}, "secrets": {"TOKEN": secret}}),
        )
        .await;
    assert_eq!(created["secrets"], json!(["TOKEN"]));
    assert_eq!(created["env"], json!({"PLAIN": "shown"}));
    assert!(!created.to_string().contains(secret));
    for path in ["/v1/functions/env", "/v1/functions"] {
        let text = app.get(path).await.text().await.unwrap();
        assert!(text.contains("TOKEN") && !text.contains(secret), "{text}");
    }
    let out = stdout_of(app.invoke("env", "").await).await;
    assert!(out.contains(&format!("TOKEN={secret}")), "{out}");

    // Sending back what was read keeps the secret; an object replaces them.
    let read: Value = app.get("/v1/functions/env").await.json().await.unwrap();
    let r = app
        .client
        .put(app.url("/v1/functions/env"))
        .json(&read)
        .send()
        .await
        .unwrap();
    let status = r.status();
    assert_eq!(status, 200, "{}", r.text().await.unwrap());
    let out = stdout_of(app.invoke("env", "").await).await;
    assert!(out.contains(&format!("TOKEN={secret}")), "{out}");
    let r = app
        .client
        .put(app.url("/v1/functions/env"))
        .json(&json!({"secrets": ["NOPE"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r, 422).await, "invalid");
    // A refused value is not echoed back.
    let r = app
        .client
        .put(app.url("/v1/functions/env"))
        .json(&json!({"secrets": {"TOKEN": format!("{secret}\u{0}")}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    assert!(!r.text().await.unwrap().contains(secret));
    let r = app
        .client
        .put(app.url("/v1/functions/env"))
        .json(&json!({"secrets": {}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let out = stdout_of(app.invoke("env", "").await).await;
    assert!(!out.contains("TOKEN="), "{out}");
    app.shutdown().await;
}

/// Resident memory of this process, in bytes.
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_printing_a_gigabyte_does_not_grow_the_worker() {
    let app = spawn_app_with_small_caps().await;
    app.register(
        "flood",
        "granda-test/sh",
        json!({"input": "args", "timeout_ms": 120_000, "env": {"MIB": std::env::var("FLOOD_MIB").unwrap_or("1024".into())}}),
    )
    .await;
    let before = rss();
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(before));
    let sampler = {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                peak.fetch_max(rss(), std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let started = Instant::now();
    let script = "dd if=/dev/zero bs=1M count=${MIB:-1024} 2>/dev/null; dd if=/dev/zero bs=1M count=64 >&2 2>/dev/null; head -c 64M /dev/zero >&2; echo done >&2";
    let id = app.invoke_async("flood", json!([script]).to_string()).await;
    let record = app.wait_final(id, Duration::from_secs(180)).await;
    let elapsed = started.elapsed();
    sampler.abort();
    assert_eq!(record["status"], "succeeded", "{record}");
    let output = record["output"].as_str().map(str::len);
    let output = output.or(record["output_base64"].as_str().map(|b| b.len() / 4 * 3));
    assert!(output.unwrap() <= 1024 * 1024, "stdout is cut at its cap");
    assert_eq!(record["output_truncated"], true);
    assert_eq!(record["logs_truncated"], true);
    assert!(record["logs"].as_str().unwrap().chars().count() <= 64 * 1024);
    let grown = peak.load(std::sync::atomic::Ordering::Relaxed) - before;
    eprintln!(
        "1 GiB + 128 MiB of output in {elapsed:?}; this process grew by at most {} MiB",
        grown / (1024 * 1024)
    );
    assert!(
        grown < 200 * 1024 * 1024,
        "grew by {grown} bytes while 1 GiB streamed past"
    );
    app.shutdown().await;
}

async fn spawn_app_with_small_caps() -> TestApp {
    crate::support::spawn_app_with(|s| {
        s.max_output_bytes = 1024 * 1024;
        s.max_log_bytes = 64 * 1024;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nul_bytes_on_stderr_still_make_a_final_record() {
    let app = spawn_app().await;
    let response = run_script(&app, "nul", json!({}), r"printf 'a\000b' >&2; exit 1").await;
    assert_eq!(response.status(), 502);
    let id = id_of(&response);
    let record = app.wait_final(id, Duration::from_secs(10)).await;
    assert_eq!(record["status"], "failed");
    assert_eq!(record["logs"], "a\u{FFFD}b");
    app.shutdown().await;
}
