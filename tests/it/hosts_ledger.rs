//! The ledger check of the many-hosts suite ([`crate::hosts`]): what the callers were told, held
//! against what Postgres recorded and what each Docker engine saw run. Every 2xx answer has
//! exactly one final record and nothing else is recorded; every accepted invocation ran to its
//! end exactly once over all engines (any other container of it was stopped); no container of
//! the test's workers is left on any engine.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use uuid::Uuid;

use crate::support::{TestApp, eventually};

/// A container's `start` or `die` on an engine: the invocation it ran, its exit code (for `die`)
/// and when, in nanoseconds since the epoch.
#[derive(Clone, Debug)]
pub struct ContainerEvent {
    /// The engine's name in the test ("a", "b").
    pub engine: &'static str,
    pub action: String,
    pub invocation: String,
    pub exit_code: Option<String>,
    pub at_ns: i64,
}

/// The `start` and `die` events of every Granda run container on some engines, followed live
/// from a second before [`EventLog::watch`] (the engine's event buffer is shared with everything
/// else on it, so it is followed, not read afterwards).
pub struct EventLog {
    events: Arc<Mutex<Vec<ContainerEvent>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl EventLog {
    pub fn watch(engines: &[(&'static str, bollard::Docker)]) -> EventLog {
        let events: Arc<Mutex<Vec<ContainerEvent>>> = Arc::default();
        let since = chrono::Utc::now().timestamp() - 1;
        let tasks = engines
            .iter()
            .map(|(name, docker)| {
                let (name, docker, events) = (*name, docker.clone(), events.clone());
                tokio::spawn(async move {
                    let options = bollard::query_parameters::EventsOptions {
                        since: Some(since.to_string()),
                        until: None,
                        filters: Some(HashMap::from([
                            ("type".to_string(), vec!["container".to_string()]),
                            (
                                "event".to_string(),
                                vec!["start".to_string(), "die".to_string()],
                            ),
                            (
                                "label".to_string(),
                                vec![granda::docker::LABEL_INVOCATION.to_string()],
                            ),
                        ])),
                    };
                    let mut stream = docker.events(Some(options));
                    while let Some(event) = stream.next().await {
                        let event = event.unwrap_or_else(|e| panic!("engine {name}'s events: {e}"));
                        let Some(actor) = event.actor else { continue };
                        let attributes = actor.attributes.unwrap_or_default();
                        let (Some(action), Some(invocation), Some(at_ns)) = (
                            event.action,
                            attributes.get(granda::docker::LABEL_INVOCATION),
                            event.time_nano,
                        ) else {
                            continue;
                        };
                        events.lock().unwrap().push(ContainerEvent {
                            engine: name,
                            action,
                            invocation: invocation.clone(),
                            exit_code: attributes.get("exitCode").cloned(),
                            at_ns,
                        });
                    }
                })
            })
            .collect();
        EventLog { events, tasks }
    }

    /// The events so far of invocation `id`'s containers.
    pub fn of(&self, id: Uuid) -> Vec<ContainerEvent> {
        let id = id.to_string();
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e.invocation == id)
            .cloned()
            .collect()
    }
}

impl Drop for EventLog {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Containers on `docker` of workers whose id starts with `worker_prefix`.
pub async fn leftovers(docker: &bollard::Docker, worker_prefix: &str) -> Vec<String> {
    let options = bollard::query_parameters::ListContainersOptionsBuilder::new()
        .all(true)
        .filters(&HashMap::from([(
            "label",
            vec![granda::docker::LABEL_WORKER],
        )]))
        .build();
    docker
        .list_containers(Some(options))
        .await
        .unwrap()
        .into_iter()
        .filter(|c| {
            c.labels
                .as_ref()
                .and_then(|l| l.get(granda::docker::LABEL_WORKER))
                .is_some_and(|w| w.starts_with(worker_prefix))
        })
        .filter_map(|c| c.id)
        .collect()
}

/// The ledger of `app` (its own database; its workers' ids start with its worker id), where
/// `accepted` are the ids answered 2xx and `engines` every engine its workers used, watched by
/// `log` since before the first call.
pub async fn ledger(app: &TestApp, accepted: &[Uuid], engines: &[bollard::Docker], log: &EventLog) {
    let distinct: HashSet<Uuid> = accepted.iter().copied().collect();
    assert_eq!(distinct.len(), accepted.len(), "an id was answered twice");
    for id in accepted {
        let record = app.wait_final(*id, Duration::from_secs(60)).await;
        assert_eq!(record["status"], "succeeded", "{record}");
    }
    let recorded: Vec<(Uuid,)> = sqlx::query_as("SELECT id FROM invocations")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    let recorded: HashSet<Uuid> = recorded.into_iter().map(|(id,)| id).collect();
    assert_eq!(
        recorded, distinct,
        "exactly the accepted invocations are recorded"
    );
    let prefix = app.worker_id();
    for docker in engines {
        eventually(Duration::from_secs(20), "no containers left", || {
            let docker = docker.clone();
            let prefix = prefix.clone();
            async move { leftovers(&docker, &prefix).await.is_empty().then_some(()) }
        })
        .await;
    }
    // Every container of theirs is gone, so each start has its die by now (or very soon).
    eventually(
        Duration::from_secs(10),
        "each accepted invocation's containers started and died",
        || async {
            accepted
                .iter()
                .all(|id| {
                    let events = log.of(*id);
                    let starts = events.iter().filter(|e| e.action == "start").count();
                    let dies = events.iter().filter(|e| e.action == "die").count();
                    starts >= 1 && dies == starts
                })
                .then_some(())
        },
    )
    .await;
    for id in accepted {
        let events = log.of(*id);
        let completed = events
            .iter()
            .filter(|e| e.action == "die" && e.exit_code.as_deref() == Some("0"))
            .count();
        assert_eq!(completed, 1, "{id} ran to its end exactly once: {events:?}");
    }
}
