//! Stopping this worker's runs of cancelled invocations (`POST /v1/invocations/{id}/cancel`).
//!
//! The cancel itself is a conditional update of the record (`running` → `cancelled`) that also
//! announces the id on the Postgres channel `granda_cancel`
//! ([`crate::invocation::store::CANCEL_CHANNEL`]) in the same statement, so the notice goes out
//! only once the record says so. Every worker `LISTEN`s there on a connection of its own: the one
//! whose [`Cancels`] holds that id stops the run (its execute future is dropped, and with it the
//! guards that kill and remove a cold container or discard a warm/hot pool container). Postgres,
//! not the RabbitMQ control exchange: the record is the truth and the notice rides its commit (no
//! window where the worker hears of a cancel that did not happen, and no routing to the
//! record's worker: any ingress, any number of workers, only the runner acts). A notice can be
//! missed (the listening connection broke, or it came between the claim and the run's
//! registration), so while runs go on the worker also asks every [`POLL`] which of its runs are
//! cancelled: a run is stopped within a notice's round trip, and at worst within [`POLL`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::postgres::{PgListener, PgPoolOptions};
use tokio::sync::watch;
use uuid::Uuid;

use lapin::message::Delivery;

use super::{Channels, Shared, ack, reply, with_db_retries};
use crate::invocation::{Status, Trigger, store};
use crate::message::{Reply, Work};
use crate::shutdown::Shutdown;

/// How often a worker with runs in hand checks whether any was cancelled, beside the notices.
pub(super) const POLL: Duration = Duration::from_secs(1);

/// This worker's runs that a cancel can stop, by invocation id.
#[derive(Default)]
pub(super) struct Cancels {
    runs: Mutex<HashMap<Uuid, watch::Sender<bool>>>,
}

/// A run registered in [`Cancels`] until dropped; `cancelled` turns `true` when it is cancelled.
pub(super) struct Watch<'a> {
    cancels: &'a Cancels,
    id: Uuid,
    pub(super) cancelled: watch::Receiver<bool>,
}

impl Drop for Watch<'_> {
    fn drop(&mut self) {
        self.cancels.runs.lock().expect("lock").remove(&self.id);
    }
}

impl Cancels {
    /// Registers run `id` (at its claim, before anything is started for it).
    pub(super) fn watch(&self, id: Uuid) -> Watch<'_> {
        let (sender, cancelled) = watch::channel(false);
        self.runs.lock().expect("lock").insert(id, sender);
        Watch {
            cancels: self,
            id,
            cancelled,
        }
    }

    /// Tells run `id` to stop; `false` if it is not running here.
    fn fire(&self, id: Uuid) -> bool {
        match self.runs.lock().expect("lock").get(&id) {
            Some(sender) => {
                sender.send_replace(true);
                true
            }
            None => false,
        }
    }

    fn holds(&self, id: Uuid) -> bool {
        self.runs.lock().expect("lock").contains_key(&id)
    }

    fn ids(&self) -> Vec<Uuid> {
        self.runs.lock().expect("lock").keys().copied().collect()
    }
}

/// Settles the message of a run stopped by a cancel: the record is final already (the cancel
/// wrote it, and no retry follows); its callback goes out, a sync caller gets the cancelled
/// answer, and the message is acked.
pub(super) async fn settle(shared: &Shared, channels: &Channels, delivery: &Delivery, work: &Work) {
    tracing::info!("cancelled; its run was stopped");
    if work.trigger != Trigger::Sync {
        crate::callback::deliver_later(shared.pool.clone(), shared.callbacks.clone(), work.id);
    }
    let record = with_db_retries(|| store::get(&shared.pool, work.id)).await;
    let answer = match record {
        Some(record) => Reply::from_record(&record),
        None => Reply {
            status: Status::Cancelled,
            exit_code: None,
            duration_ms: None,
            output: Vec::new(),
            error: Some("cancelled".into()),
            http: None,
        },
    };
    tokio::join!(reply(channels, work, &answer), ack(delivery));
}

/// Stops those of `ids` that the records say are cancelled.
async fn stop_cancelled(shared: &Shared, ids: &[Uuid]) {
    if ids.is_empty() {
        return;
    }
    match store::cancelled_among(&shared.pool, ids).await {
        Ok(cancelled) => {
            for id in cancelled {
                if shared.cancels.fire(id) {
                    tracing::info!(%id, "cancelled: stopping its run");
                }
            }
        }
        Err(e) => tracing::warn!(error = %e, "could not check for cancelled runs"),
    }
}

/// Listens for cancels and checks this worker's runs every [`POLL`], until told to stop. The
/// listening is a task of its own (on a connection of its own, outside the worker's pool) that
/// passes on what it hears: a notice's id, or `None` when notices may have been missed. It stops
/// with this one.
pub(super) async fn listen_forever(shared: Arc<Shared>, mut shutdown: Shutdown) {
    let (heard, mut hearing) = tokio::sync::mpsc::unbounded_channel();
    let options = (*shared.pool.connect_options()).clone();
    tokio::spawn(listen(options, heard, shutdown.handle("cancel listener")));
    let mut every = tokio::time::interval(POLL);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.recv() => break,
            notice = hearing.recv() => match notice {
                Some(Some(id)) if shared.cancels.holds(id) => stop_cancelled(&shared, &[id]).await,
                Some(Some(_)) => {}
                Some(None) => stop_cancelled(&shared, &shared.cancels.ids()).await,
                None => break,
            },
            _ = every.tick() => stop_cancelled(&shared, &shared.cancels.ids()).await,
        }
    }
}

/// `LISTEN granda_cancel`, passing on each notice's id, and `None` after every (re)connection.
async fn listen(
    options: sqlx::postgres::PgConnectOptions,
    heard: tokio::sync::mpsc::UnboundedSender<Option<Uuid>>,
    mut shutdown: Shutdown,
) {
    let own = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(5))
        .connect_lazy_with(options);
    loop {
        let listening = async {
            let mut listener = PgListener::connect_with(&own).await?;
            listener.listen(store::CANCEL_CHANNEL).await?;
            loop {
                // Listening (again): what came meanwhile is found by a check of every run.
                if heard.send(None).is_err() {
                    return Ok(());
                }
                while let Some(notice) = listener.try_recv().await? {
                    if let Ok(id) = notice.payload().parse::<Uuid>()
                        && heard.send(Some(id)).is_err()
                    {
                        return Ok(());
                    }
                }
            }
        };
        let ended: Result<(), sqlx::Error> = tokio::select! {
            ended = listening => ended,
            _ = shutdown.recv() => return,
        };
        match ended {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(error = %e, "listening for cancels failed; checking by polling until it listens again")
            }
        }
        if shutdown.stopped_during(POLL).await {
            return;
        }
    }
}
