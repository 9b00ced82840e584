//! `spawn_app()`: a whole Granda (ingress + worker) in-process, on port 0, with its own database,
//! its own RabbitMQ queue names and its own worker id, against the real services.

use std::collections::HashMap;
use std::sync::Once;
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::query_parameters::ListContainersOptionsBuilder;
use granda::broker::Topology;
use granda::config::Settings;
use granda::worker::Worker;
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::sync::watch;
use uuid::Uuid;

/// The Postgres server tests create their databases on.
pub fn postgres_base() -> String {
    std::env::var("GRANDA_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://root@127.0.0.1:5432".into())
}

pub fn amqp_url() -> String {
    std::env::var("GRANDA_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// The admin key every test app accepts; `TestApp::client` sends it on every request.
pub const ADMIN_KEY: &str = "gk_test-admin-key-0123456789abcdef";

static IMAGES: Once = Once::new();

/// Builds the test images once per test binary (a no-op when they exist).
pub fn ensure_test_images() {
    IMAGES.call_once(|| {
        let status = std::process::Command::new("bash")
            .args(["scripts/build-test-images.sh", "--quiet"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("running scripts/build-test-images.sh");
        assert!(status.success(), "building the test images failed");
    });
}

pub struct TestApp {
    pub address: String,
    pub client: reqwest::Client,
    pub pool: PgPool,
    pub settings: Settings,
    pub docker: Docker,
    db_name: String,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// Like [`spawn_app`], with settings changed by `tweak` first.
pub async fn spawn_app_with(tweak: impl FnOnce(&mut Settings)) -> TestApp {
    granda::tls::install_provider();
    ensure_test_images();
    if std::env::var_os("RUST_LOG").is_some() {
        granda::telemetry::init();
    }
    let tag = Uuid::new_v4().simple().to_string()[..12].to_string();
    let db_name = format!("granda_test_{tag}");
    let mut settings = Settings::from_env();
    settings.listen = "127.0.0.1:0".parse().unwrap();
    settings.database_url = format!("{}/{db_name}", postgres_base());
    settings.amqp_url = amqp_url();
    settings.amqp_prefix = format!("granda-test-{tag}");
    settings.worker_id = Some(format!("test-{tag}"));
    settings.max_concurrency = Some(4);
    settings.shutdown_grace_ms = 5_000;
    settings.auth = granda::config::AuthMode::On;
    settings.admin_key = Some(granda::keys::Secret(ADMIN_KEY.to_string()));
    tweak(&mut settings);

    let pool = granda::db::connect_and_migrate(&settings.database_url)
        .await
        .expect("Postgres must be reachable for the tests");
    let granda::Up { app, worker } = granda::Up::build(&settings, pool.clone())
        .await
        .expect("RabbitMQ and the Docker engine must be reachable for the tests");
    let address = format!("http://{}", app.local_addr());
    let (stop, stopped) = watch::channel(false);
    let signal = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let tasks = vec![
        tokio::spawn(app.run(signal(stopped.clone()))),
        tokio::spawn(worker.run(signal(stopped.clone()))),
    ];
    let docker = granda::docker::connect(settings.docker_host.as_deref(), 120).unwrap();
    TestApp {
        address,
        client: client_with_key(ADMIN_KEY),
        pool,
        settings,
        docker,
        db_name,
        stop,
        tasks,
    }
}

/// A client that sends `key` as its bearer token on every request.
pub fn client_with_key(key: &str) -> reqwest::Client {
    granda::tls::install_provider();
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {key}").parse().unwrap(),
    );
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .unwrap()
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    pub fn worker_id(&self) -> String {
        self.settings.worker_id.clone().unwrap()
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .expect("request")
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .send()
            .await
            .expect("request")
    }

    /// GETs `path` and parses the answer as JSON (whatever its status).
    pub async fn get_json(&self, path: &str) -> Value {
        self.get(path).await.json().await.expect("a JSON body")
    }

    pub async fn put_json(&self, path: &str, body: &Value) -> reqwest::Response {
        self.client
            .put(self.url(path))
            .json(body)
            .send()
            .await
            .expect("request")
    }

    pub async fn delete(&self, path: &str) -> reqwest::Response {
        self.client
            .delete(self.url(path))
            .send()
            .await
            .expect("DELETE")
    }

    /// POSTs raw `body` with `headers` (name, value pairs).
    pub async fn post_with(
        &self,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<reqwest::Body>,
    ) -> reqwest::Response {
        let mut request = self.client.post(self.url(path)).body(body);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.send().await.expect("request")
    }

    /// The `/metrics` text.
    pub async fn metrics(&self) -> String {
        self.get("/metrics").await.text().await.unwrap()
    }

    /// A function's invocation records, newest first.
    pub async fn invocations_of(&self, function: &str) -> Vec<Value> {
        let page: Value = self
            .get(&format!("/v1/functions/{function}/invocations"))
            .await
            .json()
            .await
            .unwrap();
        page["invocations"].as_array().unwrap().clone()
    }

    /// Registers `name` with `image` and extra fields; panics unless 201.
    pub async fn register(&self, name: &str, image: &str, extra: Value) -> Value {
        let mut body = json!({"name": name, "image": image});
        if let Value::Object(extra) = extra {
            body.as_object_mut().unwrap().extend(extra);
        }
        let response = self.post_json("/v1/functions", &body).await;
        let status = response.status();
        let body: Value = response.json().await.unwrap();
        assert_eq!(status, 201, "registering {name}: {body}");
        body
    }

    pub async fn invoke(&self, name: &str, body: impl Into<reqwest::Body>) -> reqwest::Response {
        self.client
            .post(self.url(&format!("/v1/functions/{name}/invoke")))
            .body(body)
            .send()
            .await
            .expect("request")
    }

    /// Async invoke; panics unless 202. Returns the invocation id.
    pub async fn invoke_async(&self, name: &str, body: impl Into<reqwest::Body>) -> Uuid {
        let response = self
            .client
            .post(self.url(&format!("/v1/functions/{name}/invocations")))
            .body(body)
            .send()
            .await
            .expect("request");
        let status = response.status();
        let body: Value = response.json().await.unwrap();
        assert_eq!(status, 202, "{body}");
        body["id"].as_str().unwrap().parse().unwrap()
    }

    pub async fn invocation(&self, id: Uuid) -> Value {
        let response = self.get(&format!("/v1/invocations/{id}")).await;
        assert_eq!(response.status(), 200);
        response.json().await.unwrap()
    }

    /// Polls the record until it is final or `within` passes (then panics).
    pub async fn wait_final(&self, id: Uuid, within: Duration) -> Value {
        let start = Instant::now();
        loop {
            let record = self.invocation(id).await;
            let status = record["status"].as_str().unwrap().to_string();
            if !matches!(status.as_str(), "queued" | "running") {
                return record;
            }
            assert!(
                start.elapsed() < within,
                "invocation {id} still {status} after {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Containers of this app's worker that exist now.
    pub async fn containers(&self) -> Vec<String> {
        self.containers_labelled(&[]).await
    }

    /// Containers of this app's worker that also carry every label in `more` (`key=value`).
    pub async fn containers_labelled(&self, more: &[&str]) -> Vec<String> {
        let label = format!("granda.worker={}", self.worker_id());
        let mut labels = vec![label.as_str()];
        labels.extend_from_slice(more);
        let filters = HashMap::from([("label", labels)]);
        let options = ListContainersOptionsBuilder::new()
            .all(true)
            .filters(&filters)
            .build();
        self.docker
            .list_containers(Some(options))
            .await
            .unwrap()
            .into_iter()
            .filter_map(|c| c.id)
            .collect()
    }

    /// This app's worker's directory of hot socket directories, on the host.
    pub async fn socket_root(&self) -> std::path::PathBuf {
        let installation = granda::docker::installation(&self.pool).await.unwrap();
        granda::worker::pool::socket_root(
            &self.settings.state_dir,
            &installation,
            &self.worker_id(),
        )
    }

    /// Waits until this worker has no container left; panics after `within`.
    pub async fn assert_no_containers_left(&self, within: Duration) {
        let start = Instant::now();
        loop {
            let left = self.containers().await;
            if left.is_empty() {
                return;
            }
            assert!(start.elapsed() < within, "containers left behind: {left:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Starts one more in-process worker on this app's database and queues, with settings changed
    /// by `tweak` (give it its own `worker_id`). It stops with the app.
    pub async fn add_worker(&mut self, tweak: impl FnOnce(&mut Settings)) -> String {
        let mut settings = self.settings.clone();
        settings.worker_id = Some(format!("{}-{}", self.worker_id(), self.tasks.len()));
        tweak(&mut settings);
        let worker = Worker::build(&settings, self.pool.clone()).await.unwrap();
        let id = worker.id().to_string();
        let mut rx = self.stop.subscribe();
        self.tasks.push(tokio::spawn(worker.run(async move {
            let _ = rx.wait_for(|s| *s).await;
        })));
        id
    }

    /// The value of a gauge in `/metrics`, e.g. `granda_worker_concurrency_target{worker="…"}`.
    pub async fn metric(&self, series: &str) -> Option<f64> {
        sample_of(self.get("/metrics").await, series).await
    }

    /// Tells the ingress and the worker to stop, and waits for each (at most 10 s): how long
    /// that took. [`TestApp::shutdown`] then only cleans up.
    pub async fn stop(&mut self) -> Duration {
        let began = Instant::now();
        let _ = self.stop.send(true);
        for (task, what) in self.tasks.drain(..).zip(["ingress", "worker"]) {
            if tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .is_err()
            {
                eprintln!("teardown: the {what} did not stop within 10 s of its signal");
            }
        }
        began.elapsed()
    }

    /// Stops ingress and worker, and removes this app's database and queues.
    /// Stops the ingress and the worker (each must within 10 s), then removes the test's queues
    /// and database. Every step is bounded: a teardown that stalls says which step did, and the
    /// test goes on.
    pub async fn shutdown(mut self) {
        self.stop().await;
        step("closing the pool", self.pool.close()).await;
        let (settings, db_name) = (&self.settings, &self.db_name);
        step("removing the queues", async move {
            if let Ok(connection) =
                granda::broker::connect(&settings.amqp_url, "test-cleanup").await
            {
                let topology = Topology::new(&settings.amqp_prefix);
                let queues: Vec<&str> = settings.queues.iter().map(String::as_str).collect();
                let levels = settings.backoff().levels();
                let _ =
                    granda::broker::delete_topology(&connection, &topology, &queues, &levels).await;
                let _ = connection.close(200, "".into()).await;
            }
        })
        .await;
        step("dropping the database", async move {
            if let Ok(admin) = PgPool::connect(&format!("{}/postgres", postgres_base())).await {
                let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS {db_name} WITH (FORCE)"
                )))
                .execute(&admin)
                .await;
                admin.close().await;
            }
        })
        .await;
    }
}

/// Runs one step of a teardown, for 30 s at most (then says so and goes on).
async fn step(what: &str, f: impl std::future::Future<Output = ()>) {
    if tokio::time::timeout(Duration::from_secs(30), f)
        .await
        .is_err()
    {
        eprintln!("teardown: {what} took over 30 s; left behind");
    }
}

/// Makes a key over the API with the admin client; returns (id, key).
pub async fn make_key(app: &TestApp, name: &str, scope: &str) -> (String, String) {
    let r = app
        .post_json("/v1/keys", &json!({"name": name, "scope": scope}))
        .await;
    assert_eq!(r.status(), 201);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["scope"], scope);
    let key = body["key"].as_str().unwrap().to_string();
    assert!(key.starts_with("gk_") && key.starts_with(body["prefix"].as_str().unwrap()));
    (body["id"].as_str().unwrap().to_string(), key)
}

/// Sends a POST head to `path` with `headers`, announcing `length` body bytes and sending
/// `sent` of them (the body is never completed): for answers that must come before the body.
pub async fn partial_post(
    app: &TestApp,
    path: &str,
    headers: &[(&str, &str)],
    length: usize,
    sent: usize,
) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let addr = app.address.strip_prefix("http://").unwrap();
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut head = format!("POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {length}\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&vec![b'x'; sent]).await.unwrap();
    stream.flush().await.unwrap();
    stream
}

/// The status line of the answer on `stream`, which must come within `within`.
pub async fn status_line(stream: &mut tokio::net::TcpStream, within: Duration) -> String {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let read = async {
        while !got.windows(2).any(|w| w == b"\r\n") {
            let n = stream.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
    };
    tokio::time::timeout(within, read)
        .await
        .expect("the server answered before the body was sent");
    let text = String::from_utf8_lossy(&got);
    text.lines().next().unwrap_or_default().to_string()
}

/// The invocation a response names in its `x-granda-invocation-id` header.
pub fn id_of(response: &reqwest::Response) -> Uuid {
    response.headers()["x-granda-invocation-id"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

/// Invokes `name`, a `granda-test/env` function registered with `GREETING=hej`, and checks the
/// environment its run saw: the function's own env, its invocation's id and its name. Returns
/// the whole environment, a `KEY=value` a line.
pub async fn env_of_a_run(app: &TestApp, name: &str) -> String {
    let response = app.invoke(name, "").await;
    let id = id_of(&response);
    let env = response.text().await.unwrap();
    assert!(env.contains("GREETING=hej\n"), "{env}");
    assert!(
        env.contains(&format!("GRANDA_INVOCATION_ID={id}\n")),
        "{env}"
    );
    assert!(env.contains(&format!("GRANDA_FUNCTION={name}\n")), "{env}");
    env
}

/// Asserts the API's error shape and returns the error code.
pub async fn error_code(response: reqwest::Response, status: u16) -> String {
    assert_eq!(response.status(), status);
    let body: Value = response.json().await.expect("a JSON error body");
    let message = body["error"]["message"].as_str().expect("error.message");
    assert!(!message.is_empty());
    body["error"]["code"]
        .as_str()
        .expect("error.code")
        .to_string()
}

/// Polls `probe` until it yields `Some`, or panics with `what` after `within`.
pub async fn eventually<T, F, Fut>(within: Duration, what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(Instant::now() < deadline, "not within {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl TestApp {
    /// The installation's message keys, as its ingress and workers read them.
    pub async fn keys(&self) -> std::sync::Arc<granda::Keys> {
        std::sync::Arc::new(
            granda::Keys::load(&self.pool, &self.settings)
                .await
                .unwrap(),
        )
    }

    /// A publisher of work messages signed as this installation's ingress signs them.
    pub async fn publisher(&self) -> std::sync::Arc<granda::broker::Publisher> {
        granda::broker::Publisher::connect(
            &self.settings.amqp_url,
            Topology::new(&self.settings.amqp_prefix),
            self.keys().await,
        )
        .await
        .unwrap()
    }
}

/// The value of the series `series` (name and labels, exactly) in the Prometheus text `response`
/// carries (`None` when it is not there).
pub async fn sample_of(response: reqwest::Response, series: &str) -> Option<f64> {
    let text = response.text().await.unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}
