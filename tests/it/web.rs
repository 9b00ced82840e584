//! Functions as web endpoints: any method and path of `/fn/{name}` in, CGI/1.1 meta-variables
//! for cold and warm runs (`granda-test/cgi`, a plain sh CGI script), the request itself for hot
//! ones (`granda-test/hot-web`), and the function's own status and headers out.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use crate::support::{ADMIN_KEY, TestApp, error_code, id_of, spawn_app};

/// A client that follows no redirect, with the admin key or anonymous.
fn client(key: Option<&str>) -> reqwest::Client {
    granda::tls::install_provider();
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(key) = key {
        headers.insert(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {key}").parse().unwrap(),
        );
    }
    reqwest::Client::builder()
        .default_headers(headers)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

async fn send(
    app: &TestApp,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> reqwest::Response {
    let mut request = client(Some(ADMIN_KEY))
        .request(method, app.url(path))
        .body(body.to_string());
    for (n, v) in headers {
        request = request.header(*n, *v);
    }
    request.send().await.expect("request")
}

/// `KEY=value` lines as a map's entries.
fn env_of(text: &str) -> std::collections::BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Every meta-variable of RFC 3875 that applies, the body on stdin, and the Granda key and
/// session cookie withheld.
async fn variables_reach(app: &TestApp, name: &str) {
    let port = app.address.rsplit(':').next().unwrap().to_string();
    let response = send(
        app,
        Method::POST,
        &format!("/fn/{name}/env?a=1&b=two"),
        &[
            ("Content-Type", "text/plain"),
            ("X-Thing", "yes"),
            ("Cookie", "c=1; granda_session=stolen; d=2"),
            ("X_Spoof", "no"),
        ],
        "hello",
    )
    .await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/plain");
    let text = response.text().await.unwrap();
    let env = env_of(&text);
    for (k, v) in [
        ("GATEWAY_INTERFACE", "CGI/1.1"),
        ("REQUEST_METHOD", "POST"),
        ("PATH_INFO", "/env"),
        ("QUERY_STRING", "a=1&b=two"),
        ("CONTENT_TYPE", "text/plain"),
        ("CONTENT_LENGTH", "5"),
        ("HTTP_X_THING", "yes"),
        ("HTTP_COOKIE", "c=1; d=2"),
        ("REMOTE_ADDR", "127.0.0.1"),
        ("SERVER_NAME", "127.0.0.1"),
        ("SERVER_PORT", port.as_str()),
        ("SERVER_PROTOCOL", "HTTP/1.1"),
        ("SCRIPT_NAME", &format!("/fn/{name}")),
        ("REQUEST_URI", &format!("/fn/{name}/env?a=1&b=two")),
    ] {
        assert_eq!(env.get(k).map(String::as_str), Some(v), "{k} in\n{text}");
    }
    assert!(
        !text.contains(ADMIN_KEY) && !text.contains("stolen"),
        "the Granda key or session reached the function:\n{text}"
    );
    assert!(!env.contains_key("HTTP_AUTHORIZATION"), "{text}");
    assert!(!env.contains_key("HTTP_X_SPOOF"), "{text}");
    assert!(env.contains_key("HTTP_HOST") && env.contains_key("GRANDA_INVOCATION_ID"));

    // The body is on stdin.
    let echoed = send(
        app,
        Method::PUT,
        &format!("/fn/{name}/echo"),
        &[],
        "a=1&b=2",
    )
    .await;
    assert_eq!(echoed.status(), 200);
    assert_eq!(echoed.text().await.unwrap(), "a=1&b=2");
}

/// Document, redirects, custom status, headers, cookies, malformed header blocks, HEAD.
async fn response_forms(app: &TestApp, name: &str) {
    let page = send(app, Method::GET, &format!("/fn/{name}"), &[], "").await;
    assert_eq!(page.status(), 200);
    assert_eq!(page.headers()["content-type"], "text/html");
    assert_eq!(page.text().await.unwrap(), "<h1>Hello from GET</h1>\n");

    let created = send(app, Method::POST, &format!("/fn/{name}/created"), &[], "").await;
    assert_eq!(created.status(), 201);
    let h = created.headers();
    assert_eq!(h["content-type"], "application/json");
    assert_eq!(h["x-custom"], "yes");
    let cookies: Vec<_> = h.get_all("set-cookie").iter().collect();
    assert_eq!(cookies, ["a=1; Path=/", "b=2"]);
    assert!(h.get("connection").is_none() && h.get("keep-alive").is_none());
    assert!(h.contains_key("x-granda-invocation-id"));
    assert_eq!(created.text().await.unwrap(), r#"{"ok":true}"#);

    let head = send(app, Method::HEAD, &format!("/fn/{name}/created"), &[], "").await;
    assert_eq!(head.status(), 201);
    assert_eq!(head.headers()["content-type"], "application/json");
    assert_eq!(head.text().await.unwrap(), "", "HEAD answers no body");

    let away = send(app, Method::GET, &format!("/fn/{name}/redirect"), &[], "").await;
    assert_eq!(away.status(), 302);
    assert_eq!(away.headers()["location"], "https://example.org/elsewhere");

    let teapot = send(app, Method::DELETE, &format!("/fn/{name}/teapot"), &[], "").await;
    assert_eq!(teapot.status(), 418, "a 4xx is the function's answer");
    let id = id_of(&teapot);
    assert_eq!(teapot.text().await.unwrap(), "short and stout");
    // The record says what was asked and answered.
    let record = app.wait_final(id, Duration::from_secs(10)).await;
    assert_eq!(record["status"], "succeeded", "{record}");
    assert_eq!(record["http_method"], "DELETE");
    assert_eq!(record["http_path"], "/teapot");
    assert_eq!(record["http_status"], 418);
    assert_eq!(
        record["output"], "short and stout",
        "the body, without the headers"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_cgi_script_gets_every_variable_and_answers_every_form() {
    let app = spawn_app().await;
    app.register("web", "granda-test/cgi", json!({"response": "cgi"}))
        .await;
    variables_reach(&app, "web").await;
    response_forms(&app, "web").await;

    let local = send(&app, Method::GET, "/fn/web/local", &[], "").await;
    assert_eq!(local.status(), 302, "a local redirect is a client redirect");
    assert_eq!(local.headers()["location"], "/fn/web/env");

    for (path, says) in [("bad", "no ':'"), ("nohead", "no blank line")] {
        let response = send(&app, Method::GET, &format!("/fn/web/{path}"), &[], "").await;
        let id = id_of(&response);
        assert_eq!(error_code(response, 502).await, "bad_cgi_response");
        let record = app.wait_final(id, Duration::from_secs(10)).await;
        assert_eq!(record["status"], "failed");
        let error = record["error"].as_str().unwrap();
        assert!(
            error.contains("malformed CGI response") && error.contains(says),
            "{error}"
        );
        assert_eq!(record["http_status"], 502);
    }
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_cgi_script_gets_every_variable_and_answers_every_form() {
    let app = spawn_app().await;
    app.register(
        "web",
        "granda-test/cgi",
        json!({"response": "cgi", "mode": "warm"}),
    )
    .await;
    variables_reach(&app, "web").await;
    response_forms(&app, "web").await;
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_sh_cgi_script_serves_anonymous_callers_of_every_method() {
    let app = spawn_app().await;
    // The script's default branch prints `Content-Type: text/html`, a blank line and a page, as
    // it would for any web server.
    app.register(
        "page",
        "granda-test/cgi",
        json!({"response": "cgi", "public": true}),
    )
    .await;
    let anonymous = client(None);
    for method in ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"] {
        let response = anonymous
            .request(
                Method::from_bytes(method.as_bytes()).unwrap(),
                app.url("/fn/page/any/path"),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{method}");
        assert_eq!(response.headers()["content-type"], "text/html");
        assert_eq!(
            response.text().await.unwrap(),
            format!("<h1>Hello from {method}</h1>\n")
        );
    }
    // Without `response: "cgi"` the output is the body, as before, and the variables are there.
    app.register("plain", "granda-test/env", json!({})).await;
    let response = send(&app, Method::GET, "/fn/plain/x/y?z=1", &[], "").await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "application/octet-stream"
    );
    let env = env_of(&response.text().await.unwrap());
    assert_eq!(env["PATH_INFO"], "/x/y");
    assert_eq!(env["QUERY_STRING"], "z=1");
    assert_eq!(env["REQUEST_METHOD"], "GET");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_web_app_gets_the_request_itself_and_its_answer_passes() {
    let app = spawn_app().await;
    app.register(
        "app",
        "granda-test/hot-web",
        json!({"response": "cgi", "mode": "hot"}),
    )
    .await;
    let response = send(
        &app,
        Method::PATCH,
        "/fn/app/request?a=1",
        &[
            ("X-Thing", "yes"),
            ("Cookie", "c=1; granda_session=stolen"),
            ("Granda-Trigger", "spoofed"),
        ],
        "body",
    )
    .await;
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    assert!(
        text.starts_with("method: PATCH\ntarget: /request?a=1\n"),
        "{text}"
    );
    assert!(
        text.contains("\nx-thing: yes\n") && text.contains("\ncookie: c=1\n"),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "\nhost: {}\n",
            app.address.trim_start_matches("http://")
        )),
        "{text}"
    );
    assert!(
        !text.contains(ADMIN_KEY) && !text.contains("stolen") && !text.contains("authorization"),
        "{text}"
    );
    assert!(!text.contains("spoofed"), "{text}");
    let granda = text.lines().last().unwrap();
    assert!(
        granda.contains("granda-invocation-id") && granda.contains("granda-web"),
        "{granda}"
    );
    let echoed = send(&app, Method::POST, "/fn/app/echo", &[], "hello hot").await;
    assert_eq!(echoed.text().await.unwrap(), "hello hot");

    response_forms(&app, "app").await;

    // Its 5xx is its failure, still answered as it was.
    let failed = send(&app, Method::GET, "/fn/app/fail", &[], "").await;
    assert_eq!(failed.status(), 500);
    let id = id_of(&failed);
    assert_eq!(failed.text().await.unwrap(), "asked to fail");
    let record = app.wait_final(id, Duration::from_secs(10)).await;
    assert_eq!(record["status"], "failed");
    assert_eq!(record["http_status"], 500);
    // Calls of /v1/functions/{name}/invoke are no HTTP calls of the function.
    let plain = app.invoke("app", "x").await;
    let record = app.wait_final(id_of(&plain), Duration::from_secs(10)).await;
    assert!(
        record["http_method"].is_null() && record["http_status"].is_null(),
        "{record}"
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_function_without_cgi_gets_url_calls_and_answers_a_body() {
    let app = spawn_app().await;
    // Its own headers and status are not passed on: a 2xx is success, its body the output.
    app.register("hot", "granda-test/hot-web", json!({"mode": "hot"}))
        .await;
    let response = send(&app, Method::PUT, "/fn/hot/echo", &[], "hello").await;
    let status = response.status();
    if status != 200 {
        panic!("{status}: {}", response.text().await.unwrap());
    }
    assert_eq!(
        response.headers()["content-type"],
        "application/octet-stream"
    );
    assert_eq!(response.text().await.unwrap(), "hello");
    let teapot = send(&app, Method::GET, "/fn/hot/teapot", &[], "").await;
    assert_eq!(error_code(teapot, 502).await, "function_failed");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_that_cannot_reach_a_function_are_refused_and_run_nothing() {
    let app = spawn_app().await;
    app.register("web", "granda-test/cgi", json!({"response": "cgi"}))
        .await;
    let bad_value = reqwest::header::HeaderValue::from_bytes(b"caf\xe9").unwrap();
    let response = client(Some(ADMIN_KEY))
        .get(app.url("/fn/web/env"))
        .header("X-Latin", bad_value)
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(response, 400).await, "bad_request");
    let big = "v".repeat(granda::web::MAX_HEADER_BYTES);
    let response = send(&app, Method::GET, "/fn/web/env", &[("X-Big", &big)], "").await;
    assert_eq!(error_code(response, 400).await, "bad_request");
    let mut request = client(Some(ADMIN_KEY)).get(app.url("/fn/web/env"));
    for i in 0..=granda::web::MAX_HEADERS {
        request = request.header(format!("x-h{i}"), "v");
    }
    let response = request.send().await.unwrap();
    assert!(response.status().is_client_error(), "{}", response.status());
    assert!(app.invocations_of("web").await.is_empty(), "nothing ran");

    for (cors, says) in [
        (json!({"allow_origins": []}), "allow_origins"),
        (json!({"allow_origins": ["ftp://x"]}), "allow_origins"),
        (
            json!({"allow_origins": ["*"], "allow_methods": ["BREW"]}),
            "allow_methods",
        ),
        (
            json!({"allow_origins": ["*"], "allow_headers": ["a b"]}),
            "allow_headers",
        ),
    ] {
        let response = app
            .post_json(
                "/v1/functions",
                &json!({"name": "c", "image": "granda-test/cgi", "cors": cors}),
            )
            .await;
        assert_eq!(response.status(), 422);
        let body: Value = response.json().await.unwrap();
        assert!(body.to_string().contains(says), "{body}");
    }
    let response = app
        .post_json(
            "/v1/functions",
            &json!({"name": "c", "image": "granda-test/cgi", "response": "html"}),
        )
        .await;
    assert!(response.status().is_client_error());
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn granda_answers_cors_preflights_of_a_function_with_cors() {
    let app = spawn_app().await;
    app.register(
        "api",
        "granda-test/cgi",
        json!({"response": "cgi", "public": true,
               "cors": {"allow_origins": ["https://app.example"], "allow_methods": ["GET", "PUT"],
                        "allow_headers": ["X-Token"]}}),
    )
    .await;
    let anonymous = client(None);
    let preflight = |origin: &'static str, method: &'static str| {
        anonymous
            .request(Method::OPTIONS, app.url("/fn/api/created"))
            .header("Origin", origin)
            .header("Access-Control-Request-Method", method)
            .send()
    };
    let ok = preflight("https://app.example", "PUT").await.unwrap();
    assert_eq!(ok.status(), 204);
    assert_eq!(
        ok.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    assert_eq!(ok.headers()["access-control-allow-methods"], "GET, PUT");
    assert_eq!(ok.headers()["access-control-allow-headers"], "X-Token");
    for (origin, method) in [
        ("https://evil.example", "PUT"),
        ("https://app.example", "DELETE"),
    ] {
        let refused = preflight(origin, method).await.unwrap();
        assert_eq!(refused.status(), 204);
        assert!(
            refused
                .headers()
                .get("access-control-allow-origin")
                .is_none()
        );
    }
    assert!(
        app.invocations_of("api").await.is_empty(),
        "preflights run nothing"
    );

    let call = anonymous
        .put(app.url("/fn/api/created"))
        .header("Origin", "https://app.example")
        .send()
        .await
        .unwrap();
    assert_eq!(call.status(), 201);
    assert_eq!(
        call.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    // A plain OPTIONS (no preflight) is the function's.
    let options = anonymous
        .request(Method::OPTIONS, app.url("/fn/api"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        options.text().await.unwrap(),
        "<h1>Hello from OPTIONS</h1>\n"
    );

    // A function that is not public: its preflight (which carries no key) is answered all the
    // same; nothing else runs without a key, and no other function's existence shows.
    app.register(
        "private",
        "granda-test/cgi",
        json!({"response": "cgi", "cors": {"allow_origins": ["*"]}}),
    )
    .await;
    app.register("closed", "granda-test/cgi", json!({"response": "cgi"}))
        .await;
    let private = |path: &'static str| {
        anonymous
            .request(Method::OPTIONS, app.url(path))
            .header("Origin", "https://app.example")
            .header("Access-Control-Request-Method", "GET")
            .send()
    };
    let ok = private("/fn/private/x").await.unwrap();
    assert_eq!(ok.status(), 204);
    // Any origin: `*`, never the caller's origin reflected (no credentialed access).
    assert_eq!(ok.headers()["access-control-allow-origin"], "*");
    for path in ["/fn/closed/x", "/fn/nothing-here/x"] {
        assert_eq!(private(path).await.unwrap().status(), 401, "{path}");
    }
    let plain = anonymous
        .request(Method::OPTIONS, app.url("/fn/private"))
        .send()
        .await
        .unwrap();
    assert_eq!(plain.status(), 401);
    assert!(app.invocations_of("private").await.is_empty());
    assert!(app.invocations_of("closed").await.is_empty());
    app.shutdown().await;
}

/// A browser loads a function's HTML form, submits it, follows the function's 303 and shows its
/// result page.
#[tokio::test(flavor = "multi_thread")]
async fn a_browser_submits_a_function_s_form_and_follows_its_redirect() {
    let app = spawn_app().await;
    app.register(
        "form",
        "granda-test/cgi",
        json!({"response": "cgi", "public": true}),
    )
    .await;
    let browser = crate::browser::Chromium::start().await;
    let client = browser.client.clone();
    let driven = async {
        client.goto(&app.url("/fn/form/form")).await?;
        crate::browser::fill(&client, "#who", "Ada").await?;
        crate::browser::click(&client, "#go").await?;
        let result = crate::browser::text_of(&client, "#result").await?;
        let url = client.current_url().await?;
        crate::browser::shot(&client, "web-form-result").await?;
        anyhow::Ok((result, url))
    }
    .await;
    browser.close().await;
    let (result, url) = driven.unwrap();
    assert_eq!(result, "who=Ada");
    assert!(url.as_str().ends_with("/fn/form/result?who=Ada"), "{url}");
    // Two runs: the form's POST (answered 303) and the result page's GET.
    let records = app.invocations_of("form").await;
    let answered: Vec<(String, i64)> = records
        .iter()
        .map(|r| {
            (
                format!(
                    "{} {}",
                    r["http_method"].as_str().unwrap(),
                    r["http_path"].as_str().unwrap()
                ),
                r["http_status"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        answered,
        [
            ("GET /result".to_string(), 200),
            ("POST /submit".to_string(), 303),
            ("GET /form".to_string(), 200)
        ]
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_deploys_a_cgi_function_and_shows_what_a_call_asked_and_got() {
    use crate::cli::{expect, granda};
    let app = spawn_app().await;
    expect(
        &granda(
            &app,
            &[
                "fn",
                "deploy",
                "page",
                "--image",
                "granda-test/cgi",
                "--response",
                "cgi",
            ],
            b"",
        )
        .await,
        0,
    );
    let shown = expect(&granda(&app, &["fn", "get", "page"], b"").await, 0);
    assert!(
        shown
            .lines()
            .any(|l| l.starts_with("response:") && l.ends_with("cgi")),
        "{shown}"
    );
    let created = send(&app, Method::POST, "/fn/page/created?x=1", &[], "").await;
    assert_eq!(created.status(), 201);
    let id = id_of(&created).to_string();
    app.wait_final(id.parse().unwrap(), Duration::from_secs(10))
        .await;
    let out = expect(&granda(&app, &["inv", "get", &id], b"").await, 0);
    for (field, value) in [
        ("http_method:", "POST"),
        ("http_path:", "/created"),
        ("http_status:", "201"),
    ] {
        assert!(
            out.lines()
                .any(|l| l.starts_with(field) && l.trim_end().ends_with(value)),
            "{field} {value} in\n{out}"
        );
    }
    app.shutdown().await;
}
