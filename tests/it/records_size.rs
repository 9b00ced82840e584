//! Visible size: `granda_database_bytes` and `granda_records_stored_bytes{namespace}`, sampled
//! every `GRANDA_SIZE_SAMPLE_MS`, and the dashboard's namespaces page.

use std::time::Duration;

use serde_json::json;

use crate::support::{ADMIN_KEY, TestApp, eventually, spawn_app_with};

/// The gauge of the default namespace's stored bytes, once it reads `want`.
async fn stored_reaches(app: &TestApp, want: f64) {
    eventually(
        Duration::from_secs(30),
        "the stored bytes sampled",
        || async {
            let now = app
                .metric("granda_records_stored_bytes{namespace=\"default\"}")
                .await;
            if now == Some(want) {
                Some(())
            } else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                None
            }
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_and_each_namespaces_records_are_measured_and_shown() {
    let app = spawn_app_with(|s| s.size_sample_ms = 200).await;
    app.register("echo", "granda-test/echo", json!({})).await;
    app.register(
        "lean",
        "granda-test/echo",
        json!({"store_output": "on_failure"}),
    )
    .await;
    let body = "x".repeat(1000);
    let id = app.invoke_async("echo", body.clone()).await;
    app.wait_final(id, Duration::from_secs(60)).await;
    // Its input and its output: 2000 bytes, no logs.
    stored_reaches(&app, 2000.0).await;
    let database = app.metric("granda_database_bytes").await.unwrap();
    assert!(
        database > 1_000_000.0,
        "a migrated database takes megabytes: {database}"
    );

    // A success of `lean` counts nothing: the next samples read the same.
    let r = app.invoke("lean", body.clone()).await;
    assert_eq!(r.text().await.unwrap(), body);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    stored_reaches(&app, 2000.0).await;
    let records: i64 = sqlx::query_scalar("SELECT count(*) FROM invocations")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(records, 2, "both calls are recorded");

    // The dashboard's page says the same, with the database's size.
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let login = http
        .post(app.url("/ui/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("key={ADMIN_KEY}&next=%2Fui"))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 303);
    let cookie = login.headers()["set-cookie"].to_str().unwrap();
    let cookie = cookie.split(';').next().unwrap().to_string();
    let page = http
        .get(app.url("/ui/namespaces"))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let page = page.text().await.unwrap();
    let row = &page[page
        .find("data-namespace=\"default\"")
        .expect("a row for default")..];
    let row = &row[..row.find("</tr>").unwrap()];
    assert!(row.contains("<td>2</td>"), "two records: {row}");
    assert!(row.contains("2000 bytes"), "{row}");
    assert!(page.contains("The database takes"), "{page}");
    app.shutdown().await;
}
