//! Issue 26, item 3: a keyless call of `/fn/{name}` is refused (401) after the same work whether
//! or not the function exists, so its timing does not tell which private functions exist.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::spawn_app_with;

/// The median of `times`.
fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyless_refusals_take_as_long_for_missing_and_private_functions() {
    let app = spawn_app_with(|_| {}).await;
    app.register("secret", "granda-test/env", json!({})).await;
    let client = reqwest::Client::new();
    let (private, missing) = (app.url("/fn/secret"), app.url("/fn/no-such-function"));
    let mut times = (Vec::new(), Vec::new());
    // Alternating, so both see the same load; the first rounds warm the connection and caches.
    for round in 0..420 {
        for (url, into) in [(&private, &mut times.0), (&missing, &mut times.1)] {
            let started = Instant::now();
            let response = client.get(url.as_str()).send().await.unwrap();
            let status = response.status();
            let body = response.bytes().await.unwrap();
            let took = started.elapsed();
            assert_eq!(status, 401, "{}", String::from_utf8_lossy(&body));
            if round >= 20 {
                into.push(took);
            }
        }
    }
    let (private, missing) = (median(times.0), median(times.1));
    let ratio = private.max(missing).as_secs_f64() / private.min(missing).as_secs_f64();
    eprintln!("keyless 401 medians: private {private:?}, missing {missing:?}, ratio {ratio:.2}");
    // Before issue 26: 1.49 (private 505 µs, missing 752 µs); after: 1.00.
    assert!(ratio < 1.25, "private {private:?}, missing {missing:?}");
    app.shutdown().await;
}
