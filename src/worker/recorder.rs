//! The final-record writer. [`WRITERS`] statements may be in flight at once: while fewer are, a
//! record is written alone as soon as its run ends (Postgres flushes concurrent commits to disk
//! together anyway); records that end while all writers are busy wait for the next free one and
//! go together, in one statement and one durable commit ([`store::finish_many`]).
//!
//! Nothing waits to fill a batch. A single writer (every record behind the one committing) was
//! measured worse: it serialized commits Postgres would have flushed together
//! (`docs/benchmarks.md`, "CPU per recorded call").
//!
//! Here too, the two writes of a run around it: its claim ([`claim`]: a sync call's creates its
//! record) and its final record ([`record_final`], through the writer).
//!
//! Each run still waits for its own record to be durable before its reply and its ack, so what a
//! caller or the broker learns is never ahead of Postgres. A batch that fails fails each of its
//! records, and each run retries its own ([`super::delivery::with_db_retries`]).

use std::sync::Arc;

use sqlx::PgPool;
use tokio::sync::{Mutex, mpsc, oneshot};
use uuid::Uuid;

use super::Shared;
use crate::invocation::{self, Claim, Outcome, Trigger, store};
use crate::message::Work;

/// The most records in one statement.
const BATCH: usize = 128;

/// Statements in flight at once.
const WRITERS: usize = 4;

/// One final record to write, and where to say whether it was written.
struct Final {
    id: Uuid,
    outcome: Arc<Outcome>,
    written: oneshot::Sender<Result<bool, Arc<sqlx::Error>>>,
}

/// The handle runs use to write their final record ([`Recorder::finish`]).
pub(super) struct Recorder {
    finals: mpsc::UnboundedSender<Final>,
}

impl Recorder {
    /// Starts the writers on `pool`; they end when the recorder is dropped and what it was
    /// given is written.
    pub(super) fn start(pool: PgPool) -> Recorder {
        let (finals, waiting) = mpsc::unbounded_channel();
        let waiting = Arc::new(Mutex::new(waiting));
        for _ in 0..WRITERS {
            tokio::spawn(write_batches(pool.clone(), waiting.clone()));
        }
        Recorder { finals }
    }

    /// Writes invocation `id`'s final record, as [`store::finish`] does (and returns what it
    /// returns), in a batch with the records of the runs ending at the same time.
    pub(super) async fn finish(
        &self,
        id: Uuid,
        outcome: Arc<Outcome>,
    ) -> Result<bool, sqlx::Error> {
        let (written, answer) = oneshot::channel();
        self.finals
            .send(Final {
                id,
                outcome,
                written,
            })
            .map_err(|_| sqlx::Error::PoolClosed)?;
        match answer.await {
            Ok(Ok(written)) => Ok(written),
            Ok(Err(e)) => Err(sqlx::Error::Protocol(format!(
                "writing a batch of final records: {e}"
            ))),
            Err(_) => Err(sqlx::Error::PoolClosed),
        }
    }
}

/// One writer: takes the next batch (the first waiting record and those behind it) and writes it.
async fn write_batches(pool: PgPool, waiting: Arc<Mutex<mpsc::UnboundedReceiver<Final>>>) {
    loop {
        let mut batch = Vec::new();
        {
            let mut waiting = waiting.lock().await;
            if waiting.recv_many(&mut batch, BATCH).await == 0 {
                return;
            }
        }
        let finals: Vec<(Uuid, &Outcome)> =
            batch.iter().map(|f| (f.id, f.outcome.as_ref())).collect();
        // One record alone: the plain statement (planned once, no arrays to build).
        let written = match finals.as_slice() {
            [(id, outcome)] => store::finish(&pool, *id, outcome)
                .await
                .map(|written| if written { vec![*id] } else { Vec::new() }),
            _ => store::finish_many(&pool, &finals).await,
        };
        match written {
            Ok(written) => {
                for f in batch {
                    let _ = f.written.send(Ok(written.contains(&f.id)));
                }
            }
            Err(e) => {
                let e = Arc::new(e);
                for f in batch {
                    let _ = f.written.send(Err(e.clone()));
                }
            }
        }
    }
}

/// Marks the invocation `running` here. A sync call's record is written by this claim: the
/// ingress published it without writing one first (see [`crate::producer::enqueue`]).
pub(super) async fn claim(
    shared: &Shared,
    work: &Work,
    input: &[u8],
) -> Result<Claim, sqlx::Error> {
    if work.trigger != Trigger::Sync {
        return invocation::store::claim(&shared.leases, work.id, &shared.worker_id).await;
    }
    // A lease like any claim (an asynchronous commit): if a Postgres crash loses it, the final
    // record is written whole by `record_final`, and a redelivery claims it again.
    invocation::store::claim_or_create(
        &shared.leases,
        &sync_record(shared, work, input),
        work.queued_at_ms,
        &shared.worker_id,
    )
    .await
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
