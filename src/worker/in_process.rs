//! This worker's engine as the ingress of the same process sees it (`granda up`): registration
//! checks and builds done here directly, exactly as they are for a remote ingress's requests
//! ([`super::control`], [`super::builds`]), with no trip through RabbitMQ.

use std::sync::Arc;

use futures_util::future::BoxFuture;
use tokio::sync::mpsc;

use super::Shared;
use super::builds::{Builder, Event};
use crate::engines::{
    BuildFailure, BuildRequest, Building, Built, Check, Engines, Refusal, answered,
};

pub(super) struct Local {
    pub(super) shared: Arc<Shared>,
    pub(super) builder: Builder,
}

impl Engines for Local {
    fn check<'a>(&'a self, _queue: &'a str, check: Check) -> BoxFuture<'a, Result<(), Refusal>> {
        Box::pin(async move { answered(self.shared.check(check).await) })
    }

    fn build<'a>(&'a self, request: BuildRequest<'a>) -> Building<'a> {
        Box::pin(async move {
            let (job, context, lines) = (request.job, request.context, request.lines);
            // The log goes to the caller as it comes, and is kept whole for the build's record.
            let (tx, mut rx) = mpsc::unbounded_channel::<String>();
            let built = self.builder.build(job, context, tx);
            let collect = async {
                let mut log = String::new();
                while let Some(line) = rx.recv().await {
                    if let Some(lines) = lines {
                        let _ = lines.send(line.clone());
                    }
                    log.push_str(&line);
                }
                log
            };
            let (event, log) = tokio::join!(built, collect);
            match event {
                Event::Built {
                    image,
                    worker,
                    pushed,
                } => Ok(Built {
                    image,
                    pushed,
                    worker,
                    log,
                }),
                Event::Failed { message } => Err(BuildFailure {
                    refusal: Refusal::Unprocessable(message),
                    log,
                }),
                Event::Unavailable { message } => Err(BuildFailure {
                    refusal: Refusal::Unavailable(message),
                    log,
                }),
                Event::Log { .. } | Event::Alive => Err(BuildFailure {
                    refusal: Refusal::Unavailable("the build ended without a verdict".into()),
                    log,
                }),
            }
        })
    }

    fn ready(&self) -> BoxFuture<'_, Option<bool>> {
        Box::pin(async move { Some(self.shared.runner.docker().ping().await.is_ok()) })
    }
}
