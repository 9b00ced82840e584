//! The two writes of a run around it, each through a batched writer ([`super::batches`]): its
//! claim ([`claim`]: a sync call's creates its record; [`CLAIMERS`] statements in flight, on the
//! lease pool, committed asynchronously) and its final record ([`record_final`]: [`WRITERS`] in
//! flight, each a durable commit). While fewer statements are in flight, a claim or a record is
//! written alone at once (Postgres flushes concurrent commits to disk together anyway); those
//! that come while all are busy go together in the next statement ([`store::claim_many`],
//! [`store::claim_or_create_many`], [`store::finish_many`]).
//!
//! Nothing waits to fill a batch. A single final-record writer (every record behind the one
//! committing) was measured worse: it serialized commits Postgres would have flushed together
//! (`docs/benchmarks.md`, "CPU per recorded call").
//!
//! Each run still waits for its own record to be durable before its reply and its ack, so what a
//! caller or the broker learns is never ahead of Postgres. A batch that fails is written again
//! one by one ([`super::batches`]); a claim or record that fails alone is retried by its run
//! ([`super::delivery::with_db_retries`]).

use std::collections::HashSet;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use super::Shared;
use super::batches::Batches;
use crate::invocation::store::NewClaim;
use crate::invocation::{self, Claim, Outcome, Trigger, store};
use crate::message::Work;

/// The most records in one statement.
const BATCH: usize = 128;

/// Final-record statements in flight at once.
const WRITERS: usize = 4;

/// Claim statements in flight at once.
const CLAIMERS: usize = 2;

/// A claimed row: its `(attempt, queued_at)`; `None` when the claim wrote nothing.
type Claimed = Option<(i32, DateTime<Utc>)>;

/// The handle runs use to write their claim ([`claim`]) and their final record
/// ([`Recorder::finish`]), each in a batch with those of the runs beside it.
pub(super) struct Recorder {
    /// Claims of invocations with a record (async triggers).
    claims: Batches<(Uuid, Option<String>), Claimed>,
    /// Claims of sync calls, which create their record.
    new_claims: Batches<NewClaim, Claimed>,
    finals: Batches<(Uuid, Arc<Outcome>), bool>,
}

impl Recorder {
    /// Starts the writers on `pool` (final records, durable) and `leases` (claims, committed
    /// asynchronously) for worker `worker`; they end when the recorder is dropped and what it
    /// was given is written.
    pub(super) fn start(pool: PgPool, leases: PgPool, worker: &str) -> Recorder {
        let worker: Arc<str> = worker.into();
        let claims = {
            let (leases, worker) = (leases.clone(), worker.clone());
            Batches::start(
                CLAIMERS,
                BATCH,
                move |ids: Arc<[(Uuid, Option<String>)]>| {
                    let (leases, worker) = (leases.clone(), worker.clone());
                    async move { write_claims(&leases, &ids, &worker).await }
                },
            )
        };
        let new_claims = Batches::start(CLAIMERS, BATCH, move |calls: Arc<[NewClaim]>| {
            let (leases, worker) = (leases.clone(), worker.clone());
            async move { write_new_claims(&leases, &calls, &worker).await }
        });
        let finals = Batches::start(WRITERS, BATCH, move |batch: Arc<[(Uuid, Arc<Outcome>)]>| {
            let pool = pool.clone();
            async move { write_finals(&pool, &batch).await }
        });
        Recorder {
            claims,
            new_claims,
            finals,
        }
    }

    /// Writes invocation `id`'s final record, as [`store::finish`] does (and returns what it
    /// returns), in a batch with the records of the runs ending at the same time.
    pub(super) async fn finish(
        &self,
        id: Uuid,
        outcome: Arc<Outcome>,
    ) -> Result<bool, sqlx::Error> {
        self.finals.write((id, outcome)).await
    }
}

/// Whether `ids` name some invocation twice (a redelivery beside its first delivery): such a
/// batch is written one by one, as one statement may not claim a row twice.
fn twice(ids: impl ExactSizeIterator<Item = Uuid>) -> bool {
    let n = ids.len();
    ids.collect::<HashSet<_>>().len() < n
}

/// Each claimed row of `rows`, in the order of `ids`.
fn in_order(
    ids: impl Iterator<Item = Uuid>,
    rows: Vec<(Uuid, i32, DateTime<Utc>)>,
) -> Vec<Claimed> {
    ids.map(|id| {
        rows.iter()
            .find(|(r, _, _)| *r == id)
            .map(|&(_, attempt, queued_at)| (attempt, queued_at))
    })
    .collect()
}

