//! Finds and removes containers that no run will remove any more: those a crashed earlier self
//! of this worker left, and any Granda container past its deadline.
//!
//! Every sweep of live containers is scoped to this worker's installation (`granda.installation`)
//! as well as its id: installations sharing one engine may use the same worker id (the same host
//! name), and must never remove each other's runs. The deadline sweep alone looks at every Granda
//! container: one a minute past its own deadline is no installation's run any more.

use std::collections::HashMap;
use std::time::Duration;

use bollard::Docker;
use bollard::query_parameters::ListContainersOptionsBuilder;

use super::container::remove;
use crate::docker::{
    LABEL_DEADLINE, LABEL_INSTALLATION, LABEL_INVOCATION, LABEL_POOL, LABEL_WORKER,
};
use crate::shutdown::Shutdown;

/// How far past its deadline a container may be before any worker removes it.
const DEADLINE_SLACK_MS: i64 = 60_000;

/// Every 30 s, [`reap_orphaned_pools`], until told to stop.
pub async fn reap_orphaned_pools_forever(
    docker: Docker,
    pool: sqlx::PgPool,
    installation: String,
    mut shutdown: Shutdown,
) {
    while !shutdown.stopped_during(Duration::from_secs(30)).await {
        reap_orphaned_pools(&docker, &pool, &installation).await;
    }
}

/// Removes the warm and hot pool containers of `installation` whose worker's lease ran out
/// (`GRANDA_WORKER_LEASE_MS` without a heartbeat): it crashed and came back under another id (or not at all), so no restarted self will
/// remove them. Returns how many it removed.
pub async fn reap_orphaned_pools(
    docker: &Docker,
    pool: &sqlx::PgPool,
    installation: &str,
) -> usize {
    let label = format!("{LABEL_INSTALLATION}={installation}");
    let kept: Vec<_> = list(docker, &[&label])
        .await
        .into_iter()
        .filter(|(_, labels)| labels.contains_key(LABEL_POOL))
        .collect();
    let workers: Vec<String> = kept
        .iter()
        .filter_map(|(_, labels)| labels.get(LABEL_WORKER).cloned())
        .collect();
    if workers.is_empty() {
        return 0;
    }
    let alive: Vec<(String,)> = match sqlx::query_as(
        "SELECT id FROM workers WHERE id = ANY($1)
           AND COALESCE(lease_until, heartbeat_at + interval '60 seconds') > now()",
    )
    .bind(&workers)
    .fetch_all(pool)
    .await
    {
        Ok(alive) => alive,
        Err(e) => {
            tracing::debug!(error = %e, "can't read heartbeats; orphans wait");
            return 0;
        }
    };
    let mut removed = 0;
    for (id, labels) in kept {
        let worker = labels.get(LABEL_WORKER).map(String::as_str).unwrap_or("");
        if !alive.iter().any(|(w,)| w == worker) {
            tracing::info!(container = %id, worker, "removing a pool container of a worker that is gone");
            remove(docker, &id).await;
            removed += 1;
        }
    }
    removed
}

/// Removes every container of this installation labelled with this worker's id: at start, none
/// of them is ours to keep.
pub(crate) async fn reap_own(docker: &Docker, worker_id: &str, installation: &str) {
    let worker = format!("{LABEL_WORKER}={worker_id}");
    let installation = format!("{LABEL_INSTALLATION}={installation}");
    for (id, _) in list(docker, &[&worker, &installation]).await {
        tracing::info!(container = %id, "removing a container left by an earlier run of this worker");
        remove(docker, &id).await;
    }
}

/// Every few seconds, removes this worker's invocation containers whose invocation does not run
/// here (`running(id)` says which do): such a container was being created by a crashed earlier
/// self when it died, and the engine finished creating it after the start-up sweep. Until told to
/// stop.
pub async fn reap_strays_forever(
    docker: Docker,
    worker_id: String,
    installation: String,
    running: impl Fn(&str) -> bool + Send + 'static,
    mut shutdown: Shutdown,
) {
    let worker = format!("{LABEL_WORKER}={worker_id}");
    let installation = format!("{LABEL_INSTALLATION}={installation}");
    while !shutdown.stopped_during(Duration::from_secs(5)).await {
        for (id, labels) in list(&docker, &[&worker, &installation]).await {
            let Some(invocation) = labels.get(LABEL_INVOCATION) else {
                continue; // a warm pool container: the pool owns it
            };
            if !running(invocation) {
                tracing::info!(container = %id, "removing a stray container of this worker");
                remove(&docker, &id).await;
            }
        }
    }
}

/// Every minute, removes Granda containers well past their deadline, whoever started them, until
/// told to stop.
pub async fn reap_expired_forever(docker: Docker, mut shutdown: Shutdown) {
    while !shutdown.stopped_during(Duration::from_secs(60)).await {
        let now = chrono::Utc::now().timestamp_millis();
        for (id, labels) in list(&docker, &[LABEL_DEADLINE]).await {
            let deadline = labels
                .get(LABEL_DEADLINE)
                .and_then(|d| d.parse::<i64>().ok())
                .unwrap_or(i64::MAX);
            if deadline + DEADLINE_SLACK_MS < now {
                tracing::warn!(container = %id, "removing a container past its deadline");
                remove(&docker, &id).await;
            }
        }
    }
}

/// Containers carrying every one of `labels` (`key` or `key=value`).
pub(super) async fn list(
    docker: &Docker,
    labels: &[&str],
) -> Vec<(String, HashMap<String, String>)> {
    let filters = HashMap::from([("label", labels.to_vec())]);
    let options = ListContainersOptionsBuilder::new()
        .all(true)
        .filters(&filters)
        .build();
    match docker.list_containers(Some(options)).await {
        Ok(list) => list
            .into_iter()
            .filter_map(|c| Some((c.id?, c.labels.unwrap_or_default())))
            .collect(),
        Err(e) => {
            tracing::warn!(error = %e, "can't list containers");
            Vec::new()
        }
    }
}

/// Removes (killing) the containers on `docker` that run invocation `invocation`; returns how many.
pub(crate) async fn remove_invocation(docker: &Docker, invocation: &str) -> usize {
    let label = format!("{LABEL_INVOCATION}={invocation}");
    let found = list(docker, &[label.as_str()]).await;
    for (id, _) in &found {
        remove(docker, id).await;
    }
    found.len()
}
