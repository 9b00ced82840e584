//! The Docker engine: connecting to it (`DOCKER_HOST`) and making sure an image is there. Only
//! workers (and `granda up`) talk to an engine; a standalone ingress has none.

use bollard::{API_DEFAULT_VERSION, Docker};
use futures_util::StreamExt;

/// Label on every container Granda starts: the invocation it runs.
pub const LABEL_INVOCATION: &str = "granda.invocation";
/// Label on every container Granda starts: the worker that started it.
pub const LABEL_WORKER: &str = "granda.worker";
/// Label on every container Granda starts: its function.
pub const LABEL_FUNCTION: &str = "granda.function";
/// Label on the containers of a warm pool (they carry no invocation and no deadline).
pub const LABEL_POOL: &str = "granda.pool";
/// Label on every container Granda starts: when it must be gone by, in ms since the epoch.
pub const LABEL_DEADLINE: &str = "granda.deadline";
/// Label on every container Granda starts: which installation (database and queues) it belongs
/// to, so that workers of several installations on one engine sweep only their own.
pub const LABEL_INSTALLATION: &str = "granda.installation";

/// The installation's identity: the uuid made once in its database (migration 0012), so every
/// process of one installation has the same, however it spells the database's URL, and two
/// installations never have the same.
pub async fn installation(pool: &sqlx::PgPool) -> Result<String, sqlx::Error> {
    let (id,): (String,) =
        sqlx::query_as("SELECT value FROM installation WHERE key = 'installation_id'")
            .fetch_one(pool)
            .await?;
    Ok(id)
}

/// Connects to `host` (`unix://…`, `tcp://…`, `http://…`), or the local socket when `None`.
/// `timeout_secs` bounds every engine call, so it must outlast the longest function.
pub fn connect(host: Option<&str>, timeout_secs: u64) -> Result<Docker, bollard::errors::Error> {
    match host {
        None | Some("") => Docker::connect_with_unix(
            "unix:///var/run/docker.sock",
            timeout_secs,
            API_DEFAULT_VERSION,
        ),
        Some(h) if h.starts_with("unix://") => {
            Docker::connect_with_unix(h, timeout_secs, API_DEFAULT_VERSION)
        }
        Some(h) => Docker::connect_with_http(h, timeout_secs, API_DEFAULT_VERSION),
    }
}

/// Why an image can't be used.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The engine has no such image and could not pull it; the engine's own words.
    #[error("image {image:?} can't be had: {reason}")]
    Unavailable { image: String, reason: String },
    /// The engine itself did not answer.
    #[error("docker engine unavailable: {0}")]
    Engine(bollard::errors::Error),
}

/// Makes sure the engine has `image`, pulling it when it lacks it.
#[tracing::instrument(skip(docker))]
pub async fn ensure_image(docker: &Docker, image: &str) -> Result<(), ImageError> {
    if has_image(docker, image).await? {
        return Ok(());
    }
    pull(docker, image).await
}

/// Whether the engine has `image`.
pub async fn has_image(docker: &Docker, image: &str) -> Result<bool, ImageError> {
    match docker.inspect_image(image).await {
        Ok(_) => Ok(true),
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => Ok(false),
        // The engine refuses the reference itself (`invalid reference format`): no engine can
        // have it, which is the caller's mistake, not the engine's trouble.
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 400..=499,
            message,
        }) => Err(unavailable(image, message)),
        Err(e) => Err(ImageError::Engine(e)),
    }
}

