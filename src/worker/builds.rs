//! A worker's side of builds from source ([`crate::engines::builds`] has the protocol and the
//! ingress's side): taking a build of its queue, building on its engine, pushing, and telling.

use std::sync::Arc;

use bollard::Docker;
use lapin::Channel;
use tokio::sync::mpsc;

use super::control::ReplyTo;
use super::images::Images;
use crate::build::{self, BASE_IMAGE_HINT};
use crate::docker::ImageError;

pub(crate) use crate::engines::builds::{ALIVE_EVERY, Event, Job, queue_name};

/// A worker's means to build: its engine, its images and its own `GRANDA_REGISTRY`.
#[derive(Clone)]
pub(crate) struct Builder {
    pub(crate) docker: Docker,
    pub(crate) images: Images,
    pub(crate) registry: Option<String>,
    pub(crate) worker: String,
}

impl Builder {
    /// Builds `context` as `job` says, sending the log to `lines`; the last event.
    pub(crate) async fn build(
        &self,
        job: Job,
        context: Vec<u8>,
        lines: mpsc::UnboundedSender<String>,
    ) -> Event {
        let _ = lines.send(format!("Building on worker {}\n", self.worker));
        match self.images.ensure(&job.base_image).await {
            Ok(_) => {}
            Err(e @ ImageError::Unavailable { .. }) => {
                let message = format!("the runtime's base image: {e}. {BASE_IMAGE_HINT}");
                let _ = lines.send(format!("{message}\n"));
                return Event::Failed { message };
            }
            Err(e @ ImageError::Engine(_)) => {
                return Event::Unavailable {
                    message: e.to_string(),
                };
            }
        }
        let registry = job.registry.as_deref().or(self.registry.as_deref());
        let built =
            build::image::build_and_push(&self.docker, context, &job.tag, registry, Some(&lines))
                .await;
        match built {
            Ok((image, _)) => Event::Built {
                pushed: image != job.tag,
                image,
                worker: self.worker.clone(),
            },
            Err(failed) if failed.message.contains("(GRANDA_REGISTRY) failed") => {
                Event::Unavailable {
                    message: failed.message,
                }
            }
            Err(failed) => Event::Failed {
                message: failed.message,
            },
        }
    }
}

/// The worker's side: declares `queue`'s build queue on `channel` and builds what comes on it with
/// `builder`, until the channel goes.
pub(crate) async fn serve(
    channel: Channel,
    prefix: &str,
    queue: &str,
    builder: Builder,
) -> Result<(), lapin::Error> {
    let tag = format!("{}-builds", builder.worker);
    let builder = Arc::new(builder);
    let queue = queue_name(prefix, queue);
    super::control::serve_requests(channel, &queue, &tag, move |request, to| {
        let builder = builder.clone();
        async move {
            let headers = request.properties.headers().as_ref();
            if let Some(job) = headers.and_then(Job::from_headers) {
                build_for(&builder, job, request.data, to).await;
            }
        }
    })
    .await
}

/// Builds `job` from `source` and streams its log, a beat while it is quiet, and its end to `to`.
async fn build_for(builder: &Arc<Builder>, job: Job, source: Vec<u8>, to: ReplyTo) {
    tracing::info!(tag = job.tag, "building from source for an ingress");
    let (lines, mut rx) = mpsc::unbounded_channel();
    let building = tokio::spawn({
        let builder = builder.clone();
        async move { builder.build(job, source, lines).await }
    });
    let mut alive = tokio::time::interval(ALIVE_EVERY);
    loop {
        tokio::select! {
            biased;
            line = rx.recv() => match line {
                Some(text) => to.send(&Event::Log { text }).await,
                None => break,
            },
            _ = alive.tick() => to.send(&Event::Alive).await,
        }
    }
    let last = building.await.unwrap_or_else(|e| Event::Failed {
        message: format!("the build stopped: {e}"),
    });
    to.send(&last).await;
}
