//! The API's own documents: `/openapi.json` (served without a key, valid by a real OpenAPI
//! validator, every operation routed and described), `/` (a browser goes to the dashboard, an
//! API client gets an index) and the dashboard's 404 page.

use std::collections::BTreeMap;

use serde_json::{Value, json};

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
            .replace("{topic}", "nope.topic")
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

/// The served document, as text.
async fn served_document() -> String {
    let app = spawn_app().await;
    let r = reqwest::get(app.url("/openapi.json")).await.unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    app.shutdown().await;
    text
}

/// `openapi-spec-validator` (PyPI; scripts/setup.sh installs it) accepts the served document.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_passes_openapi_spec_validator() {
    let present = std::process::Command::new("python3")
        .args(["-c", "import openapi_spec_validator"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        present,
        "python3 can't import openapi_spec_validator: run scripts/setup.sh (it installs it from PyPI)"
    );
    let text = served_document().await;
    let dir = std::env::temp_dir().join(format!("granda-openapi-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("openapi.json");
    std::fs::write(&file, &text).unwrap();
    let out = std::process::Command::new("python3")
        .args(["-m", "openapi_spec_validator", "--validation-errors", "all"])
        .arg(&file)
        .output()
        .expect("running python3 -m openapi_spec_validator");
    let _ = std::fs::remove_dir_all(&dir);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "the validator refused /openapi.json:\n{said}"
    );
    assert!(said.contains("OK"), "{said}");
}

/// Every operation has a summary, a description and a declared tag; the paths a user meets
/// outside `/v1/*` are there; no two paths differ only by their parameters' names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_is_described_and_paths_are_unambiguous() {
    let doc: Value = serde_json::from_str(&served_document().await).unwrap();
    let declared: Vec<&str> = doc["tags"]
        .as_array()
        .expect("top-level tags")
        .iter()
        .map(|t| {
            assert!(!t["description"].as_str().unwrap_or("").is_empty(), "{t}");
            t["name"].as_str().unwrap()
        })
        .collect();
    let paths = doc["paths"].as_object().unwrap();
    let mut shapes: BTreeMap<String, &str> = BTreeMap::new();
    let mut operations = 0;
    for (path, item) in paths {
        // `/v1/events/{id}` and `/v1/events/{topic}` have one shape: `/v1/events/{}`.
        let shape = path
            .split('/')
            .map(|seg| if seg.starts_with('{') { "{}" } else { seg })
            .collect::<Vec<_>>()
            .join("/");
        if let Some(other) = shapes.insert(shape, path) {
            panic!("{other} and {path} differ only by parameter names");
        }
        for (method, op) in item.as_object().unwrap() {
            operations += 1;
            let what = format!("{} {path}", method.to_uppercase());
            for field in ["summary", "description"] {
                let text = op[field].as_str().unwrap_or("");
                assert!(text.trim().len() >= 5, "{what} has no {field}: {op}");
            }
            let tags = op["tags"]
                .as_array()
                .unwrap_or_else(|| panic!("{what} has no tag"));
            assert!(!tags.is_empty(), "{what} has no tag");
            for tag in tags {
                assert!(
                    declared.contains(&tag.as_str().unwrap()),
                    "{what}: tag {tag} is not declared at the top"
                );
            }
        }
    }
    assert!(operations >= 38, "{operations}");
    assert!(
        paths["/hooks/{id}"]["post"].is_object(),
        "POST /hooks/{{id}}"
    );
    assert!(paths["/hooks/{id}"]["post"]["security"] == serde_json::json!([{}]));
    assert!(
        paths.get("/v1/callbacks/key").is_none(),
        "the legacy always-404 route is gone"
    );
    assert!(paths["/v1/events/{topic}"]["get"].is_object());
    assert!(paths["/v1/events/{topic}"]["post"].is_object());
}

