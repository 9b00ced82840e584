//! A function's settings, whole, on its page: every field the API shows (mode and warm pool,
//! limits, network, user, public, retry policy, callback, env), the names of its secrets (never
//! their values), and where its image came from.

use maud::{Markup, html};

use super::fmt_time;
use crate::function::Function;

/// `90 s`, `2 h`, `7 d`: a retention in the largest whole unit.
fn span(s: i64) -> String {
    match s {
        s if s % 86_400 == 0 => format!("{} d", s / 86_400),
        s if s % 3600 == 0 => format!("{} h", s / 3600),
        s => format!("{s} s"),
    }
}

/// The settings table of `f`, with the retention that applies to it.
pub(crate) fn table(f: &Function, retention: &crate::retention::Effective) -> Markup {
    let retry_on: Vec<&str> = f.run.retry_on.iter().map(|r| r.as_str()).collect();
    let secrets = f.secrets.names();
    let dash = || "—".to_string();
    html! {
        table.kv #settings {
            tr { th { "Image" } td { code { (f.run.image) } } }
            tr { th { "Built from" } td {
                @match (&f.runtime, f.version) {
                    (Some(r), Some(v)) => { "source, runtime " (r) ", version " (v) }
                    _ => "an image",
                }
            } }
            tr { th { "Description" } td { (f.description.as_deref().unwrap_or("—")) } }
            tr { th { "Input" } td { (f.run.input.as_str()) } }
            tr { th { "Mode" } td #mode { (f.run.mode.as_str()) } }
            tr { th { "Warm pool" } td #pool {
                "min warm " (f.run.pool.min_warm)
                " · max containers " (f.run.pool.max_containers.map_or("worker's concurrency".to_string(), |m| m.to_string()))
                " · idle timeout " (f.run.pool.idle_timeout_ms) " ms"
            } }
            tr { th { "Queue" } td { (f.queue) } }
            tr { th { "Timeout" } td { (f.run.timeout_ms) " ms" } }
            tr { th { "Memory" } td { (f.run.memory_mb) " MB" } }
            tr { th { "CPUs" } td { (f.run.cpus) } }
            tr { th { "Processes" } td { (f.run.pids) } }
            tr { th { "/tmp" } td { (f.run.tmp_mb) " MB" } }
            tr { th { "Network" } td #network { (f.run.network.as_str()) } }
            tr { th { "User" } td #user { (f.run.user.clone().unwrap_or_else(|| "the image's".into())) } }
            tr { th { "Container runtime" } td { (f.run.container_runtime.clone().unwrap_or_else(|| "the worker's default".into())) } }
            tr { th { "Public URL" } td #public { @if f.public { "yes: /fn/" (f.name) " needs no key" } @else { "no: a key is needed" } } }
            tr { th { "Response" } td #response { (f.run.response.as_str()) } }
            tr { th { "Stored" } td #store-output {
                (f.run.store_output.as_str()) ": "
                @match f.run.store_output {
                    crate::function::StoreOutput::Always => "every record keeps its input, output and logs",
                    crate::function::StoreOutput::OnFailure => "a success keeps its record without input, output and logs",
                }
            } }
            tr { th { "CORS" } td #cors {
                @if let Some(c) = &f.cors {
                    "origins " (c.allow_origins.join(", ")) "; methods " (c.allow_methods.join(", "))
                    @if !c.allow_headers.is_empty() { "; headers " (c.allow_headers.join(", ")) }
                } @else { "—" }
            } }
            tr { th { "Retry policy" } td #retry {
                (f.run.max_attempts) " attempts; retried on platform failures"
                @if !retry_on.is_empty() { " and " (retry_on.join(", ")) }
            } }
            tr { th { "Max concurrency" } td { (f.run.max_concurrency.map_or("no limit".to_string(), |m| m.to_string())) } }
            tr { th { "Retention" } td #retention {
                "ended invocations kept " (span(retention.kept_s)) ", failures " (span(retention.failed_kept_s))
                span.muted { " (from the " (retention.from) ")" }
            } }
            tr { th { "Callback URL" } td { code { (f.callback_url.clone().unwrap_or_else(dash)) } } }
            tr { th { "Env" } td {
                @if f.run.env.is_empty() { "—" }
                @for (k, v) in &f.run.env { code { (k) "=" (v) } br; }
            } }
            tr { th { "Secrets" } td #secrets {
                @if secrets.is_empty() { "—" }
                @for name in &secrets { code { (name) } " " }
                @if !secrets.is_empty() { span.muted { "(values are never shown)" } }
            } }
            tr { th { "Created" } td { (fmt_time(Some(f.created_at))) } }
            tr { th { "Updated" } td { (fmt_time(Some(f.updated_at))) } }
        }
    }
}
