//! `/openapi.json`: served without a key, valid JSON, and every operation in it is routed.

use serde_json::Value;

use crate::support::spawn_app;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_operation_is_routed() {
    let app = spawn_app().await;
    let r = reqwest::get(app.url("/openapi.json")).await.unwrap();
    assert_eq!(r.status(), 200);
    let doc: Value = r.json().await.unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() >= 12, "{}", paths.len());
    for (path, operations) in paths {
        let concrete = path
            .replace("{name}", "nope")
            .replace("{id}", "00000000-0000-0000-0000-000000000000");
        for method in operations.as_object().unwrap().keys() {
            let method: reqwest::Method = method.to_uppercase().parse().unwrap();
            let r = app
                .client
                .request(method.clone(), app.url(&concrete))
                .send()
                .await
                .unwrap();
            let status = r.status();
            let body = r.text().await.unwrap();
            assert!(
                !body.contains("no such route") && status != 405,
                "{method} {path} is documented but not routed: {status} {body}"
            );
        }
    }
    // Secrets are write-only: the request schemas have them, the function view has only names.
    let view = &doc["components"]["schemas"]["FunctionView"].to_string();
    assert!(view.contains("secrets"));
    app.shutdown().await;
}
