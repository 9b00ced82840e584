//! The check every fault test (and every cluster test) ends with: each invocation that got a 2xx
//! ends final, exactly one record per accepted invocation, nothing recorded that was refused, no
//! container left.

use std::time::{Duration, Instant};

use sqlx::PgPool;
use uuid::Uuid;

/// What a fault test's clients were told.
#[derive(Default, Debug)]
pub struct Ledger {
    /// Invocations answered 2xx (accepted).
    pub accepted: Vec<Uuid>,
    /// Answers that refused the event (503 and the like).
    pub refused: usize,
}

impl Ledger {
    /// Books one answer: a 2xx with the invocation it names, or a 503 (refused); any other
    /// answer panics. Returns its status.
    pub async fn note(&mut self, response: reqwest::Response) -> u16 {
        let status = response.status().as_u16();
        match status {
            200..=299 => self.accepted.push(crate::support::id_of(&response)),
            503 => self.refused += 1,
            other => panic!(
                "unexpected answer {other}: {}",
                response.text().await.unwrap_or_default()
            ),
        }
        status
    }

    /// Waits until every accepted invocation is final, then checks the books. Returns the
    /// final statuses by id.
    pub async fn settle(&self, pool: &PgPool, within: Duration) -> Vec<(Uuid, String, i32)> {
        let start = Instant::now();
        loop {
            let (pending,): (i64,) = sqlx::query_as(
                "SELECT count(*) FROM invocations WHERE id = ANY($1) AND status IN ('queued', 'running')",
            )
            .bind(&self.accepted)
            .fetch_one(pool)
            .await
            .unwrap();
            if pending == 0 {
                break;
            }
            if start.elapsed() >= within {
                // What the stuck ones are, for whoever reads the failure.
                let stuck: Vec<Stuck> = sqlx::query_as(
                    "SELECT id, status, attempt, worker, trigger FROM invocations
                     WHERE id = ANY($1) AND status IN ('queued', 'running')",
                )
                .bind(&self.accepted)
                .fetch_all(pool)
                .await
                .unwrap_or_default();
                panic!(
                    "{pending} of {} accepted invocations not final after {within:?}: {stuck:?}",
                    self.accepted.len()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let rows: Vec<(Uuid, String, i32)> =
            sqlx::query_as("SELECT id, status, attempt FROM invocations ORDER BY id")
                .fetch_all(pool)
                .await
                .unwrap();
        let mut accepted = self.accepted.clone();
        accepted.sort();
        accepted.dedup();
        assert_eq!(
            accepted.len(),
            self.accepted.len(),
            "an id was answered twice"
        );
        let recorded: Vec<Uuid> = rows.iter().map(|r| r.0).collect();
        assert_eq!(
            recorded, accepted,
            "exactly the accepted invocations are recorded"
        );
        rows
    }
}

/// Waits until no container carries `granda.worker=<worker>` on `docker`.
pub async fn assert_no_containers(docker: &bollard::Docker, worker: &str, within: Duration) {
    use std::collections::HashMap;
    let label = format!("granda.worker={worker}");
    let filters = HashMap::from([("label", vec![label.as_str()])]);
    let start = Instant::now();
    loop {
        let options = bollard::query_parameters::ListContainersOptionsBuilder::new()
            .all(true)
            .filters(&filters)
            .build();
        let left = docker.list_containers(Some(options)).await.unwrap();
        if left.is_empty() {
            return;
        }
        assert!(
            start.elapsed() < within,
            "containers of {worker} left: {:?}",
            left.iter().map(|c| c.id.clone()).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A record not final: id, status, attempt, worker, trigger.
type Stuck = (Uuid, String, i32, Option<String>, Option<String>);