/// Pulls `image` from the registry its name says, then checks the engine has it.
pub async fn pull(docker: &Docker, image: &str) -> Result<(), ImageError> {
    tracing::info!(image, "pulling image");
    let (repo, tag) = split_tag(image);
    let options = bollard::query_parameters::CreateImageOptionsBuilder::new()
        .from_image(repo)
        .tag(tag)
        .build();
    let mut pull = docker.create_image(Some(options), None, None);
    while let Some(step) = pull.next().await {
        match step {
            Ok(info) => {
                if let Some(detail) = info.error_detail.and_then(|d| d.message) {
                    return Err(unavailable(image, detail));
                }
            }
            Err(bollard::errors::Error::DockerResponseServerError { message, .. }) => {
                return Err(unavailable(image, message));
            }
            Err(e @ bollard::errors::Error::HyperResponseError { .. }) => {
                return Err(ImageError::Engine(e));
            }
            Err(e) => return Err(unavailable(image, e.to_string())),
        }
    }
    // A pull that "succeeds" without producing the image is still a failure.
    docker
        .inspect_image(image)
        .await
        .map(|_| ())
        .map_err(|e| unavailable(image, e.to_string()))
}

/// The engine's identity for the workers table: `DOCKER_HOST` as given (or the default socket)
/// and the engine's ID, so a taker-over knows which engine a dead worker's containers are on.
pub fn address(host: Option<&str>) -> String {
    match host {
        None | Some("") => "unix:///var/run/docker.sock".to_string(),
        Some(h) => h.to_string(),
    }
}

/// The first of an image's `VOLUME`s that can't be mounted as a size-capped tmpfs (Granda mounts
/// each as one, see `worker::container`): empty, not absolute, or holding a `,` (which would split
/// the tmpfs mount's options). The engine would make such a path an uncapped volume on the host's
/// disk, so images declaring one are refused.
pub fn uncappable_volume(volumes: &[String]) -> Option<&str> {
    volumes.iter().map(String::as_str).find(|v| {
        let path = v.trim_end_matches('/');
        path.is_empty() || !path.starts_with('/') || path.contains(',')
    })
}

/// Why an image declaring `volume` is refused.
pub fn volume_refusal(image: &str, volume: &str) -> String {
    format!(
        "image {image:?} declares VOLUME {volume:?}, which can't be mounted as a size-capped tmpfs \
         (an absolute path without ','); Granda refuses it rather than let the engine put it on the \
         host's disk"
    )
}

/// Refuses `image` (on the engine already) when it declares an [`uncappable_volume`]: `Ok(Err)`
/// with the reason; `Err` when the engine did not answer.
pub async fn check_volumes(
    docker: &Docker,
    image: &str,
) -> Result<Result<(), String>, bollard::errors::Error> {
    let inspected = docker.inspect_image(image).await?;
    let volumes = inspected.config.and_then(|c| c.volumes).unwrap_or_default();
    Ok(match uncappable_volume(&volumes) {
        Some(volume) => Err(volume_refusal(image, volume)),
        None => Ok(()),
    })
}

fn unavailable(image: &str, reason: String) -> ImageError {
    ImageError::Unavailable {
        image: image.to_string(),
        reason,
    }
}

/// `repo[:tag][@digest]` into the repository and the tag (`latest` when none).
fn split_tag(image: &str) -> (&str, &str) {
    if image.contains('@') {
        return (image, "");
    }
    match image.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => (repo, tag),
        _ => (image, "latest"),
    }
}

#[cfg(test)]
mod tests {
    use super::{split_tag, uncappable_volume};

    #[test]
    fn volumes_that_cant_be_a_capped_tmpfs_are_found() {
        let v = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(uncappable_volume(&v(&["/data", "/var/lib/x/"])), None);
        assert_eq!(uncappable_volume(&v(&[])), None);
        for bad in ["/data,size=100g", "data", "/", "", "/a,b/"] {
            assert_eq!(uncappable_volume(&v(&["/ok", bad])), Some(bad), "{bad:?}");
        }
    }

    #[test]
    fn tags_are_split_from_repositories() {
        assert_eq!(split_tag("busybox"), ("busybox", "latest"));
        assert_eq!(split_tag("busybox:1.36"), ("busybox", "1.36"));
        assert_eq!(
            split_tag("host:5000/team/fn"),
            ("host:5000/team/fn", "latest")
        );
        assert_eq!(
            split_tag("host:5000/team/fn:v2"),
            ("host:5000/team/fn", "v2")
        );
    }
}
