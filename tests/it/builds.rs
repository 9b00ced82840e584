//! Builds and versions over the API: `POST /v1/functions/{name}/rollback` switches a function
//! built from source back to an earlier successful build, refuses a failed one (409) and an
//! unknown one (404), and changes nothing then.

use serde_json::{Value, json};

use crate::support::error_code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_rolls_back_to_an_earlier_successful_build_only() {
    let app = crate::cli::spawn().await;
    let r = app
        .post_json(
            "/v1/functions",
            &json!({"name": "shout", "runtime": "shell", "source": "cat\n"}),
        )
        .await;
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    let put = |source: &'static str| {
        let app = &app;
        async move {
            app.client
                .put(app.url("/v1/functions/shout"))
                .json(&json!({ "source": source }))
                .send()
                .await
                .unwrap()
        }
    };
    assert_eq!(put("tr a-z A-Z\n").await.status(), 200);
    // v3 fails its build: the function stays on v2.
    assert_eq!(put("if then fi (\n").await.status(), 422);
    let f: Value = app.get("/v1/functions/shout").await.json().await.unwrap();
    assert_eq!(f["version"], 2, "{f}");
    let out = app.invoke("shout", "abc").await.text().await.unwrap();
    assert_eq!(out, "ABC");

    // A failed build, an unknown one, a bad body: refused, nothing changed.
    let rollback = |body: Value| {
        let app = &app;
        async move { app.post_json("/v1/functions/shout/rollback", &body).await }
    };
    error_code(rollback(json!({"version": 3})).await, 409).await;
    error_code(rollback(json!({"version": 9})).await, 404).await;
    error_code(rollback(json!({"version": 1, "image": "x"})).await, 422).await;
    let r = app
        .post_json("/v1/functions/nosuch/rollback", &json!({"version": 1}))
        .await;
    error_code(r, 404).await;
    let f: Value = app.get("/v1/functions/shout").await.json().await.unwrap();
    assert_eq!(f["version"], 2, "{f}");

    // Back to v1: its image, its version; the function's other fields stay.
    let r = rollback(json!({"version": 1})).await;
    assert_eq!(r.status(), 200);
    let f: Value = r.json().await.unwrap();
    assert_eq!(f["version"], 1, "{f}");
    let installation = granda::docker::installation(&app.pool).await.unwrap();
    assert_eq!(
        f["image"],
        granda::build::tag(&app.settings.amqp_prefix, &installation, "shout", 1)
    );
    assert_eq!(f["runtime"], "shell");
    let out = app.invoke("shout", "abc").await.text().await.unwrap();
    assert_eq!(out, "abc");
    let v1: Value = app
        .get("/v1/functions/shout/builds/1")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v1["current"], true, "{v1}");
    // And forward again to v2.
    assert_eq!(rollback(json!({"version": 2})).await.status(), 200);
    let out = app.invoke("shout", "abc").await.text().await.unwrap();
    assert_eq!(out, "ABC");
    app.shutdown().await;
}

/// Issue 26: two installations on one engine, with the same prefix even, build a function of the
/// same name from different sources: each runs its own build. (The tag was
/// `<prefix>-fn/<name>:v<N>` for both, so the second build retagged the first one's image, and A's
/// function ran B's code.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_installations_on_one_engine_each_run_their_own_build_of_a_name() {
    tokio::task::spawn_blocking(crate::cli::ensure_runtime_images)
        .await
        .unwrap();
    // Each worker serves only its own installation's queue: they share the prefix's exchanges.
    let a = crate::support::spawn_app_with(|s| s.queues = vec!["inst-a".into()]).await;
    let prefix = a.settings.amqp_prefix.clone();
    let b = crate::support::spawn_app_with(|s| {
        s.amqp_prefix = prefix;
        s.queues = vec!["inst-b".into()];
    })
    .await;
    for (app, queue, source) in [
        (&a, "inst-a", "echo from-a\n"),
        (&b, "inst-b", "echo from-b\n"),
    ] {
        let r = app
            .post_json(
                "/v1/functions",
                &json!({"name": "evil", "runtime": "shell", "source": source, "queue": queue}),
            )
            .await;
        assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    }
    let image = |f: Value| f["image"].as_str().unwrap().to_string();
    let image_a = image(a.get("/v1/functions/evil").await.json().await.unwrap());
    let image_b = image(b.get("/v1/functions/evil").await.json().await.unwrap());
    assert_ne!(image_a, image_b);
    for (app, expected) in [(&a, "from-a"), (&b, "from-b")] {
        let out = app.invoke("evil", "").await.text().await.unwrap();
        assert_eq!(out.trim(), expected);
    }
    crate::cli::finish(a).await;
    crate::cli::finish(b).await;
}
