//! The Docker engine: connecting to it (`DOCKER_HOST`) and making sure an image is there. Only
//! workers (and `granda up`) talk to an engine; a standalone ingress has none.

use bollard::{API_DEFAULT_VERSION, Docker};
use futures_util::StreamExt;

/// Label on every container Granda starts: the invocation it runs.
pub const LABEL_INVOCATION: &str = "granda.invocation";
/// Label on every container Granda starts: the worker that started it.
pub const LABEL_WORKER: &str = "granda.worker";
/// Label on every container Granda starts: its function.
pub(crate) const LABEL_FUNCTION: &str = "granda.function";
/// Label on the containers of a warm pool (they carry no invocation and no deadline).
pub const LABEL_POOL: &str = "granda.pool";
/// Label on every container Granda starts: when it must be gone by, in ms since the epoch.
pub(crate) const LABEL_DEADLINE: &str = "granda.deadline";
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
pub(crate) async fn has_image(docker: &Docker, image: &str) -> Result<bool, ImageError> {
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
pub(crate) async fn pull(docker: &Docker, image: &str) -> Result<(), ImageError> {
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
pub(crate) fn address(host: Option<&str>) -> String {
    match host {
        None | Some("") => "unix:///var/run/docker.sock".to_string(),
        Some(h) => h.to_string(),
    }
}

/// Where an image's `VOLUME` is mounted: the path normalised lexically the way the engine does
/// (`.` and `..` resolved, repeated and trailing `/` dropped), so the tmpfs Granda mounts there
/// (see `worker::container`) covers exactly the place the engine would otherwise put an anonymous
/// volume on the host's disk (the engine matches mounts by the cleaned path: a tmpfs keyed by
/// `/q/../v` covers nothing). `Err` says why the path can't be a capped tmpfs.
pub(crate) fn volume_mount(volume: &str) -> Result<String, &'static str> {
    if !volume.starts_with('/') {
        return Err("not an absolute path");
    }
    if volume.contains(',') {
        return Err("it holds a ',', which would split the tmpfs mount's options");
    }
    let mut parts: Vec<&str> = Vec::new();
    for part in volume.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            part => parts.push(part),
        }
    }
    if parts.is_empty() {
        return Err("it is the container's root");
    }
    if matches!(parts[0], "proc" | "dev" | "sys") {
        return Err("it is (or is under) a kernel filesystem, /proc, /dev or /sys");
    }
    Ok(format!("/{}", parts.join("/")))
}

/// The mount points of an image's `VOLUME`s ([`volume_mount`]), each once; or the first that
/// can't be a capped tmpfs, with why. The engine would make such a path an uncapped volume on the
/// host's disk (or cover a kernel filesystem), so images declaring one are refused.
pub(crate) fn volume_mounts(volumes: &[String]) -> Result<Vec<String>, (&str, &'static str)> {
    let mut mounts = Vec::with_capacity(volumes.len());
    for volume in volumes {
        let mount = volume_mount(volume).map_err(|why| (volume.as_str(), why))?;
        if !mounts.contains(&mount) {
            mounts.push(mount);
        }
    }
    Ok(mounts)
}

/// Why an image declaring `volume` is refused (`why`: from [`volume_mount`]).
pub(crate) fn volume_refusal(image: &str, volume: &str, why: &str) -> String {
    format!(
        "image {image:?} declares VOLUME {volume:?}, which can't be mounted as a size-capped tmpfs \
         ({why}; a VOLUME must be an absolute path without ',', outside /proc, /dev and /sys); \
         Granda refuses it rather than let the engine put it on the host's disk"
    )
}

/// Refuses `image` (on the engine already) when one of its `VOLUME`s can't be a capped tmpfs
/// ([`volume_mounts`]): `Ok(Err)`
/// with the reason; `Err` when the engine did not answer.
pub(crate) async fn check_volumes(
    docker: &Docker,
    image: &str,
) -> Result<Result<(), String>, bollard::errors::Error> {
    let inspected = docker.inspect_image(image).await?;
    let volumes = inspected.config.and_then(|c| c.volumes).unwrap_or_default();
    Ok(match volume_mounts(&volumes) {
        Ok(_) => Ok(()),
        Err((volume, why)) => Err(volume_refusal(image, volume, why)),
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
    use super::{split_tag, volume_mount, volume_mounts};

    #[test]
    fn volumes_that_cant_be_a_capped_tmpfs_are_found() {
        let v = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            volume_mounts(&v(&["/data", "/var/lib/x/"])).unwrap(),
            ["/data", "/var/lib/x"]
        );
        assert!(volume_mounts(&v(&[])).unwrap().is_empty());
        for bad in [
            "/data,size=100g",
            "data",
            "/",
            "",
            "/a,b/",
            "./x",
            "/..",
            "/q/..",
            "/.",
        ] {
            assert_eq!(
                volume_mounts(&v(&["/ok", bad])).unwrap_err().0,
                bad,
                "{bad:?}"
            );
        }
    }

    /// Issue 26: the engine cleans a `VOLUME`'s path before it looks for a mount there, so a
    /// tmpfs keyed by the raw `/q/../v1` covered nothing and `/v1` became a volume on the disk.
    #[test]
    fn volumes_are_normalised_lexically() {
        for (raw, mount) in [
            ("/q/../v1", "/v1"),
            ("/q/../../../v2/", "/v2"),
            ("//a//./b/", "/a/b"),
            ("/a/b/../c/.", "/a/c"),
            ("/../../etc", "/etc"),
        ] {
            assert_eq!(volume_mount(raw).unwrap(), mount, "{raw:?}");
        }
        let v = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            volume_mounts(&v(&["/v/", "/q/../v", "/v"])).unwrap(),
            ["/v"]
        );
    }

    /// Issue 26: a `VOLUME` on a kernel filesystem is refused, however it is spelled.
    #[test]
    fn volumes_on_kernel_filesystems_are_refused() {
        for bad in [
            "/proc",
            "/dev",
            "/sys",
            "/dev/shm",
            "/sys/fs/cgroup/",
            "/x/../proc",
            "//proc/self",
        ] {
            let why = volume_mount(bad).unwrap_err();
            assert!(why.contains("kernel filesystem"), "{bad:?}: {why}");
        }
        for fine in ["/procs", "/devices", "/system", "/var/proc"] {
            assert!(volume_mount(fine).is_ok(), "{fine:?}");
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
