//! The trust boundary of work messages: a worker runs only what its installation signed and a
//! registration would allow, and function secrets are sealed in Postgres and on the wire.

use std::collections::HashMap;
use std::time::Duration;

use granda::Work;
use granda::broker::Topology;
use granda::function::{RunSpec, Secrets, Snapshot};
use granda::invocation::Trigger;
use lapin::BasicProperties;
use lapin::options::{
    BasicGetOptions, BasicPublishOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use serde_json::json;
use uuid::Uuid;

use crate::support::{TestApp, eventually, spawn_app, spawn_app_with};

const SECRET: &str = "s3cret-value-5d1f0a";

/// Publishes `body` with `properties` straight to the app's `default` work queue, as anyone
/// holding the broker credentials can.
async fn publish_raw(app: &TestApp, properties: BasicProperties, body: &[u8]) {
    let connection = granda::broker::connect(&app.settings.amqp_url, "test-forger")
        .await
        .unwrap();
    let queue = Topology::new(&app.settings.amqp_prefix).work_queue("default");
    // Until the worker has declared its queue, the broker would drop the message.
    eventually(Duration::from_secs(20), "the worker's queue", || async {
        let probe = connection.create_channel().await.ok()?;
        let passive = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        let q = probe
            .queue_declare(queue.as_str().into(), passive, FieldTable::default())
            .await
            .ok()?;
        let _ = probe.close(200, "".into()).await;
        (q.consumer_count() > 0).then_some(())
    })
    .await;
    let channel = connection.create_channel().await.unwrap();
    channel
        .basic_publish(
            "".into(),
            queue.as_str().into(),
            BasicPublishOptions::default(),
            body,
            properties,
        )
        .await
        .unwrap()
        .await
        .unwrap();
    let _ = connection.close(200, "".into()).await;
}

/// Waits for the messages of invocations `ids` in the app's dead-letter queue; returns why the
/// worker refused each.
async fn refused_reasons(app: &TestApp, ids: &[Uuid]) -> HashMap<Uuid, String> {
    let connection = granda::broker::connect(&app.settings.amqp_url, "test-dead")
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let dead = Topology::new(&app.settings.amqp_prefix).dead_letter_queue();
    let reasons = std::sync::Mutex::new(HashMap::new());
    eventually(
        Duration::from_secs(20),
        "the refused messages in the dead-letter queue",
        || {
            let (channel, dead, reasons) = (&channel, &dead, &reasons);
            async move {
                while let Ok(Some(got)) = channel
                    .basic_get(dead.as_str().into(), BasicGetOptions { no_ack: true })
                    .await
                {
                    let props = &got.delivery.properties;
                    let id = props
                        .message_id()
                        .as_ref()
                        .and_then(|m| m.as_str().parse().ok());
                    let reason = props.headers().as_ref().and_then(|h| {
                        match h.inner().get("x-granda-refused")? {
                            AMQPValue::LongString(s) => {
                                Some(String::from_utf8_lossy(s.as_bytes()).into_owned())
                            }
                            _ => None,
                        }
                    });
                    if let (Some(id), Some(reason)) = (id, reason) {
                        reasons.lock().unwrap().insert(id, reason);
                    }
                }
                let reasons = reasons.lock().unwrap();
                ids.iter().all(|id| reasons.contains_key(id)).then_some(())
            }
        },
    )
    .await;
    let _ = connection.close(200, "".into()).await;
    reasons.into_inner().unwrap()
}

/// Asserts that invocation `id` neither ran nor was recorded.
async fn assert_nothing_ran(app: &TestApp, id: Uuid) {
    let (records,): (i64,) = sqlx::query_as("SELECT count(*) FROM invocations WHERE id = $1")
        .bind(id)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(records, 0, "a refused message is not recorded");
    let containers = app
        .containers_labelled(&[&format!("granda.invocation={id}")])
        .await;
    assert!(containers.is_empty(), "no container ran: {containers:?}");
}

/// The red team's message: a function nobody registered, running as root with a huge `/tmp`.
fn root_snapshot() -> Snapshot {
    Snapshot {
        name: "pwn".into(),
        run: RunSpec {
            image: "granda-test/echo".into(),
            timeout_ms: 5_000,
            user: Some("0:0".into()),
            tmp_mb: 65_536,
            ..Default::default()
        },
        secrets: Secrets::default(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_work_message_runs_nothing_and_is_dead_lettered_with_the_reason() {
    let app = spawn_app().await;
    app.register("echo", "granda-test/echo", json!({})).await;

    // Unsigned, written by hand as the red team did.
    let unsigned = Uuid::now_v7();
    let snapshot = serde_json::to_vec(&root_snapshot()).unwrap();
    let mut headers = FieldTable::default();
    headers.insert(
        "x-granda-function".into(),
        AMQPValue::LongString(LongString::from(snapshot)),
    );
    headers.insert(
        "x-granda-trigger".into(),
        AMQPValue::LongString(LongString::from(b"sync".to_vec())),
    );
    let props = BasicProperties::default()
        .with_message_id(unsigned.to_string().into())
        .with_headers(headers);
    publish_raw(&app, props, b"id").await;

    // Signed, but under a key that is not the installation's.
    let wrong_key = Work {
        id: Uuid::now_v7(),
        trigger: Trigger::Sync,
        function: root_snapshot(),
        queued_at_ms: chrono::Utc::now().timestamp_millis(),
        reply_to: None,
        correlation_id: None,
        request: None,
        key_id: None,
    };
    let props = wrong_key.properties(b"id", &granda::Keys::ephemeral());
    publish_raw(&app, props, b"id").await;

    let reasons = refused_reasons(&app, &[unsigned, wrong_key.id]).await;
    let reason = &reasons[&unsigned];
    assert!(reason.contains("x-granda-signature"), "{reason}");
    let reason = &reasons[&wrong_key.id];
    assert!(reason.contains("does not check"), "{reason}");
    assert_nothing_ran(&app, unsigned).await;
    assert_nothing_ran(&app, wrong_key.id).await;

    // The worker is alive and runs what the ingress signed.
    let response = app.invoke("echo", "still here").await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "still here");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_message_with_a_function_a_registration_refuses_is_refused() {
    let app = spawn_app().await;
    let keys = app.keys().await;
    let mut refused = Vec::new();
    let mut root_only = root_snapshot();
    root_only.run.tmp_mb = 8;
    // Past what registration allows (65536).
    let mut huge_tmp = root_snapshot();
    huge_tmp.run.user = None;
    huge_tmp.run.tmp_mb = 1 << 20;
    for (function, why) in [(root_only, "user"), (huge_tmp, "tmp_mb")] {
        let work = Work {
            id: Uuid::now_v7(),
            trigger: Trigger::Sync,
            function,
            queued_at_ms: chrono::Utc::now().timestamp_millis(),
            reply_to: None,
            correlation_id: None,
            request: None,
            key_id: None,
        };
        publish_raw(&app, work.properties(b"x", &keys), b"x").await;
        refused.push((work.id, why));
    }
    let ids: Vec<Uuid> = refused.iter().map(|(id, _)| *id).collect();
    let reasons = refused_reasons(&app, &ids).await;
    for (id, why) in refused {
        let reason = &reasons[&id];
        assert!(
            reason.contains("a registration would refuse") && reason.contains(why),
            "{reason}"
        );
        assert_nothing_ran(&app, id).await;
    }
    app.shutdown().await;
}

/// The stored `secrets` column of function `name`, as text.
async fn stored_secrets(app: &TestApp, name: &str) -> String {
    let (secrets,): (String,) =
        sqlx::query_as("SELECT secrets::text FROM functions WHERE name = $1")
            .bind(name)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    secrets
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_sealed_in_postgres_and_on_the_wire_and_the_function_sees_them() {
    let app = spawn_app().await;
    app.register(
        "env",
        "granda-test/env",
        json!({"env": {"GREETING": "hej"}, "secrets": {"TOKEN": SECRET}}),
    )
    .await;
    let stored = stored_secrets(&app, "env").await;
    assert!(
        stored.contains("TOKEN") && stored.contains("sealed") && !stored.contains(SECRET),
        "{stored}"
    );

    let env = crate::support::env_of_a_run(&app, "env").await;
    assert!(env.contains(&format!("TOKEN={SECRET}\n")), "{env}");

    // A queue no worker serves keeps the message for anyone with broker credentials to read.
    app.register(
        "parked",
        "granda-test/env",
        json!({"secrets": {"TOKEN": SECRET}}),
    )
    .await;
    sqlx::query("UPDATE functions SET queue = 'unserved' WHERE name = 'parked'")
        .execute(&app.pool)
        .await
        .unwrap();
    let id = app.invoke_async("parked", "input").await;
    let connection = granda::broker::connect(&app.settings.amqp_url, "test-reader")
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let queue = Topology::new(&app.settings.amqp_prefix).work_queue("unserved");
    let got = eventually(Duration::from_secs(10), "the queued message", || async {
        channel
            .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .ok()?
    })
    .await;
    let props = &got.delivery.properties;
    assert_eq!(
        props.message_id().as_ref().unwrap().as_str(),
        id.to_string()
    );
    let mut everything = format!("{props:?}");
    for (k, v) in props.headers().as_ref().unwrap().inner() {
        if let AMQPValue::LongString(s) = v {
            everything.push_str(&format!("{k}={}", String::from_utf8_lossy(s.as_bytes())));
        }
    }
    assert!(everything.contains("TOKEN"), "{everything}");
    assert!(!everything.contains(SECRET), "{everything}");
    assert!(
        !got.delivery
            .data
            .windows(SECRET.len())
            .any(|w| w == SECRET.as_bytes())
    );
    let _ = channel
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await;
    let _ = connection.close(200, "".into()).await;
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_secrets_key_reseals_stored_secrets_at_start_and_runs_go_on() {
    let old = "11".repeat(32);
    let new = "22".repeat(32);
    let first = spawn_app_with(|s| s.secrets_key = Some(old.clone())).await;
    first
        .register(
            "env",
            "granda-test/env",
            json!({"env": {"GREETING": "hej"}, "secrets": {"TOKEN": SECRET}}),
        )
        .await;
    let under_old = stored_secrets(&first, "env").await;
    let old_id = first.keys().await.current_id().to_string();
    assert!(under_old.contains(&format!("v1.{old_id}.")), "{under_old}");

    // A second installation process on the same database, started with the new key and the old
    // one as old: it re-seals at start, and its worker runs the function with its secret.
    let database_url = first.settings.database_url.clone();
    let (n, o) = (new.clone(), old.clone());
    let second = spawn_app_with(move |s| {
        s.database_url = database_url;
        s.secrets_key = Some(n);
        s.secrets_old_keys = vec![o];
    })
    .await;
    let new_id = second.keys().await.current_id().to_string();
    assert_ne!(new_id, old_id);
    let under_new = stored_secrets(&second, "env").await;
    assert!(
        under_new.contains(&format!("v1.{new_id}.")) && !under_new.contains(&old_id),
        "{under_new}"
    );
    assert!(!under_new.contains(SECRET), "{under_new}");
    let env = crate::support::env_of_a_run(&second, "env").await;
    assert!(env.contains(&format!("TOKEN={SECRET}\n")), "{env}");

    // The new key alone opens what is stored now.
    let mut settings = second.settings.clone();
    settings.secrets_old_keys = Vec::new();
    let new_only = granda::Keys::load(&second.pool, &settings).await.unwrap();
    let (name, secrets): (String, sqlx::types::Json<Secrets>) =
        sqlx::query_as("SELECT name, secrets FROM functions WHERE name = 'env'")
            .fetch_one(&second.pool)
            .await
            .unwrap();
    let mut secrets = secrets.0;
    new_only.open_all(&mut secrets).unwrap();
    assert_eq!(
        secrets.clear_iter().collect::<Vec<_>>(),
        vec![(&"TOKEN".to_string(), SECRET)],
        "{name}"
    );
    second.shutdown().await;
    first.shutdown().await;
}
