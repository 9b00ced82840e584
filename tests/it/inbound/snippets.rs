//! The README's publishing snippets, run against the real broker: Python's (pika) and Node's
//! (amqplib, installed by scripts/setup.sh in [`NODE_MODULES`]) as they are written, with only the
//! broker URL and the exchange name replaced by the test's; Rust's (lapin) is the body of
//! [`readme_rust_snippet`], which a test keeps equal to the README's text.

use std::time::Duration;

use granda::broker::Topology;
use lapin::options::*;
use lapin::types::ShortString;
use lapin::{BasicProperties, Confirmation, Connection, ConnectionProperties};
use serde_json::json;

use super::{events_with_payload, subscribe, wait_until};
use crate::schedules::delete_queue;
use crate::support::{TestApp, amqp_url, spawn_app};

/// Where scripts/setup.sh installs amqplib for this test.
const NODE_MODULES: &str = "/var/tmp/granda-test-node/node_modules";

/// The fenced block of README.md's "Publishing events over AMQP" section in `language`.
fn readme_block(language: &str) -> String {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = readme
        .split("### Publishing events over AMQP")
        .nth(1)
        .expect("README.md has a section \"Publishing events over AMQP\"");
    let fence = format!("```{language}\n");
    let start = section
        .find(&fence)
        .unwrap_or_else(|| panic!("no {language} block in the README's AMQP section"))
        + fence.len();
    let len = section[start..].find("```").unwrap();
    section[start..start + len].to_string()
}

/// The snippet with the test's broker and exchange in place of the README's.
fn for_this_test(snippet: &str, url: &str, app: &TestApp) -> String {
    let exchange = Topology::new(&app.settings.amqp_prefix).inbound_exchange();
    for needed in ["\"granda.inbound\"", "\"amqp://guest:guest@127.0.0.1:5672"] {
        assert!(snippet.contains(needed), "{needed} not in {snippet}");
    }
    snippet
        .replace("\"granda.inbound\"", &format!("{exchange:?}"))
        .replace(
            "\"amqp://guest:guest@127.0.0.1:5672/%2f\"",
            &format!("{url:?}"),
        )
        .replace("\"amqp://guest:guest@127.0.0.1:5672\"", &format!("{url:?}"))
}

async fn run(program: &str, args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let out = tokio::process::Command::new(program)
        .args(args)
        .envs(env.iter().copied())
        .kill_on_drop(true)
        .output()
        .await
        .unwrap_or_else(|e| panic!("running {program}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_snippets_publish_with_confirms() {
    let app = spawn_app().await;
    app.register(
        "orders",
        "granda-test/echo",
        json!({"queue": "parked-snippets"}),
    )
    .await;
    subscribe(&app, "orders", "orders.*").await;
    let url = amqp_url();

    // Python, as the README has it.
    let python = for_this_test(&readme_block("python"), &url, &app);
    let (ok, out) = run("python3", &["-c", &python], &[]).await;
    assert!(
        ok,
        "the README's Python snippet failed (pika: scripts/setup.sh): {out}"
    );
    wait_until("the Python event", Duration::from_secs(20), || async {
        events_with_payload(&app, r#"{"id": 42}"#).await == 1
    })
    .await;
    assert_eq!(app.invocations_of("orders").await.len(), 1);

    // Node: valid CommonJS (`.cjs`: as `.js`, `node --check` takes top-level `await` for an ES
    // module and passes, and only running it fails on `require`), and it runs (the same
    // message_id: a duplicate, which runs nothing).
    let node = std::env::temp_dir().join(format!("granda-publish-{}.cjs", uuid::Uuid::new_v4()));
    std::fs::write(&node, for_this_test(&readme_block("js"), &url, &app)).unwrap();
    let node = node.to_str().unwrap();
    let (ok, out) = run("node", &["--check", node], &[]).await;
    assert!(ok, "the README's Node snippet does not parse: {out}");
    assert!(
        std::path::Path::new(NODE_MODULES).join("amqplib").is_dir(),
        "amqplib is missing from {NODE_MODULES}: run scripts/setup.sh"
    );
    let (ok, out) = run("node", &[node], &[("NODE_PATH", NODE_MODULES)]).await;
    let _ = std::fs::remove_file(node);
    assert!(ok, "the README's Node snippet failed: {out}");
    wait_until("the Node duplicate", Duration::from_secs(20), || async {
        app.metric("granda_inbound_messages_total{outcome=\"duplicate\"}")
            .await
            == Some(1.0)
    })
    .await;

    // Rust: the README's code, compiled here, with its own message id.
    let exchange = Topology::new(&app.settings.amqp_prefix).inbound_exchange();
    readme_rust_snippet(&url, &exchange, "order-43-created")
        .await
        .unwrap();
    wait_until("the Rust event", Duration::from_secs(20), || async {
        events_with_payload(&app, r#"{"id": 42}"#).await == 2
    })
    .await;
    assert_eq!(app.invocations_of("orders").await.len(), 2);

    // A snippet publishing where no queue is bound fails instead of losing the message.
    let lost = readme_block("python")
        .replace("\"granda.inbound\"", "\"amq.topic\"")
        .replace(
            "\"amqp://guest:guest@127.0.0.1:5672/%2f\"",
            &format!("{url:?}"),
        );
    let (ok, _) = run("python3", &["-c", &lost], &[]).await;
    assert!(
        !ok,
        "an unroutable publish looked fine to the Python snippet"
    );
    delete_queue(&app, "parked-snippets").await;
    app.shutdown().await;
}

/// The README's Rust snippet; `url`, `exchange` and `message_id` stand for its literals.
async fn readme_rust_snippet(
    url: &str,
    exchange: &str,
    message_id: &str,
) -> Result<(), Box<dyn std::error::Error>> {
    // README begin
    let conn = Connection::connect(url, ConnectionProperties::default()).await?;
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    let props = BasicProperties::default()
        .with_content_type(ShortString::from("application/json"))
        .with_delivery_mode(2)
        .with_message_id(ShortString::from(message_id));
    let options = BasicPublishOptions {
        mandatory: true,
        ..Default::default()
    };
    let confirm = ch
        .basic_publish(
            exchange.into(),
            "orders.created".into(),
            options,
            br#"{"id": 42}"#,
            props,
        )
        .await?
        .await?;
    assert!(matches!(confirm, Confirmation::Ack(None))); // Ack(Some(_)): returned, unroutable
    conn.close(200, "".into()).await?;
    // README end
    Ok(())
}

/// Without whitespace, and with the README's literals in place of the parameters.
fn normalized(code: &str) -> String {
    code.lines()
        .filter(|l| !l.trim_start().starts_with("//") && !l.trim_start().starts_with("use "))
        .map(|l| l.split(" // ").next().unwrap())
        .collect::<String>()
        .replace("\"amqp://guest:guest@127.0.0.1:5672/%2f\"", "url")
        .replace("\"granda.inbound\"", "exchange")
        .replace("\"order-42-created\"", "message_id")
        .split_whitespace()
        .collect::<String>()
        // rustfmt's trailing commas
        .replace(",)", ")")
        .replace(",}", "}")
}

#[test]
fn the_readme_rust_snippet_is_the_code_this_test_runs() {
    let here = include_str!("snippets.rs");
    let begin = here.find("// README begin").unwrap();
    let end = here.find("// README end").unwrap();
    let ours = normalized(&here[begin..end]);
    let readme = normalized(&readme_block("rust"));
    assert_eq!(
        readme, ours,
        "README.md's Rust snippet and tests/it/inbound/snippets.rs differ"
    );
}
