//! Sanity checks of the fault-test infrastructure: each private service survives its own restart
//! with its data, and a `granda` child process can be started, checked and stopped. One test per
//! service, so they run in parallel with each other and with everything else.

use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Confirmation, Connection};
use sqlx::Connection as _;

use super::infra::{
    GrandaProcess, REQUIRED_IMAGES, TestDocker, TestPostgres, TestRabbit, free_port, wait_http_ok,
};

#[tokio::test]
async fn postgres_keeps_its_data_across_stop_and_start() {
    let pg = TestPostgres::start().await;
    let url = pg.url("postgres");
    let mut db = sqlx::PgConnection::connect(&url).await.unwrap();
    sqlx::query("CREATE TABLE kept (v text)")
        .execute(&mut db)
        .await
        .unwrap();
    sqlx::query("INSERT INTO kept VALUES ('before the stop')")
        .execute(&mut db)
        .await
        .unwrap();

    pg.stop().await;
    // The open connection is cut, and nothing answers on the port.
    assert!(sqlx::query("SELECT 1").execute(&mut db).await.is_err());
    assert!(sqlx::PgConnection::connect(&url).await.is_err());

    pg.start_again().await;
    let mut db = sqlx::PgConnection::connect(&url).await.unwrap();
    let (v,): (String,) = sqlx::query_as("SELECT v FROM kept")
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert_eq!(v, "before the stop");
}

async fn confirmed_channel(connection: &Connection) -> lapin::Channel {
    let channel = connection.create_channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    channel
}

#[tokio::test]
async fn rabbit_restart_drops_clients_and_keeps_persistent_messages() {
    let rabbit = TestRabbit::start().await;
    let connection = granda::broker::connect(&rabbit.url(), "infra-check")
        .await
        .unwrap();
    let channel = confirmed_channel(&connection).await;
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(LongString::from(b"quorum".to_vec())),
    );
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .queue_declare("kept".into(), durable, args)
        .await
        .unwrap();
    let confirm = channel
        .basic_publish(
            "".into(),
            "kept".into(),
            BasicPublishOptions::default(),
            b"persistent",
            BasicProperties::default().with_delivery_mode(2),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(matches!(confirm, Confirmation::Ack(None)), "{confirm:?}");

    rabbit.restart().await;
    // The old connection was dropped by the broker.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while connection.status().connected() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the connection survived the restart"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let connection = granda::broker::connect(&rabbit.url(), "infra-check")
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    // A quorum queue may take a moment after the restart to elect its (single) leader.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let message = loop {
        let got = channel
            .basic_get("kept".into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap();
        match got {
            Some(message) => break message,
            None if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            None => panic!("the persistent message is gone after the restart"),
        }
    };
    assert_eq!(message.delivery.data, b"persistent");
    let _ = connection.close(200, "".into()).await;
}

#[tokio::test]
async fn docker_restart_keeps_images_and_runs_containers() {
    let docker = TestDocker::start().await;
    assert!(docker.missing_images().await.is_empty());
    let run_echo = |host: String| async move {
        let output = tokio::process::Command::new("docker")
            .env("DOCKER_HOST", host)
            .args(["run", "--rm", "--network", "none", "granda-test/busybox"])
            .args(["echo", "ran"])
            .output()
            .await
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    };
    assert_eq!(run_echo(docker.host()).await, "ran\n");
    let pid = docker.pid().unwrap();

    docker.restart().await;
    assert_ne!(docker.pid(), Some(pid), "the daemon is a new process");
    let info = docker.client().info().await.expect("docker info");
    assert!(info.server_version.is_some(), "{info:?}");
    assert!(
        docker.missing_images().await.is_empty(),
        "images after the restart: {:?} (needed {REQUIRED_IMAGES:?})",
        docker.test_images().await
    );
    assert_eq!(run_echo(docker.host()).await, "ran\n");

    // Left running on purpose: dropping the engine must remove it (and its mounts) too.
    let started = tokio::process::Command::new("docker")
        .env("DOCKER_HOST", docker.host())
        .args(["run", "-d", "--network", "none", "granda-test/busybox"])
        .args(["sleep", "300"])
        .output()
        .await
        .unwrap();
    assert!(started.status.success(), "{started:?}");
}

#[tokio::test]
async fn granda_process_migrates_serves_and_stops() {
    let pg = TestPostgres::start().await;
    let db = pg.url("granda");
    let migrate = GrandaProcess::spawn(&["migrate"], &[("GRANDA_DATABASE_URL", db.clone())]);
    let status = migrate.wait_exit(Duration::from_secs(60)).await;
    assert!(
        status.is_some_and(|s| s.success()),
        "granda migrate: {status:?}\n{}",
        migrate.log()
    );
    let mut conn = sqlx::PgConnection::connect(&db).await.unwrap();
    let (tables,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM information_schema.tables WHERE table_name IN ('functions', 'invocations')",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(tables, 2);

    // The ingress only connects to RabbitMQ (it declares queues on first publish), so the shared
    // broker is safe to use here; the prefix is unique anyway.
    let env = |port: u16| {
        vec![
            ("GRANDA_DATABASE_URL", db.clone()),
            ("GRANDA_AMQP_URL", crate::support::amqp_url()),
            ("GRANDA_AMQP_PREFIX", format!("granda-fault-{port}")),
            ("GRANDA_LISTEN", format!("127.0.0.1:{port}")),
        ]
    };
    let port = free_port();
    let server = GrandaProcess::spawn(&["server"], &env(port));
    server
        .wait_healthy(&format!("http://127.0.0.1:{port}"), Duration::from_secs(30))
        .await;
    wait_http_ok(
        &format!("http://127.0.0.1:{port}/healthz"),
        Duration::from_secs(1),
    )
    .await;
    server.sigterm();
    let status = server.wait_exit(Duration::from_secs(20)).await;
    assert!(
        status.is_some_and(|s| s.success()),
        "granda server after SIGTERM: {status:?}\n{}",
        server.log()
    );

    let port = free_port();
    let crashing = GrandaProcess::spawn(&["server"], &env(port));
    crashing
        .wait_healthy(&format!("http://127.0.0.1:{port}"), Duration::from_secs(30))
        .await;
    crashing.kill9();
    let status = crashing.wait_exit(Duration::from_secs(5)).await;
    assert_eq!(status.and_then(|s| s.signal()), Some(9));
}
