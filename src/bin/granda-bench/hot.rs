//! The warm and hot rows: sync latency and throughput against direct requests to the same kind
//! of process (an exec into a kept container, a request over the function's socket).

use super::*;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bollard::Docker;
use futures_util::StreamExt;
use granda::function::Snapshot;
use serde_json::json;
use tokio::io::AsyncWriteExt;
use uuid::Uuid;

/// Warm rows: sync latency with 1 client and throughput with 8, through Granda (`mode: warm`)
/// against a direct `exec` through the Docker API into one kept container.
pub(crate) async fn warm_rows(
    args: &Args,
    client: &reqwest::Client,
    base_url: &str,
    direct: &Direct,
) -> anyhow::Result<Vec<String>> {
    let created = client
        .post(format!("{base_url}/v1/functions"))
        .json(&json!({"name": "echo-warm", "image": args.image, "memory_mb": 64, "mode": "warm"}))
        .send()
        .await?;
    if created.status() != 201 {
        bail!("registering the warm function: {}", created.text().await?);
    }
    let call = |client: reqwest::Client| {
        let url = format!("{base_url}/fn/echo-warm");
        async move {
            let r = client.post(url).body("ping").send().await?;
            if r.status() != 200 || &r.bytes().await?[..] != b"ping" {
                bail!("warm call failed");
            }
            anyhow::Ok(())
        }
    };
    for _ in 0..3 {
        call(client.clone()).await?;
    }
    let state = std::env::temp_dir().join("granda-bench");
    let idle = granda::worker::pool::install_idle_binary(&state)?;
    let container = direct
        .runner
        .start_warm(&direct.function, &idle.to_string_lossy(), None)
        .await?;
    let exec = || direct_exec(&direct.docker, &container);
    for _ in 0..3 {
        exec().await?;
    }
    let mut granda_lat = Vec::new();
    let mut direct_lat = Vec::new();
    for _ in 0..args.runs {
        let t = Instant::now();
        call(client.clone()).await?;
        granda_lat.push(t.elapsed());
        let t = Instant::now();
        exec().await?;
        direct_lat.push(t.elapsed());
    }
    let per_client = 25;
    let t = Instant::now();
    futures_util::future::try_join_all((0..8).map(|_| {
        let client = client.clone();
        async move {
            for _ in 0..per_client {
                call(client.clone()).await?;
            }
            anyhow::Ok(())
        }
    }))
    .await?;
    let granda_rate = (8 * per_client) as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    futures_util::future::try_join_all((0..8).map(|_| async {
        for _ in 0..per_client {
            exec().await?;
        }
        anyhow::Ok(())
    }))
    .await?;
    let direct_rate = (8 * per_client) as f64 / t.elapsed().as_secs_f64();
    granda::worker::container::remove(&direct.docker, &container).await;
    let (g50, g95) = (percentile(&granda_lat, 50), percentile(&granda_lat, 95));
    let (d50, d95) = (percentile(&direct_lat, 50), percentile(&direct_lat, 95));
    Ok(vec![
        latency_row(
            "warm sync p50, 1 client, vs direct exec (ms)",
            (g50, d50),
            1,
            "≤ 1.20",
        ),
        latency_row("warm sync p95, 1 client (ms)", (g95, d95), 1, ""),
        format!(
            "| warm throughput, 8 clients (calls/s) | {granda_rate:.1} | {direct_rate:.1} | {:.2} | |",
            granda_rate / direct_rate
        ),
    ])
}

/// One `cat` exec with stdin through the Docker API, its output read and its exit code checked.
pub(crate) async fn direct_exec(docker: &Docker, container: &str) -> anyhow::Result<()> {
    let exec = docker
        .create_exec(
            container,
            bollard::exec::CreateExecOptions::<String> {
                attach_stdin: Some(true),
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                cmd: Some(vec!["cat".into()]),
                ..Default::default()
            },
        )
        .await?;
    let bollard::exec::StartExecResults::Attached {
        mut output,
        mut input,
    } = docker.start_exec(&exec.id, None).await?
    else {
        bail!("exec detached");
    };
    input.write_all(b"ping").await?;
    input.shutdown().await?;
    let mut out = Vec::new();
    while let Some(chunk) = output.next().await {
        out.extend_from_slice(&chunk?.into_bytes());
    }
    let inspected = docker.inspect_exec(&exec.id).await?;
    if out != b"ping" || inspected.exit_code != Some(0) {
        bail!("direct exec returned {out:?}");
    }
    Ok(())
}

