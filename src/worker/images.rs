//! The images a worker runs: present on its own engine, or pulled before the run.
//!
//! - `GRANDA_IMAGE_PULL=missing` (the default): an image the engine lacks is pulled;
//!   `always`: pulled again when this worker last pulled it over [`ALWAYS_EVERY`] ago;
//!   `never`: only images already on the engine run.
//! - One pull per image per worker at a time: callers wanting the same image wait for the pull
//!   under way (a per-image lock), then find the image present.
//! - Every pull is bounded by `GRANDA_IMAGE_PULL_TIMEOUT_MS`.
//! - An image seen present is trusted for [`PRESENT_FOR`] without asking the engine again, so a
//!   run pays no inspect; an image removed meanwhile fails its create, a platform failure that
//!   the retry policy handles.
//!
//! Pull time happens before the claim, so it is part of the invocation's `queue_ms`, and each
//! pull is observed in `granda_image_pull_seconds`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bollard::Docker;

use crate::config::ImagePull;
use crate::docker::{self, ImageError};
use crate::metrics::{Metrics, label};

/// How long an image seen on the engine is trusted to stay there.
const PRESENT_FOR: Duration = Duration::from_secs(30);

/// `GRANDA_IMAGE_PULL=always`: how old this worker's last pull of an image may be.
pub(crate) const ALWAYS_EVERY: Duration = Duration::from_secs(60);

/// A worker's images on its engine.
#[derive(Clone)]
pub(crate) struct Images {
    inner: Arc<Inner>,
}

struct Inner {
    docker: Docker,
    policy: ImagePull,
    timeout: Duration,
    /// Per image: when it was last seen on the engine, and when this worker last pulled it.
    seen: Mutex<HashMap<String, Seen>>,
    /// Per image: held while it is checked or pulled.
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    metrics: Mutex<Option<Arc<Metrics>>>,
}

#[derive(Clone, Copy, Default)]
struct Seen {
    present: Option<Instant>,
    pulled: Option<Instant>,
}

impl Images {
    pub(crate) fn new(docker: Docker, policy: ImagePull, timeout: Duration) -> Images {
        Images {
            inner: Arc::new(Inner {
                docker,
                policy,
                timeout,
                seen: Mutex::default(),
                locks: Mutex::default(),
                metrics: Mutex::default(),
            }),
        }
    }

    /// Observes pulls in `metrics` from now on.
    pub(crate) fn set_metrics(&self, metrics: Arc<Metrics>) {
        metrics.describe(
            "granda_image_pull_seconds",
            "Time a worker spent pulling an image its engine lacked (part of a cold start).",
        );
        *self.inner.metrics.lock().expect("lock") = Some(metrics);
    }

    fn fresh(&self, image: &str) -> bool {
        let seen = self
            .inner
            .seen
            .lock()
            .expect("lock")
            .get(image)
            .copied()
            .unwrap_or_default();
        let present = seen.present.is_some_and(|at| at.elapsed() < PRESENT_FOR);
        match self.inner.policy {
            ImagePull::Always => {
                present && seen.pulled.is_some_and(|at| at.elapsed() < ALWAYS_EVERY)
            }
            _ => present,
        }
    }

    /// Forgets that `image` was seen: the engine said it lacks it after all.
    pub(crate) fn forget(&self, image: &str) {
        self.inner.seen.lock().expect("lock").remove(image);
    }

    /// Makes sure the engine has `image`: present, or pulled (as the policy allows). Returns how
    /// long this call spent pulling, if it pulled.
    pub(crate) async fn ensure(&self, image: &str) -> Result<Option<Duration>, ImageError> {
        if self.fresh(image) {
            return Ok(None);
        }
        use tracing::Instrument as _;
        self.look_or_pull(image)
            .instrument(tracing::info_span!("image", image))
            .await
    }

    /// [`Images::ensure`] for an image not seen lately: asks the engine, pulls when missing.
    async fn look_or_pull(&self, image: &str) -> Result<Option<Duration>, ImageError> {
        let lock = self
            .inner
            .locks
            .lock()
            .expect("lock")
            .entry(image.to_string())
            .or_default()
            .clone();
        let _held = lock.lock().await;
        // Whoever held the lock before may have pulled it.
        if self.fresh(image) {
            return Ok(None);
        }
        let docker = &self.inner.docker;
        let present = docker::has_image(docker, image).await?;
        let pull = match self.inner.policy {
            ImagePull::Never if !present => {
                return Err(ImageError::Unavailable {
                    image: image.to_string(),
                    reason: "it is not on this worker's engine and GRANDA_IMAGE_PULL=never".into(),
                });
            }
            ImagePull::Never | ImagePull::Missing => !present,
            ImagePull::Always => true,
        };
        let mut pulled = None;
        if pull {
            let started = Instant::now();
            tracing::info!(image, "pulling an image this engine lacks");
            match tokio::time::timeout(self.inner.timeout, docker::pull(docker, image)).await {
                Ok(Ok(())) => {}
                // `always` with the image at hand: a registry that is away doesn't stop runs.
                Ok(Err(e)) if present => {
                    tracing::warn!(image, error = %e, "pull failed; running the image at hand");
                }
                Ok(Err(e)) => return Err(e),
                Err(_) if present => {}
                Err(_) => {
                    return Err(ImageError::Unavailable {
                        image: image.to_string(),
                        reason: format!(
                            "the pull took longer than {} ms (GRANDA_IMAGE_PULL_TIMEOUT_MS)",
                            self.inner.timeout.as_millis()
                        ),
                    });
                }
            }
            let took = started.elapsed();
            tracing::info!(image, ms = took.as_millis() as u64, "image pulled");
            if let Some(m) = self.inner.metrics.lock().expect("lock").as_ref() {
                m.observe(
                    "granda_image_pull_seconds",
                    format!("image=\"{}\"", label(image)),
                    took.as_secs_f64(),
                );
            }
            pulled = Some(took);
        }
        let now = Instant::now();
        let mut seen = self.inner.seen.lock().expect("lock");
        let entry = seen.entry(image.to_string()).or_default();
        entry.present = Some(now);
        if pull {
            entry.pulled = Some(now);
        }
        Ok(pulled)
    }
}