/// Every id in a path is declared a UUID (`format: uuid`), so that a generated client takes the
/// UUID its answers gave (`hook.id`, not `str(hook.id)`), and every name in a path or in a body
/// that makes one with the names' pattern; the server still answers a malformed one with a 4xx
/// of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_and_names_are_declared_with_their_forms() {
    let doc: Value = serde_json::from_str(&served_document().await).unwrap();
    // A function's, a namespace's or a queue's name.
    const NAME: &str = "[a-z][a-z0-9-]{0,62}";
    let (mut ids, mut names) = (0, 0);
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            for param in op["parameters"].as_array().into_iter().flatten() {
                if param["in"] == "path" && param["name"] == "name" {
                    names += 1;
                    let pattern = if path.starts_with("/fn/") {
                        format!(r"^{NAME}(\.{NAME})?$")
                    } else {
                        format!("^{NAME}$")
                    };
                    assert_eq!(param["schema"]["pattern"], json!(pattern), "{path}");
                }
                let is_id =
                    param["name"] == "id" || (path == "/v1/events/{topic}" && method == "get");
                if param["in"] != "path" || !is_id {
                    continue;
                }
                ids += 1;
                assert_eq!(
                    (&param["schema"]["type"], &param["schema"]["format"]),
                    (&json!("string"), &json!("uuid")),
                    "{method} {path}: {param}"
                );
            }
        }
    }
    assert!(ids >= 15, "{ids} ids in paths");
    assert!(names >= 17, "{names} names in paths");
    for body in ["NewFunction", "NewNamespace"] {
        let name = &doc["components"]["schemas"][body]["properties"]["name"];
        assert_eq!(
            name["pattern"],
            json!(format!("^{NAME}$")),
            "{body}: {name}"
        );
    }
    let key = &doc["components"]["schemas"]["NewKey"]["properties"];
    assert_eq!(
        (&key["name"]["minLength"], &key["name"]["maxLength"]),
        (&json!(1), &json!(100)),
        "{key}"
    );
    assert_eq!(key["namespace"]["pattern"], json!(format!("^{NAME}$")));
    assert_eq!(key["functions"]["maxItems"], json!(100), "{key}");
    let topic = &doc["paths"]["/v1/events/{topic}"]["post"]["parameters"][0]["schema"];
    assert_eq!(topic["format"], Value::Null, "a topic is no UUID: {topic}");
}

/// The list filters are declared with their types (a status or trigger is its enum, `since` a
/// date-time, `limit` 1 to 500), and the server holds the documented bounds of `limit`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_filters_are_declared_with_their_types_and_bounds() {
    let app = spawn_app().await;
    let doc: Value = app.get("/openapi.json").await.json().await.unwrap();
    let param = |path: &str, name: &str| {
        doc["paths"][path]["get"]["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("{path} has no {name}"))["schema"]
            .clone()
    };
    let all = "/v1/invocations";
    assert!(
        param(all, "status")
            .to_string()
            .contains("InvocationStatus"),
        "{}",
        param(all, "status")
    );
    assert!(param(all, "trigger").to_string().contains("Trigger"));
    assert_eq!(param(all, "since")["format"], "date-time");
    for bound in ["from", "to"] {
        assert_eq!(param("/v1/usage", bound)["format"], "date-time", "{bound}");
    }
    for path in [all, "/v1/functions/{name}/invocations", "/v1/dead-letters"] {
        let limit = param(path, "limit");
        let (min, max) = (limit["minimum"].as_i64(), limit["maximum"].as_i64());
        assert_eq!((min, max), (Some(1), Some(500)), "{path}: {limit}");
    }
    for (limit, status) in [("500", 200), ("501", 400), ("0", 400), ("1", 200)] {
        let r = app.get(&format!("{all}?limit={limit}")).await;
        assert_eq!(r.status(), status, "limit={limit}");
    }
    app.shutdown().await;
}

/// `GET /` sends a browser to the dashboard and gives an API client a small JSON index; an
/// unknown dashboard page answers with an HTML 404 page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_root_redirects_browsers_and_indexes_for_clients() {
    let app = spawn_app().await;
    let plain = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let firefox = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";
    let r = plain
        .get(app.url("/"))
        .header("accept", firefox)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/ui");
    assert_eq!(r.headers()["vary"], "accept");

    // No key needed; curl's `*/*` and no Accept at all are API clients.
    for accept in [Some("*/*"), Some("application/json"), None] {
        let mut request = plain.get(app.url("/"));
        if let Some(accept) = accept {
            request = request.header("accept", accept);
        }
        let r = request.send().await.unwrap();
        assert_eq!(r.status(), 200, "{accept:?}");
        assert!(
            r.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("application/json")
        );
        let index: Value = r.json().await.unwrap();
        assert_eq!(index["name"], "granda");
        assert_eq!(index["version"], env!("CARGO_PKG_VERSION"));
        for (link, path) in [
            ("openapi", "/openapi.json"),
            ("ui", "/ui"),
            ("healthz", "/healthz"),
        ] {
            let url = index["links"][link].as_str().unwrap();
            assert_eq!(url, app.url(path), "{index}");
        }
    }
    // The links answer.
    let doc = plain.get(app.url("/openapi.json")).send().await.unwrap();
    assert_eq!(doc.status(), 200);

    // An unknown dashboard page is an HTML page, with an API key or without.
    for client in [&plain, &app.client] {
        for path in ["/ui/nope", "/ui/functions/x/nope", "/ui/static/nope.css"] {
            let r = client
                .get(app.url(path))
                .header("accept", firefox)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 404, "{path}");
            let ct = r.headers()["content-type"].to_str().unwrap().to_string();
            assert!(ct.starts_with("text/html"), "{path}: {ct}");
            let body = r.text().await.unwrap();
            assert!(
                body.contains("<html") || body.contains("<!DOCTYPE"),
                "{body}"
            );
            assert!(body.contains("Not Found"), "{body}");
        }
    }
    app.shutdown().await;
}
