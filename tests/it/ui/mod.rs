//! The dashboard in a real browser: headless Chromium driven over WebDriver (chromedriver) logs
//! in, is refused a bad function with the error next to its field, creates the function through
//! the form, invokes it from its page, finds the invocation with its output, looks at the queues,
//! and deletes the function after confirming. Screenshots of every page go to
//! `target/ui-screenshots/`. Without `chromium` and `chromedriver` (scripts/setup.sh installs
//! them) the test fails: it never skips.

use std::time::Duration;

use anyhow::{Context, ensure};
use fantoccini::{Client, Locator};
use serde_json::json;

use crate::support::{TestApp, spawn_app};

mod bodies;
mod console;
mod pages;
pub(crate) mod security;

/// A binary from `$var` or `PATH`, or a panic that says how to get it.
pub(crate) use crate::browser::{Chromium, click, fill, h1_after, shot, text_of};

/// Logs `client` in with `key` through the login form.
pub(crate) async fn log_in(client: &Client, app: &TestApp, key: &str) -> anyhow::Result<()> {
    client.goto(&app.url("/ui/login")).await?;
    fill(client, "#key", key).await?;
    click(client, "button[type=submit]").await?;
    let h1 = h1_after(client, |h| h.starts_with("Functions")).await?;
    ensure!(h1.starts_with("Functions"), "after login: {h1}");
    Ok(())
}

/// Drives `scenario` in a fresh Chromium logged in to `app` with the admin key; then ends the
/// browser (with a screenshot if the scenario failed, see [`Chromium::finish`]) and the app.
pub(crate) async fn as_admin_in_chromium(
    app: TestApp,
    scenario: impl AsyncFnOnce(&Client, &TestApp) -> anyhow::Result<()>,
) {
    let browser = Chromium::start().await;
    let result = async {
        log_in(&browser.client, &app, crate::support::ADMIN_KEY).await?;
        scenario(&browser.client, &app).await
    }
    .await;
    browser.finish(result).await;
    app.shutdown().await;
}

/// A screenshot at desktop width (`{name}.png`) and at phone width (`{name}-phone.png`), with
/// a check that the page fits the phone without sideways scrolling.
pub(crate) async fn shots(client: &Client, name: &str) -> anyhow::Result<()> {
    shots_at(client, name, None).await
}

