//! A real browser for tests: headless Chromium driven over WebDriver by a chromedriver of its
//! own ([`Chromium`]), and the few steps the tests take in it. Without `chromium` and
//! `chromedriver` (scripts/setup.sh installs them) a test that needs them fails: it never skips.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

/// A binary from `$var` or `PATH`, or a panic that says how to get it.
pub(crate) fn find_binary(var: &str, names: &[&str]) -> PathBuf {
    if let Some(p) = std::env::var_os(var) {
        return PathBuf::from(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        for name in names {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    panic!(
        "{} not found (set {var} or run scripts/setup.sh, which installs Debian's chromium and chromium-driver)",
        names.join(" / ")
    );
}

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub(crate) fn screenshot_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/ui-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub(crate) async fn shot(client: &Client, name: &str) -> anyhow::Result<()> {
    let png = client.screenshot().await.context("screenshot")?;
    std::fs::write(screenshot_dir().join(format!("{name}.png")), png)?;
    Ok(())
}

pub(crate) async fn text_of(client: &Client, css: &str) -> anyhow::Result<String> {
    let el = client
        .wait()
        .at_most(Duration::from_secs(30))
        .for_element(Locator::Css(css))
        .await
        .with_context(|| format!("waiting for {css}"))?;
    Ok(el.text().await?)
}

/// The `h1` once the page after a click shows one that passes `ok`: the click's navigation may not
/// have happened yet when this is called, so the old page's heading is waited out, not read.
pub(crate) async fn h1_after(client: &Client, ok: impl Fn(&str) -> bool) -> anyhow::Result<String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let text = match client.find(Locator::Css("h1")).await {
            Ok(el) => el.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        if ok(&text) || std::time::Instant::now() > deadline {
            return Ok(text);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub(crate) async fn fill(client: &Client, css: &str, value: &str) -> anyhow::Result<()> {
    let el = client
        .find(Locator::Css(css))
        .await
        .with_context(|| format!("finding {css}"))?;
    el.clear().await?;
    el.send_keys(value).await?;
    Ok(())
}

pub(crate) async fn click(client: &Client, css: &str) -> anyhow::Result<()> {
    client
        .find(Locator::Css(css))
        .await
        .with_context(|| format!("finding {css}"))?
        .click()
        .await?;
    Ok(())
}

/// Headless Chromium driven by a chromedriver of its own, with a fresh profile.
pub(crate) struct Chromium {
    pub client: Client,
    driver: tokio::process::Child,
    profile: PathBuf,
}

impl Chromium {
    /// Starts chromedriver and a Chromium session at desktop size (1000×760).
    pub async fn start() -> Chromium {
        let chromium = find_binary("GRANDA_TEST_CHROMIUM", &["chromium", "chromium-browser"]);
        let chromedriver = find_binary("GRANDA_TEST_CHROMEDRIVER", &["chromedriver"]);
        let port = free_port();
        let driver = tokio::process::Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("starting chromedriver");
        let profile = std::env::temp_dir().join(format!("granda-ui-{}", uuid::Uuid::new_v4()));
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": chromium,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-quic", "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--window-size=1000,760",
                    "--hide-scrollbars", format!("--user-data-dir={}", profile.display()),
                ],
            }),
        );
        let webdriver = format!("http://127.0.0.1:{port}");
        let mut connected = None;
        for _ in 0..100 {
            match ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
                .capabilities(caps.clone())
                .connect(&webdriver)
                .await
            {
                Ok(c) => {
                    connected = Some(c);
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
        let client = connected.expect("chromedriver did not start a Chromium session");
        Chromium {
            client,
            driver,
            profile,
        }
    }

    /// Ends the session; on a failed `result`, first a screenshot and the page's source of what
    /// the browser showed; then panics with the failure.
    pub async fn finish(self, result: anyhow::Result<()>) {
        if result.is_err() {
            let _ = shot(&self.client, "failure").await;
            if let (Ok(url), Ok(source)) =
                (self.client.current_url().await, self.client.source().await)
            {
                eprintln!("failed at {url}:\n{source}");
            }
        }
        self.close().await;
        result.unwrap();
    }

    /// Ends the session: the browser, its driver and its profile go.
    pub async fn close(mut self) {
        let _ = self.client.clone().close().await;
        // Not `kill().await`: its wait for SIGCHLD can miss the wake-up; bounded instead.
        let _ = self.driver.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.driver.wait()).await;
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}
