//! Registering, reading, updating and deleting functions.

use serde_json::{Value, json};

use crate::support::{error_code, spawn_app};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_is_registered_read_updated_listed_and_deleted() {
    let app = spawn_app().await;

    let created = app
        .register(
            "echo",
            "granda-test/echo",
            json!({"description": "says it back", "memory_mb": 64}),
        )
        .await;
    assert_eq!(created["name"], "echo");
    assert_eq!(created["memory_mb"], 64);
    assert_eq!(created["timeout_ms"], 30_000, "the default timeout");
    assert_eq!(created["input"], "stdin");
    assert_eq!(created["queue"], "default");
    assert_eq!(created["invoke_url"], app.url("/fn/echo"));

    let read: Value = app.get("/v1/functions/echo").await.json().await.unwrap();
    assert_eq!(read["description"], "says it back");

    let updated = app
        .client
        .put(app.url("/v1/functions/echo"))
        .json(&json!({"timeout_ms": 5000, "env": {"GREETING": "hi"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(updated.status(), 200);
    let read: Value = app.get("/v1/functions/echo").await.json().await.unwrap();
    assert_eq!(read["timeout_ms"], 5000);
    assert_eq!(read["env"]["GREETING"], "hi");
    assert_eq!(read["memory_mb"], 64, "fields not in the update stay");

    app.register("other", "granda-test/echo", json!({})).await;
    let list: Value = app.get("/v1/functions").await.json().await.unwrap();
    let names: Vec<&str> = list["functions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["echo", "other"]);

    let deleted = app.delete("/v1/functions/echo").await;
    assert_eq!(deleted.status(), 204);
    assert_eq!(
        error_code(app.get("/v1/functions/echo").await, 404).await,
        "not_found"
    );
    let again = app.delete("/v1/functions/echo").await;
    assert_eq!(error_code(again, 404).await, "not_found");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_name_is_a_conflict() {
    let app = spawn_app().await;
    app.register("echo", "granda-test/echo", json!({})).await;
    let again = app
        .post_json(
            "/v1/functions",
            &json!({"name": "echo", "image": "granda-test/fail"}),
        )
        .await;
    assert_eq!(error_code(again, 409).await, "conflict");
    let read: Value = app.get("/v1/functions/echo").await.json().await.unwrap();
    assert_eq!(
        read["image"], "granda-test/echo",
        "the first registration stays"
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_that_cant_be_had_is_refused_with_the_engines_reason_and_nothing_is_stored() {
    let app = spawn_app().await;
    // A registry on a closed loopback port: the pull fails at once, without leaving the machine.
    let response = app
        .post_json(
            "/v1/functions",
            &json!({"name": "ghost", "image": "127.0.0.1:9/granda/missing:1"}),
        )
        .await;
    assert_eq!(response.status(), 422);
    let body: Value = response.json().await.unwrap();
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("127.0.0.1:9"),
        "the engine's reason: {message}"
    );
    assert_eq!(
        error_code(app.get("/v1/functions/ghost").await, 404).await,
        "not_found"
    );

    // An update to such an image is refused too, and the function keeps its image.
    app.register("echo", "granda-test/echo", json!({})).await;
    let update = app
        .client
        .put(app.url("/v1/functions/echo"))
        .json(&json!({"image": "127.0.0.1:9/granda/missing:1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(update, 422).await, "invalid");
    let read: Value = app.get("/v1/functions/echo").await.json().await.unwrap();
    assert_eq!(read["image"], "granda-test/echo");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_misspelt_field_names_the_closest_one_and_a_bound_can_be_cleared() {
    let app = spawn_app().await;
    let response = app
        .post_json(
            "/v1/functions",
            &json!({"name": "typo", "image": "granda-test/echo", "timeout": 500}),
        )
        .await;
    assert_eq!(response.status(), 422);
    let body: Value = response.json().await.unwrap();
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("did you mean `timeout_ms`?"), "{message}");
    assert!(
        !message.contains("memory_mb"),
        "one suggestion, not the list: {message}"
    );
    let listed = app
        .get("/v1/functions")
        .await
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(listed["functions"], json!([]), "nothing was stored");

    // `null` clears an optional bound; leaving it out keeps it.
    app.register(
        "bounded",
        "granda-test/echo",
        json!({"max_concurrency": 2, "max_containers": 3}),
    )
    .await;
    let put = |body: Value| {
        let app = &app;
        async move {
            let response = app
                .client
                .put(app.url("/v1/functions/bounded"))
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
            response.json::<Value>().await.unwrap()
        }
    };
    let f = put(json!({"timeout_ms": 900})).await;
    assert_eq!(
        (f["max_concurrency"].clone(), f["max_containers"].clone()),
        (json!(2), json!(3))
    );
    let f = put(json!({"max_concurrency": null, "max_containers": null})).await;
    assert_eq!(f["max_concurrency"], Value::Null, "{f}");
    assert_eq!(f["max_containers"], Value::Null, "{f}");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_description_is_none() {
    let app = spawn_app().await;
    let f = app
        .register("blank", "granda-test/echo", json!({"description": " "}))
        .await;
    assert!(f["description"].is_null(), "{f}");
    let put = |description: &'static str| {
        let app = &app;
        async move {
            let r = app
                .client
                .put(app.url("/v1/functions/blank"))
                .json(&json!({ "description": description }))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            r.json::<Value>().await.unwrap()
        }
    };
    assert_eq!(put("said").await["description"], "said");
    assert!(put("").await["description"].is_null());
    app.shutdown().await;
}
