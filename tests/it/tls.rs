//! TLS to the managed services: `amqps://` to a RabbitMQ node with a TLS listener (node a of
//! `scripts/rabbit-cluster.sh`, 127.0.0.1:5691) and Postgres with `ssl = on` (a private cluster),
//! both with certificates from a CA the cluster script makes. Trusted through `GRANDA_CA_FILE` /
//! `sslrootcert=`; without it the connection is refused.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use granda::broker::{Nodes, Publisher, Topology};
use serde_json::json;

use crate::cluster::ensure_cluster;
use crate::faults::infra::TestPostgres;
use crate::support::spawn_app_with;

const AMQPS_URL: &str = "amqps://guest:guest@localhost:5691/%2f";

fn tls_dir() -> PathBuf {
    PathBuf::from(
        std::env::var("GRANDA_CLUSTER_DIR").unwrap_or_else(|_| "/tmp/granda-rabbit-cluster".into()),
    )
    .join("tls")
}

/// A private Postgres with `ssl = on`, its certificate from the test CA.
async fn postgres_with_tls() -> TestPostgres {
    let pg = TestPostgres::start().await;
    let data = pg.data_dir();
    let tls = tls_dir();
    std::fs::copy(tls.join("server.pem"), data.join("server.crt")).unwrap();
    std::fs::copy(tls.join("server.key"), data.join("server.key")).unwrap();
    for (mode, file) in [("644", "server.crt"), ("600", "server.key")] {
        let path = data.join(file);
        assert!(
            Command::new("chown")
                .arg("postgres")
                .arg(&path)
                .status()
                .unwrap()
                .success()
        );
        assert!(
            Command::new("chmod")
                .arg(mode)
                .arg(&path)
                .status()
                .unwrap()
                .success()
        );
    }
    let mut conf = std::fs::read_to_string(data.join("postgresql.conf")).unwrap();
    conf.push_str("\nssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n");
    std::fs::write(data.join("postgresql.conf"), conf).unwrap();
    pg.stop().await;
    pg.start_again().await;
    pg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqps_is_trusted_through_the_ca_file_and_refused_without_it() {
    ensure_cluster();
    // The cluster tests stop nodes, node a (whose TLS listener this uses) among them: take turns.
    let _turn = crate::cluster::TURNS.lock().await;
    // A cluster test that failed half-way may have left nodes stopped.
    crate::cluster::all_up().await;
    let ca = tls_dir().join("ca.pem");
    let untrusted = Nodes::new(AMQPS_URL, None, Duration::from_secs(5))
        .unwrap()
        .connect("tls-untrusted")
        .await;
    assert!(
        untrusted.is_err(),
        "a server certificate from an unknown CA is refused"
    );

    let nodes = Arc::new(Nodes::new(AMQPS_URL, Some(&ca), Duration::from_secs(5)).unwrap());
    let publisher = Publisher::start(
        nodes,
        Topology::new("granda-tls-test"),
        Arc::new(granda::Keys::ephemeral()),
    )
    .await
    .expect("amqps with the test CA");
    publisher
        .publish_event("tls.check", b"over TLS", Default::default())
        .await
        .expect("a confirmed publish over TLS");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_sslmode_verify_full_is_trusted_through_the_ca_file_only() {
    ensure_cluster();
    // The cluster tests stop nodes, node a (whose TLS listener this uses) among them: take turns.
    let _turn = crate::cluster::TURNS.lock().await;
    // A cluster test that failed half-way may have left nodes stopped.
    crate::cluster::all_up().await;
    let pg = postgres_with_tls().await;
    let ca = tls_dir().join("ca.pem");
    let url = format!("{}?sslmode=verify-full", pg.url("granda_tls"));
    assert!(
        granda::db::connect_and_migrate_with_ca(&url, None)
            .await
            .is_err(),
        "verify-full without the CA is refused"
    );
    let pool = granda::db::connect_and_migrate_with_ca(&url, Some(&ca))
        .await
        .expect("verify-full with GRANDA_CA_FILE");
    let (ssl,): (bool,) =
        sqlx::query_as("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(ssl, "the connection is encrypted");
    pool.close().await;
}

/// A whole Granda over TLS to both services: a sync call answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn granda_runs_over_amqps_and_postgres_tls() {
    ensure_cluster();
    // The cluster tests stop nodes, node a (whose TLS listener this uses) among them: take turns.
    let _turn = crate::cluster::TURNS.lock().await;
    // A cluster test that failed half-way may have left nodes stopped.
    crate::cluster::all_up().await;
    let pg = postgres_with_tls().await;
    let ca = tls_dir().join("ca.pem");
    let database_url = format!(
        "{}?sslmode=verify-full&sslrootcert={}",
        pg.url("granda_tls_app"),
        ca.display()
    );
    let app = spawn_app_with(|s| {
        s.amqp_url = AMQPS_URL.into();
        s.ca_file = Some(ca.clone());
        s.database_url = database_url;
    })
    .await;
    app.register("echo", "granda-test/echo", json!({})).await;
    let response = app.invoke("echo", "over TLS").await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.bytes().await.unwrap(), "over TLS".as_bytes());
    app.shutdown().await;
}