/// Hot rows: sync latency with 1 client and throughput with 8, through Granda (`mode: hot`)
/// against requests straight to a hot container of the same image over its socket, and a check
/// that every call through Granda was recorded in Postgres.
pub(crate) async fn hot_rows(
    args: &Args,
    client: &reqwest::Client,
    base_url: &str,
    address: std::net::SocketAddr,
    pool: &sqlx::PgPool,
    direct: &Direct,
) -> anyhow::Result<Vec<String>> {
    granda::docker::ensure_image(&direct.docker, &args.hot_image).await?;
    let created = client
        .post(format!("{base_url}/v1/functions"))
        .json(&json!({"name": "echo-hot", "image": args.hot_image, "memory_mb": 64, "mode": "hot"}))
        .send()
        .await?;
    if created.status() != 201 {
        bail!("registering the hot function: {}", created.text().await?);
    }
    let lean = || Lean::connect(address, "/fn/echo-hot", b"ping");
    let mut one = lean().await?;

    // The same process, asked directly: what the function itself costs.
    let function = Snapshot {
        name: "echo-hot".into(),
        run: granda::function::RunSpec {
            image: args.hot_image.clone(),
            mode: granda::function::Mode::Hot,
            ..direct.function.run.clone()
        },
        ..direct.function.clone()
    };
    let sockets = std::env::temp_dir().join("granda-bench-hot");
    std::fs::create_dir_all(&sockets)?;
    let owner = direct.runner.hot_owner(&function).await?;
    let dir = granda::worker::hot::socket_dir(&sockets, owner)?;
    let container = direct.runner.start_hot(&function, &dir, None).await?;
    let connect = || {
        granda::worker::hot::wait_ready(
            &direct.docker,
            &container,
            &dir,
            owner,
            Duration::from_secs(10),
        )
    };
    let mut connection = connect().await?;
    for _ in 0..20 {
        one.expect(b"ping").await?;
        ask(&mut connection, &function).await?;
    }

    let n = args.hot_calls;
    let mut granda_lat = Vec::with_capacity(n);
    let mut direct_lat = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        one.expect(b"ping").await?;
        granda_lat.push(t.elapsed());
        let t = Instant::now();
        ask(&mut connection, &function).await?;
        direct_lat.push(t.elapsed());
    }

    let clients = 8;
    let mut leans = Vec::new();
    for _ in 0..clients {
        leans.push(lean().await?);
    }
    // Each client is a task on the runtime, as the ingress's connections are.
    let cpu_before = crate::cpu::Cpu::now();
    let t = Instant::now();
    let running: Vec<_> = leans
        .into_iter()
        .map(|mut lean| {
            tokio::spawn(async move {
                for _ in 0..n {
                    lean.expect(b"ping").await?;
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for client in running {
        client.await??;
    }
    let granda_rate = (clients * n) as f64 / t.elapsed().as_secs_f64();
    let [granda_ms, rabbitmq_ms, postgres_ms] =
        crate::cpu::Cpu::now().per_call_ms(&cpu_before, (clients * n) as u64);
    // The floor: a bare `GET /healthz` round trip on the same server, from the same clients.
    let mut probes = Vec::new();
    for _ in 0..clients {
        probes.push(Lean::get(address, "/healthz").await?);
    }
    let cpu_before = crate::cpu::Cpu::now();
    let running: Vec<_> = probes
        .into_iter()
        .map(|mut lean| {
            tokio::spawn(async move {
                for _ in 0..n {
                    let (status, _) = lean.call().await?;
                    if status != 200 {
                        bail!("/healthz answered {status}");
                    }
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for client in running {
        client.await??;
    }
    let [healthz_ms, _, _] = crate::cpu::Cpu::now().per_call_ms(&cpu_before, (clients * n) as u64);
    let mut connections = Vec::new();
    for _ in 0..clients {
        connections.push(connect().await?);
    }
    let t = Instant::now();
    futures_util::future::try_join_all(connections.iter_mut().map(|connection| async {
        for _ in 0..n {
            ask(connection, &function).await?;
        }
        anyhow::Ok(())
    }))
    .await?;
    let direct_rate = (clients * n) as f64 / t.elapsed().as_secs_f64();
    drop(connections);
    drop(connection);
    granda::worker::container::remove(&direct.docker, &container).await;
    granda::worker::hot::remove_socket_dir(&dir);

    // Every call through Granda must be in Postgres, final.
    let made = (20 + n + clients * n) as i64;
    let (recorded,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM invocations WHERE function = 'echo-hot' AND status = 'succeeded'",
    )
    .fetch_one(pool)
    .await?;

    let (g50, g95) = (percentile(&granda_lat, 50), percentile(&granda_lat, 95));
    let (d50, d95) = (percentile(&direct_lat, 50), percentile(&direct_lat, 95));
    Ok(vec![
        latency_row(
            "hot sync p50, 1 client, vs a direct socket request (ms)",
            (g50, d50),
            2,
            "Granda ≤ 3 ms",
        ),
        latency_row("hot sync p95, 1 client (ms)", (g95, d95), 2, ""),
        format!(
            "| hot throughput, {clients} clients (calls/s) | {granda_rate:.0} | {direct_rate:.0} | {:.2} | Granda ≥ 1000 |",
            granda_rate / direct_rate
        ),
        format!("| hot calls recorded succeeded in Postgres | {recorded} of {made} | | | all |"),
        format!(
            "| CPU per recorded hot call, {clients} clients: this process (Granda and its clients) against a bare /healthz (ms) | {granda_ms:.3} | {healthz_ms:.3} | {:.1} | |",
            granda_ms / healthz_ms
        ),
        format!("| CPU per recorded hot call: RabbitMQ (ms) | {rabbitmq_ms:.3} | | | |"),
        format!("| CPU per recorded hot call: Postgres (ms) | {postgres_ms:.3} | | | |"),
        format!(
            "| CPU per recorded hot call: all three (ms) | {:.3} | | | ≤ 0.85 |",
            granda_ms + rabbitmq_ms + postgres_ms
        ),
    ])
}

/// Body-size rows: p50 of a sync hot call with a 1, 16 and 64 KiB body, with 1 client and with 8,
/// each against the 1 KiB call of the same run: a large body must cost its bytes, no more (no
/// 40 ms delayed-ACK stall per statement, as TLS to a local Postgres without `TCP_NODELAY` gave).
pub(crate) async fn body_rows(
    args: &Args,
    address: std::net::SocketAddr,
    pool: &sqlx::PgPool,
) -> anyhow::Result<Vec<String>> {
    let n = (args.hot_calls / 5).max(20);
    let mut rows = Vec::new();
    for clients in [1usize, 8] {
        let mut base = None;
        for kib in [1usize, 16, 64] {
            // Base64-like text from a fixed generator: it compresses as such bodies do (to
            // about 3/4), not as a repeated pattern would.
            const ALPHABET: &[u8] =
                b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
            let mut state = 0x2545_f491_4f6c_dd1du64;
            let body: Vec<u8> = (0..kib * 1024)
                .map(|_| {
                    state = state.wrapping_mul(6364136223846793005).wrapping_add(1);
                    ALPHABET[(state >> 58) as usize]
                })
                .collect();
            let mut leans = Vec::new();
            for _ in 0..clients {
                let mut lean = Lean::connect(address, "/fn/echo-hot", &body).await?;
                lean.expect(&body).await?;
                leans.push(lean);
            }
            let running: Vec<_> = leans
                .into_iter()
                .map(|mut lean| {
                    let body = body.clone();
                    tokio::spawn(async move {
                        let mut lat = Vec::with_capacity(n);
                        for _ in 0..n {
                            let t = Instant::now();
                            lean.expect(&body).await?;
                            lat.push(t.elapsed());
                        }
                        anyhow::Ok(lat)
                    })
                })
                .collect();
            let mut lat = Vec::new();
            for client in running {
                lat.extend(client.await??);
            }
            let p50 = percentile(&lat, 50);
            let base50 = *base.get_or_insert(p50);
            rows.push(format!(
                "| hot sync p50, {kib} KiB body, {clients} client{} (ms) | {:.2} | {:.2} (1 KiB) | {:.2} | ≤ 2.00 |",
                if clients == 1 { "" } else { "s" },
                p50.as_secs_f64() * 1e3,
                base50.as_secs_f64() * 1e3,
                p50.as_secs_f64() / base50.as_secs_f64()
            ));
        }
    }
    // What a record of each size takes in Postgres (the row, its input and output as stored).
    for kib in [1i32, 16, 64] {
        let (bytes,): (Option<f64>,) = sqlx::query_as(
            "SELECT avg(pg_column_size(i.*))::float8 FROM invocations i
             WHERE function = 'echo-hot' AND length(input) = $1",
        )
        .bind(kib * 1024)
        .fetch_one(pool)
        .await?;
        rows.push(format!(
            "| bytes per record, {kib} KiB body in and out | {:.0} | {} (bodies) | {:.2} | |",
            bytes.unwrap_or(0.0),
            2 * kib * 1024,
            bytes.unwrap_or(0.0) / f64::from(2 * kib * 1024)
        ));
    }
    Ok(rows)
}

/// One request straight to a hot process over its socket; an echo must give the input back.
pub(crate) async fn ask(
    connection: &mut granda::worker::hot::Connection,
    function: &Snapshot,
) -> anyhow::Result<()> {
    let call = granda::worker::hot::Call {
        id: Uuid::now_v7(),
        function,
        trigger: granda::invocation::Trigger::Sync,
        attempt: 1,
        deadline_ms: chrono::Utc::now().timestamp_millis() + 30_000,
        input: b"ping",
        request: None,
    };
    let answer = connection.call(call, 1 << 20).await?;
    if answer.status != 200 || answer.body != b"ping" {
        bail!("direct hot call returned {answer:?}");
    }
    Ok(())
}

/// A minimal HTTP/1.1 client on one kept-alive connection, one request at a time (as wrk is):
/// the load generator's own cost is not Granda's, so it does no more than a request needs.
pub(crate) struct Lean {
    stream: tokio::net::TcpStream,
    request: Vec<u8>,
    buf: Vec<u8>,
}

impl Lean {
    /// A client that POSTs `body` to `path` with the bench's key, each time [`Lean::call`] runs.
    pub(crate) async fn connect(
        addr: std::net::SocketAddr,
        path: &str,
        body: &[u8],
    ) -> anyhow::Result<Lean> {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let mut request = format!(
            "POST {path} HTTP/1.1\r\nHost: granda\r\nAuthorization: Bearer {BENCH_KEY}\r\n\
             Content-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        request.extend_from_slice(body);
        Ok(Lean {
            stream,
            request,
            buf: Vec::with_capacity(4096),
        })
    }

    /// A client that GETs `path` (no key: `/healthz` needs none).
    pub(crate) async fn get(addr: std::net::SocketAddr, path: &str) -> anyhow::Result<Lean> {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Lean {
            stream,
            request: format!("GET {path} HTTP/1.1\r\nHost: granda\r\n\r\n").into_bytes(),
            buf: Vec::with_capacity(4096),
        })
    }

    /// Sends the request and reads the answer: its status and body (Content-Length framed).
    pub(crate) async fn call(&mut self) -> anyhow::Result<(u16, &[u8])> {
        use tokio::io::AsyncReadExt;
        self.stream.write_all(&self.request).await?;
        self.buf.clear();
        let (head_end, length) = loop {
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                bail!("the server closed the connection");
            }
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = std::str::from_utf8(&self.buf[..end])?;
                let length = head
                    .lines()
                    .find_map(|l| {
                        let (name, value) = l.split_once(':')?;
                        name.eq_ignore_ascii_case("content-length")
                            .then(|| value.trim().parse::<usize>().ok())?
                    })
                    .context("an answer without Content-Length")?;
                break (end + 4, length);
            }
        };
        while self.buf.len() < head_end + length {
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                bail!("the server closed the connection mid-answer");
            }
        }
        let status = std::str::from_utf8(&self.buf[..head_end])?
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .context("an answer without a status")?;
        Ok((status, &self.buf[head_end..head_end + length]))
    }

    /// [`Lean::call`], which must answer 200 with `expected`.
    async fn expect(&mut self, expected: &[u8]) -> anyhow::Result<()> {
        let (status, body) = self.call().await?;
        if status != 200 || body != expected {
            bail!(
                "hot call answered {status}: {}",
                String::from_utf8_lossy(body)
            );
        }
        Ok(())
    }
}