/// Like [`shots`], scrolled to the element `at` first.
pub(crate) async fn shots_at(client: &Client, name: &str, at: Option<&str>) -> anyhow::Result<()> {
    let scroll = |client: &Client| {
        let client = client.clone();
        let at = at.map(str::to_string);
        async move {
            if let Some(css) = at {
                client
                    .execute(
                        "document.querySelector(arguments[0]).scrollIntoView(); return null",
                        vec![json!(css)],
                    )
                    .await?;
            }
            anyhow::Ok(())
        }
    };
    scroll(client).await?;
    shot(client, name).await?;
    client.set_window_size(390, 844).await?;
    client.refresh().await?;
    scroll(client).await?;
    let width: serde_json::Value = client
        .execute("return document.documentElement.scrollWidth", vec![])
        .await?;
    ensure!(
        width.as_u64().is_some_and(|w| w <= 400),
        "{name} is {width} px wide on a phone"
    );
    shot(client, &format!("{name}-phone")).await?;
    client.set_window_size(1000, 760).await?;
    client.refresh().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn dashboard_in_a_browser() {
    let app = spawn_app().await;

    // Pages need a session: without one, a redirect to the login form.
    let bare = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = bare.get(app.url("/ui/queues")).send().await.unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(
        r.headers()["location"].to_str().unwrap(),
        "/ui/login?next=/ui/queues"
    );

    let browser = Chromium::start().await;
    let result = drive(&browser.client, &app).await;
    browser.finish(result).await;
    app.shutdown().await;
}

async fn drive(client: &Client, app: &TestApp) -> anyhow::Result<()> {
    // Log in.
    client.goto(&app.url("/ui")).await?;
    let url = client.current_url().await?;
    ensure!(
        url.path() == "/ui/login",
        "not sent to the login form: {url}"
    );
    shot(client, "login").await?;
    // A wrong key is refused; the admin key logs in.
    fill(client, "#key", "gk_not-a-key-at-all").await?;
    click(client, "button[type=submit]").await?;
    // The login page comes back with its error; wait for it before typing again.
    client
        .wait()
        .at_most(Duration::from_secs(30))
        .for_element(Locator::Css("p.error"))
        .await
        .context("a wrong key must be refused with an error")?;
    ensure!(
        client.current_url().await?.path() == "/ui/login",
        "a wrong key must not log in"
    );
    fill(client, "#key", crate::support::ADMIN_KEY).await?;
    click(client, "button[type=submit]").await?;
    let h1 = h1_after(client, |h| h.starts_with("Functions")).await?;
    ensure!(h1.starts_with("Functions"), "after login: {h1}");
    let cookie = client.get_named_cookie("granda_session").await?;
    ensure!(
        cookie.http_only() == Some(true),
        "session cookie not HttpOnly"
    );

    // A bad name is refused with the shared validation's words next to the field.
    client.goto(&app.url("/ui/functions/new")).await?;
    fill(client, "#name", "Not A Name").await?;
    fill(client, "#image", "granda-test/echo").await?;
    click(client, "#save").await?;
    let error = text_of(client, "#field-name .error").await?;
    ensure!(error.contains("must match"), "name error: {error}");
    ensure!(
        client
            .find(Locator::Css("#image"))
            .await?
            .prop("value")
            .await?
            == Some("granda-test/echo".into()),
        "the refused form lost its image"
    );
    shot(client, "new-function-error").await?;

    // Create it for real.
    fill(client, "#name", "hello").await?;
    fill(client, "#description", "echoes its input <b>escaped</b>").await?;
    click(client, "#save").await?;
    let h1 = h1_after(client, |h| h == "Function hello").await?;
    ensure!(h1 == "Function hello", "after create: {h1}");
    let url = text_of(client, "#invoke-url").await?;
    ensure!(url == app.url("/fn/hello"), "invoke URL: {url}");
    // The API sees what the form stored.
    let f: serde_json::Value = app.get("/v1/functions/hello").await.json().await?;
    ensure!(f["description"] == "echoes its input <b>escaped</b>", "{f}");

    // Invoke from the page.
    fill(client, "#body", "hello from the browser").await?;
    click(client, "#invoke").await?;
    let output = text_of(client, "#result #output").await?;
    ensure!(output == "hello from the browser", "output: {output:?}");
    let badge = text_of(client, "#result .badge").await?;
    ensure!(badge == "succeeded", "status: {badge}");
    let rows = client
        .find_all(Locator::Css("#invocations tbody tr"))
        .await?;
    ensure!(rows.len() == 1, "{} invocation rows", rows.len());
    let svg = client
        .find_all(Locator::Css("svg.chart.wide circle"))
        .await?;
    ensure!(svg.len() == 1, "{} points on the chart", svg.len());
    // The time axis has wall-clock tick labels.
    let ticks = client
        .find_all(Locator::Css("svg.chart.wide text.tick"))
        .await?;
    ensure!(ticks.len() >= 5, "{} tick labels", ticks.len());
    // The stylesheet is a static file the CSP allows: the page is styled, legend included.
    let colours: serde_json::Value = client
        .execute(
            "return [getComputedStyle(document.querySelector('header')).backgroundColor,
                     getComputedStyle(document.querySelector('.legend span.bars')).backgroundColor]",
            vec![],
        )
        .await?;
    ensure!(
        colours == json!(["rgb(29, 39, 51)", "rgb(201, 214, 232)"]),
        "styles not applied: {colours}"
    );
    shot(client, "function").await?;

    // The functions list counts it.
    client.goto(&app.url("/ui")).await?;
    let row = text_of(client, "#functions tbody tr").await?;
    ensure!(row.contains("hello") && row.contains("100%"), "row: {row}");
    shot(client, "functions").await?;

    // The invocation's page, through the link on the function's page.
    client.goto(&app.url("/ui/functions/hello")).await?;
    click(client, "#invocations tbody tr a").await?;
    let h1 = h1_after(client, |h| h.starts_with("Invocation ")).await?;
    ensure!(h1.starts_with("Invocation "), "{h1}");
    let record = text_of(client, "#record").await?;
    ensure!(
        record.contains("succeeded") && record.contains(&app.worker_id()),
        "record: {record}"
    );
    ensure!(text_of(client, "#output").await? == "hello from the browser");
    ensure!(text_of(client, "#input").await? == "hello from the browser");
    shot(client, "invocation").await?;
    // Its timeline as a waterfall: the wait in the queue, the start, the run, the record; the
    // bars fit a phone too.
    let timeline = text_of(client, "#waterfall").await?;
    for step in ["queued", "ran (attempt 1)", "recorded"] {
        ensure!(
            timeline.contains(step),
            "waterfall without {step:?}: {timeline}"
        );
    }
    shots_at(client, "invocation-waterfall", Some("#waterfall")).await?;

    // The queues: the work queue with the worker consuming it, the inbound ones, a queue whose
    // messages nobody consumes flagged, and the worker's heartbeat.
    app.register(
        "stuck",
        "granda-test/echo",
        serde_json::json!({"queue": "nobody"}),
    )
    .await;
    app.invoke_async("stuck", "waits").await;
    client.goto(&app.url("/ui/queues")).await?;
    let queues = text_of(client, "#queues").await?;
    ensure!(queues.contains("default"), "queues: {queues}");
    ensure!(queues.contains("inbound dead letters"), "queues: {queues}");
    let stalled = text_of(client, "#queues .stalled").await?;
    ensure!(stalled.contains("none consuming"), "queues: {queues}");
    let workers = text_of(client, "#workers").await?;
    ensure!(workers.contains(&app.worker_id()), "workers: {workers}");
    // The live view reloads the tables in place.
    let before = text_of(client, "#live p.muted:last-child").await?;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let after = text_of(client, "#live p.muted:last-child").await?;
    ensure!(before != after, "the queues view did not refresh: {after}");
    shot(client, "queues").await?;

    // Phone width: the function's page still fits.
    client.set_window_size(390, 844).await?;
    client.goto(&app.url("/ui/functions/hello")).await?;
    let width: serde_json::Value = client
        .execute("return document.documentElement.scrollWidth", vec![])
        .await?;
    ensure!(
        width.as_u64().is_some_and(|w| w <= 400),
        "the page is {width} px wide on a phone"
    );
    // The chart drawn for phones is the one shown, with fewer, larger labels.
    let shown: serde_json::Value = client
        .execute(
            "return [getComputedStyle(document.querySelector('svg.chart.wide')).display,
                     getComputedStyle(document.querySelector('svg.chart.narrow')).display]",
            vec![],
        )
        .await?;
    ensure!(shown == json!(["none", "block"]), "charts shown: {shown}");
    shot(client, "function-phone").await?;
    client.set_window_size(1000, 760).await?;

    // Delete, after confirming.
    client.goto(&app.url("/ui/functions/hello")).await?;
    click(client, "a.danger").await?;
    text_of(client, "#confirm-delete").await?;
    shot(client, "delete").await?;
    click(client, "#confirm-delete").await?;
    let h1 = h1_after(client, |h| h.starts_with("Functions")).await?;
    ensure!(h1.starts_with("Functions"), "after delete: {h1}");
    ensure!(app.get("/v1/functions/hello").await.status() == 404);
    Ok(())
}
