//! Redeploys are idempotent: the same source and settings again build nothing and write nothing
//! (`unchanged`), a changed setting is applied without a build, a changed source builds a new
//! version; with `fn deploy`, `deploy -f` and the API alike.

use std::time::{Duration, SystemTime};

use super::{dir_with, expect, finish, granda, json, path, spawn};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_source_again_builds_nothing_and_a_change_does() {
    let app = spawn().await;
    let src = dir_with(&[
        ("handler.sh", ". /fn/lib.sh\nsay one\n"),
        ("lib.sh", "say() { echo \"$1\"; }\n"),
    ]);
    let deploy = ["fn", "deploy", "idem", "--runtime", "shell", path(&src)];
    let said = expect(&granda(&app, &deploy, b"").await, 0);
    assert!(said.starts_with("deployed idem version 1"), "{said}");
    let first = json(&granda(&app, &["fn", "get", "idem", "--json"], b"").await);

    // Again, and again with only the files' times changed: nothing built, nothing written.
    for touch in [false, true] {
        if touch {
            let later = SystemTime::now() + Duration::from_secs(3600);
            for file in ["handler.sh", "lib.sh"] {
                std::fs::File::options()
                    .write(true)
                    .open(src.join(file))
                    .unwrap()
                    .set_modified(later)
                    .unwrap();
            }
        }
        let said = expect(&granda(&app, &deploy, b"").await, 0);
        assert!(said.starts_with("unchanged: idem version 1"), "{said}");
        let again = json(&granda(&app, &["fn", "get", "idem", "--json"], b"").await);
        assert_eq!(again["version"], 1, "{again}");
        assert_eq!(again["versions"].as_array().unwrap().len(), 1, "{again}");
        assert_eq!(again["updated_at"], first["updated_at"], "{again}");
    }
    let builds: i64 = sqlx::query_scalar("SELECT count(*) FROM builds WHERE function = 'idem'")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(builds, 1, "no build was even started");

    // The same source with a changed setting: applied, no build.
    let mut with_timeout = deploy.to_vec();
    with_timeout.extend(["--timeout-ms", "4321", "--container-runtime", "runc"]);
    let said = expect(&granda(&app, &with_timeout, b"").await, 0);
    assert!(
        said.starts_with("updated the settings of idem version 1"),
        "{said}"
    );
    let f = json(&granda(&app, &["fn", "get", "idem", "--json"], b"").await);
    assert_eq!(
        (f["version"].as_i64(), f["timeout_ms"].as_i64()),
        (Some(1), Some(4321))
    );
    assert_eq!(f["container_runtime"], "runc", "{f}");
    let said = expect(&granda(&app, &with_timeout, b"").await, 0);
    assert!(said.starts_with("unchanged: idem version 1"), "{said}");

    // A changed source builds version 2, which answers.
    std::fs::write(src.join("lib.sh"), "say() { echo \"$1$1\"; }\n").unwrap();
    let said = expect(&granda(&app, &deploy, b"").await, 0);
    assert!(said.starts_with("deployed idem version 2"), "{said}");
    assert_eq!(
        expect(&granda(&app, &["invoke", "idem"], b"").await, 0),
        "oneone\n"
    );

    // The API: a new source builds; the same again, streamed, says there is nothing to build.
    let single = dir_with(&[("handler.sh", "echo single\n")]);
    let response = app
        .client
        .put(app.url("/v1/functions/idem"))
        .json(&serde_json::json!({"source": "echo single\n"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let built: serde_json::Value = response.json().await.unwrap();
    assert_eq!(built["version"], 3, "{built}");
    let response = app
        .client
        .put(app.url("/v1/functions/idem"))
        .header("accept", "application/x-ndjson")
        .json(&serde_json::json!({"source": "echo single\n"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body = response.text().await.unwrap();
    assert!(body.contains("nothing to build"), "{body}");
    let last: serde_json::Value = serde_json::from_str(body.lines().last().unwrap()).unwrap();
    assert_eq!(last["status"], 200, "{body}");
    assert_eq!(last["function"]["version"], 3, "{body}");
    assert_eq!(
        last["function"]["updated_at"], built["updated_at"],
        "{body}"
    );
    // The CLI given that handler file: the same source.
    let file = single.join("handler.sh");
    let said = expect(
        &granda(
            &app,
            &["fn", "deploy", "idem", "--runtime", "shell", path(&file)],
            b"",
        )
        .await,
        0,
    );
    assert!(said.starts_with("unchanged: idem version 3"), "{said}");

    // A manifest from source (with a secret), deployed twice: created, then unchanged.
    let manifest = src.join("granda.yaml");
    std::fs::write(
        &manifest,
        "functions:\n  idem2:\n    runtime: shell\n    source: handler.sh\n    memory_mb: 96\n    \
         secrets: {TOKEN: abc}\n",
    )
    .unwrap();
    let file = ["deploy", "-f", path(&manifest)];
    let said = expect(&granda(&app, &file, b"").await, 0);
    assert!(said.contains("created idem2 version 1"), "{said}");
    let said = expect(&granda(&app, &file, b"").await, 0);
    assert!(said.contains("unchanged idem2 version 1"), "{said}");
    std::fs::write(
        &manifest,
        "functions:\n  idem2:\n    runtime: shell\n    source: handler.sh\n    memory_mb: 64\n    \
         secrets: {TOKEN: abc}\n",
    )
    .unwrap();
    let said = expect(&granda(&app, &file, b"").await, 0);
    assert!(said.contains("updated idem2 version 1"), "{said}");
    let f = json(&granda(&app, &["fn", "get", "idem2", "--json"], b"").await);
    assert_eq!(
        (f["version"].as_i64(), f["memory_mb"].as_i64()),
        (Some(1), Some(64))
    );

    for d in [src, single] {
        let _ = std::fs::remove_dir_all(d);
    }
    finish(app).await;
}
