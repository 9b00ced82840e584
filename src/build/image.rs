//! Building a function's image on an engine: the build (network `none`, the log streamed as it
//! comes) and, with `GRANDA_REGISTRY`, the push, so workers on other hosts pull it. Workers do
//! this ([`crate::worker::builds`]); the ingress never touches an engine.

use bollard::Docker;
use futures_util::StreamExt;
use tokio::sync::mpsc;

use super::{BASE_IMAGE_HINT, BuildFailed};

/// Builds `context` into `tag` with network `none`, sending each log line to `lines` as it comes.
/// Returns the whole log.
#[tracing::instrument(skip(docker, context, lines))]
pub(crate) async fn build_image(
    docker: &Docker,
    context: Vec<u8>,
    tag: &str,
    lines: Option<&mpsc::UnboundedSender<String>>,
) -> Result<String, BuildFailed> {
    let options = bollard::query_parameters::BuildImageOptionsBuilder::new()
        .dockerfile("Dockerfile")
        .t(tag)
        .rm(true)
        .forcerm(true)
        .networkmode("none")
        .build();
    let mut log = String::new();
    let note = |text: &str, log: &mut String| {
        log.push_str(text);
        if let Some(lines) = lines {
            let _ = lines.send(text.to_string());
        }
    };
    // A build that fails before its second step could not get its base image (the `FROM`).
    let failed = |message: String, log: String| {
        let message = if log.contains("Step 2/") {
            message
        } else {
            format!("{message}. {BASE_IMAGE_HINT}")
        };
        BuildFailed { message, log }
    };
    let mut stream = docker.build_image(options, None, Some(bollard::body_full(context.into())));
    while let Some(step) = stream.next().await {
        match step {
            Ok(info) => {
                if let Some(text) = info.stream.as_deref().or(info.status.as_deref()) {
                    note(&strip_ansi(text), &mut log);
                }
                if let Some(message) = info.error_detail.and_then(|d| d.message) {
                    note(&format!("{message}\n"), &mut log);
                    return Err(failed(message, log));
                }
            }
            Err(e) => {
                let message = match e {
                    bollard::errors::Error::DockerResponseServerError { message, .. } => message,
                    bollard::errors::Error::DockerStreamError { error } => error,
                    other => other.to_string(),
                };
                note(&format!("{message}\n"), &mut log);
                return Err(failed(message, log));
            }
        }
    }
    // A build that ends without an error but left no image is still a failure.
    if let Err(e) = docker.inspect_image(tag).await {
        let message = format!("the build produced no image {tag}: {e}");
        return Err(BuildFailed { message, log });
    }
    Ok(log)
}

/// The image a build of `tag` produces: `<registry>/<tag>` with a registry (`GRANDA_REGISTRY`),
/// else `tag` itself, which stays on the engine that built it.
pub(crate) fn image_name(registry: Option<&str>, tag: &str) -> String {
    match registry.map(|r| r.trim().trim_end_matches('/')) {
        Some(r) if !r.is_empty() => format!("{r}/{tag}"),
        _ => tag.to_string(),
    }
}

/// What a build without a registry says: its image stays on the engine that built it.
pub(crate) fn no_registry_note(image: &str) -> String {
    format!(
        "GRANDA_REGISTRY is not set: {image} stays on the engine that built it. Only workers \
         of that engine can run it: without a registry, builds from source need one engine \
         shared by the queue's workers (set GRANDA_REGISTRY so that other hosts pull it)\n"
    )
}

/// Builds `context` as `tag` (under `registry` when given) and pushes it there. Returns the
/// image name and the whole log (the push's steps included).
pub(crate) async fn build_and_push(
    docker: &Docker,
    context: Vec<u8>,
    tag: &str,
    registry: Option<&str>,
    lines: Option<&mpsc::UnboundedSender<String>>,
) -> Result<(String, String), BuildFailed> {
    let image = image_name(registry, tag);
    let mut log = build_image(docker, context, &image, lines).await?;
    if image == tag {
        let note = no_registry_note(&image);
        if let Some(lines) = lines {
            let _ = lines.send(note.clone());
        }
        log.push_str(&note);
        return Ok((image, log));
    }
    match push_image(docker, &image, lines).await {
        Ok(pushed) => {
            log.push_str(&pushed);
            Ok((image, log))
        }
        Err(failed) => {
            log.push_str(&failed.log);
            Err(BuildFailed {
                message: failed.message,
                log,
            })
        }
    }
}

/// Pushes `image` (`registry/repo:tag`) to its registry. Returns the push's log.
#[tracing::instrument(skip(docker, lines))]
pub(crate) async fn push_image(
    docker: &Docker,
    image: &str,
    lines: Option<&mpsc::UnboundedSender<String>>,
) -> Result<String, BuildFailed> {
    let (repo, version) = match image.rsplit_once(':') {
        Some((repo, version)) if !version.contains('/') => (repo, version),
        _ => (image, "latest"),
    };
    let mut log = String::new();
    let note = |text: String, log: &mut String| {
        if let Some(lines) = lines {
            let _ = lines.send(text.clone());
        }
        log.push_str(&text);
    };
    note(format!("Pushing {image}\n"), &mut log);
    let options = bollard::query_parameters::PushImageOptionsBuilder::new()
        .tag(version)
        .build();
    let mut stream = docker.push_image(repo, Some(options), None);
    let mut last = String::new();
    while let Some(step) = stream.next().await {
        let message = match step {
            Ok(info) => {
                if let Some(message) = info.error_detail.and_then(|d| d.message) {
                    message
                } else {
                    // Progress lines repeat per layer: keep the log to status changes.
                    if let Some(status) = info.status
                        && status != last
                        && info.progress_detail.is_none_or(|p| p.current.is_none())
                    {
                        note(format!("{status}\n"), &mut log);
                        last = status;
                    }
                    continue;
                }
            }
            Err(bollard::errors::Error::DockerResponseServerError { message, .. }) => message,
            Err(bollard::errors::Error::DockerStreamError { error }) => error,
            Err(e) => e.to_string(),
        };
        note(format!("{message}\n"), &mut log);
        return Err(BuildFailed {
            message: format!("pushing {image} to its registry (GRANDA_REGISTRY) failed: {message}"),
            log,
        });
    }
    note(format!("Pushed {image}\n"), &mut log);
    Ok(log)
}

/// `text` without terminal colour codes (the engine wraps a RUN step's stderr in them).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_codes_are_dropped() {
        assert_eq!(strip_ansi("\u{1b}[91mbad\n\u{1b}[0mok"), "bad\nok");
    }

    #[test]
    fn a_registry_prefixes_the_tag() {
        assert_eq!(
            image_name(Some("127.0.0.1:5000/"), "granda-fn/f:v2"),
            "127.0.0.1:5000/granda-fn/f:v2"
        );
        assert_eq!(image_name(Some(" "), "granda-fn/f:v2"), "granda-fn/f:v2");
        assert_eq!(image_name(None, "granda-fn/f:v2"), "granda-fn/f:v2");
    }
}