/// Claims `(id, dead)`: of invocation `id`, which may be a run of dead worker `dead`.
async fn write_claims(
    leases: &PgPool,
    claims: &[(Uuid, Option<String>)],
    worker: &str,
) -> Result<Vec<Claimed>, sqlx::Error> {
    // One claim alone: the plain statement (planned once, no arrays to build).
    if claims.len() == 1 || twice(claims.iter().map(|c| c.0)) {
        let mut claimed = Vec::with_capacity(claims.len());
        for (id, dead) in claims {
            claimed.push(store::claim_row(leases, *id, worker, dead.as_deref()).await?);
        }
        return Ok(claimed);
    }
    let rows = store::claim_many(leases, claims, worker).await?;
    Ok(in_order(claims.iter().map(|c| c.0), rows))
}

async fn write_new_claims(
    leases: &PgPool,
    calls: &[NewClaim],
    worker: &str,
) -> Result<Vec<Claimed>, sqlx::Error> {
    // A takeover goes alone: the batch statement can't name each row's dead worker.
    let alone = |c: &NewClaim| c.dead.is_some();
    if calls.len() == 1 || twice(calls.iter().map(|c| c.id)) || calls.iter().any(alone) {
        let mut claimed = Vec::with_capacity(calls.len());
        for call in calls {
            claimed.push(store::claim_or_create_row(leases, call, worker).await?);
        }
        return Ok(claimed);
    }
    let rows = store::claim_or_create_many(leases, calls, worker).await?;
    Ok(in_order(calls.iter().map(|c| c.id), rows))
}

async fn write_finals(
    pool: &PgPool,
    batch: &[(Uuid, Arc<Outcome>)],
) -> Result<Vec<bool>, sqlx::Error> {
    if let [(id, outcome)] = batch {
        return Ok(vec![store::finish(pool, *id, outcome).await?]);
    }
    let finals: Vec<(Uuid, &Outcome)> = batch.iter().map(|(id, o)| (*id, o.as_ref())).collect();
    let written = store::finish_many(pool, &finals).await?;
    Ok(batch.iter().map(|(id, _)| written.contains(id)).collect())
}

/// Marks the invocation `running` here, in a batch with the claims of the messages arriving
/// beside it. A sync call's record is written by this claim: the ingress published it without
/// writing one first (see [`crate::producer::enqueue`]). A run of another worker is taken over
/// only if that worker is `dead`, the one the caller found, and settled, before it claimed.
pub(super) async fn claim(
    shared: &Shared,
    work: &Work,
    input: &[u8],
    dead: Option<&str>,
) -> Result<Claim, sqlx::Error> {
    let dead = dead.map(str::to_string);
    let claimed = if work.trigger != Trigger::Sync {
        shared.recorder.claims.write((work.id, dead)).await?
    } else {
        // A lease like any claim (an asynchronous commit): if a Postgres crash loses it, the
        // final record is written whole by `record_final`, and a redelivery claims it again.
        let mut call = NewClaim::new(&sync_record(shared, work, input), work.queued_at_ms);
        call.dead = dead;
        shared.recorder.new_claims.write(call).await?
    };
    store::claim_found(&shared.pool, work.id, claimed).await
}

/// The record a sync call's claim creates, and its final write restores if that claim was lost.
pub(super) fn sync_record<'a>(
    shared: &Shared,
    work: &'a Work,
    input: &'a [u8],
) -> invocation::NewInvocation<'a> {
    invocation::NewInvocation {
        id: work.id,
        function: &work.function.name,
        trigger: work.trigger,
        input,
        stored_input_cap: shared.stored_input_cap,
        idempotency_key: None,
        key_id: work.key_id,
    }
}

/// Writes the final record (a durable commit, before the reply and the ack). A sync call's
/// record that is missing, its claim lost in a Postgres crash, is written whole.
pub(super) async fn record_final(
    shared: &Shared,
    work: &Work,
    attempt: i32,
    input: &[u8],
    outcome: &Arc<Outcome>,
) -> Result<(), sqlx::Error> {
    let finished = shared.recorder.finish(work.id, outcome.clone()).await?;
    if !finished && work.trigger == Trigger::Sync {
        let restored = invocation::store::restore_final(
            &shared.pool,
            &sync_record(shared, work, input),
            work.queued_at_ms,
            &shared.worker_id,
            attempt,
            outcome,
        )
        .await?;
        if restored {
            tracing::warn!("the claim's record was gone (a Postgres crash?); wrote it whole");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_are_put_back_in_the_order_asked_and_twice_is_seen() {
        let ids: Vec<Uuid> = (0..3).map(|_| Uuid::now_v7()).collect();
        let at = Utc::now();
        let rows = vec![(ids[2], 3, at), (ids[0], 1, at)];
        assert_eq!(
            in_order(ids.iter().copied(), rows),
            vec![Some((1, at)), None, Some((3, at))]
        );
        assert!(!twice(ids.iter().copied()));
        assert!(twice([ids[0], ids[1], ids[0]].into_iter()));
    }
}
