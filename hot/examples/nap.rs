//! A hot function that waits without computing, like one that calls an API or a database: each
//! request sleeps `NAP_MS` milliseconds (default 100), then echoes its input. The benchmark's
//! I/O-bound rows (`granda-bench --scenario scheduler`) run it as `granda-test/hot-nap`.

use granda_hot::Request;
use std::time::Duration;

fn main() {
    let nap = std::env::var("NAP_MS")
        .ok()
        .and_then(|ms| ms.parse().ok())
        .unwrap_or(100);
    granda_hot::serve(move |req: Request| -> Result<Vec<u8>, String> {
        std::thread::sleep(Duration::from_millis(nap));
        Ok(req.body)
    });
}
