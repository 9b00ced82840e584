//! Real `granda server` processes on a database and queue prefix of their own, with no
//! in-process ingress beside them: for tests that need ingresses in separate processes (each
//! schedule tick fired once across servers, an inbound router killed with SIGKILL).

use std::time::{Duration, Instant};

use granda::broker::Topology;
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::sync::watch;
use uuid::Uuid;

use crate::faults::infra::{GrandaProcess, free_port};
use crate::support::{ADMIN_KEY, amqp_url, client_with_key, postgres_base, sample_of};

/// A database and prefix that `granda server` children share.
pub struct Servers {
    pub db_url: String,
    db_name: String,
    pub prefix: String,
    pub pool: PgPool,
    pub client: reqwest::Client,
}

/// One `granda server` child and its base URL.
pub struct Server {
    pub process: GrandaProcess,
    pub base: String,
}

impl Servers {
    /// A fresh, migrated database and a unique prefix.
    pub async fn new() -> Servers {
        crate::support::ensure_test_images();
        let tag = Uuid::new_v4().simple().to_string()[..12].to_string();
        let db_name = format!("granda_test_{tag}");
        let db_url = format!("{}/{db_name}", postgres_base());
        let pool = granda::db::connect_and_migrate(&db_url)
            .await
            .expect("Postgres must be reachable for the tests");
        Servers {
            db_url,
            db_name,
            prefix: format!("granda-test-{tag}"),
            pool,
            client: client_with_key(ADMIN_KEY),
        }
    }

    /// Starts `granda server` on a free port with `env` added, and waits until it answers.
    pub async fn start(&self, env: &[(&str, String)]) -> Server {
        let port = free_port();
        let mut all = vec![
            ("GRANDA_DATABASE_URL", self.db_url.clone()),
            ("GRANDA_AMQP_URL", amqp_url()),
            ("GRANDA_AMQP_PREFIX", self.prefix.clone()),
            ("GRANDA_LISTEN", format!("127.0.0.1:{port}")),
            ("GRANDA_ADMIN_KEY", ADMIN_KEY.to_string()),
        ];
        all.extend(env.iter().cloned());
        let process = GrandaProcess::spawn(&["server"], &all);
        let base = format!("http://127.0.0.1:{port}");
        process.wait_healthy(&base, Duration::from_secs(60)).await;
        Server { process, base }
    }

    /// `POST {base}{path}` with a JSON body; the status and the JSON answer.
    pub async fn post(&self, server: &Server, path: &str, body: &Value) -> (u16, Value) {
        let r = self
            .client
            .post(format!("{}{path}", server.base))
            .json(body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// Registers `names` (image `granda-test/echo`) on `queue`, which no worker consumes: an
    /// in-process worker serves it only while they are registered (a server asks a worker of
    /// the queue to check the image).
    pub async fn register_parked(&self, server: &Server, names: &[&str], queue: &str) {
        let mut settings = granda::config::Settings::from_env();
        settings.database_url = self.db_url.clone();
        settings.amqp_url = amqp_url();
        settings.amqp_prefix = self.prefix.clone();
        settings.queues = vec![queue.to_string()];
        settings.worker_id = Some(format!("registrar-{}", Uuid::new_v4().simple()));
        settings.max_concurrency = Some(1);
        settings.shutdown_grace_ms = 1_000;
        let worker = granda::worker::Worker::build(&settings, self.pool.clone())
            .await
            .expect("the Docker engine must be reachable for the tests");
        let (stop, mut stopped) = watch::channel(false);
        let task = tokio::spawn(worker.run(async move {
            let _ = stopped.wait_for(|s| *s).await;
        }));
        for name in names {
            let body = json!({"name": name, "image": "granda-test/echo", "queue": queue});
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let (status, answer) = self.post(server, "/v1/functions", &body).await;
                if status == 201 {
                    break;
                }
                // 503 until the worker serves the queue.
                assert!(
                    status == 503 && Instant::now() < deadline,
                    "registering {name}: {status} {answer}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        let _ = stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
    }

    /// A series' value in `server`'s `/metrics` (`None` when it is not there).
    pub async fn metric(&self, server: &Server, series: &str) -> Option<f64> {
        let response = self
            .client
            .get(format!("{}/metrics", server.base))
            .send()
            .await
            .unwrap();
        sample_of(response, series).await
    }

    /// Removes the database and the prefix's queues (the servers must be gone).
    pub async fn cleanup(self, work_queues: &[&str]) {
        self.pool.close().await;
        if let Ok(connection) = granda::broker::connect(&amqp_url(), "test-cleanup").await {
            let settings = granda::config::Settings::from_env();
            let levels = settings.backoff().levels();
            let mut queues = vec!["default"];
            queues.extend_from_slice(work_queues);
            let topology = Topology::new(&self.prefix);
            let _ = granda::broker::delete_topology(&connection, &topology, &queues, &levels).await;
            let _ = connection.close(200, "".into()).await;
        }
        if let Ok(admin) = PgPool::connect(&format!("{}/postgres", postgres_base())).await {
            let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.db_name
            )))
            .execute(&admin)
            .await;
        }
    }
}
