//! Registering while no worker serves the function's queue (a worker restarting, a fresh stack):
//! a standalone ingress (`granda server`, no engine of its own) answers 503 saying how to go on,
//! and `?defer_check=true` registers anyway, the image checked when a worker runs it.

use granda::producer::Application;
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::support::spawn_app;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_worker_of_the_queue_defer_check_registers_anyway() {
    let app = spawn_app().await;
    // An ingress with no engine, on the app's database and queues.
    let ingress = Application::build_with_pool(app.settings.clone(), app.pool.clone())
        .await
        .unwrap();
    let base = format!("http://{}", ingress.local_addr());
    let (stop, mut stopped) = watch::channel(false);
    tokio::spawn(ingress.run(async move {
        let _ = stopped.wait_for(|s| *s).await;
    }));
    let send = |method: reqwest::Method, path: &str, body: &Value| {
        app.client
            .request(method, format!("{base}{path}"))
            .json(body)
            .send()
    };
    use reqwest::Method;

    // No worker serves `elsewhere`.
    let body = json!({"name": "later", "image": "granda-test/echo", "queue": "elsewhere"});
    let r = send(Method::POST, "/v1/functions", &body).await.unwrap();
    assert_eq!(r.status(), 503);
    let said: Value = r.json().await.unwrap();
    let message = said["error"]["message"].as_str().unwrap();
    assert!(message.contains("?defer_check=true"), "{said}");
    assert_eq!(app.get("/v1/functions/later").await.status(), 404);

    let r = send(Method::POST, "/v1/functions?defer_check=true", &body)
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    // An update of its image likewise.
    let change = json!({"image": "granda-test/env"});
    let r = send(Method::PUT, "/v1/functions/later", &change)
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let r = send(Method::PUT, "/v1/functions/later?defer_check=true", &change)
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let f: Value = app.get("/v1/functions/later").await.json().await.unwrap();
    assert_eq!(f["image"], "granda-test/env", "{f}");
    let _ = stop.send(true);
    app.shutdown().await;
}
