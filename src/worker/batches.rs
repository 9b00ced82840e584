//! A batched writer: what many runs hand it is written by at most `writers` statements in
//! flight. While fewer are in flight, an item is written alone as soon as it arrives; items that
//! arrive while all writers are busy wait for the next free one and go together, in one
//! statement. Nothing waits to fill a batch, so a quiet worker pays no latency for it, and a busy
//! one pays a statement's fixed cost (a round trip, planning, opening the table's indexes and
//! checks) once per batch instead of once per run.
//!
//! A batch of several that fails is written again one item at a time, so an item that can't be
//! written (one row Postgres refuses) fails alone and never takes the others down with it; an
//! item that fails alone fails, and its run retries it.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::{Mutex, mpsc, oneshot};

/// One item to write, and where to say how it went.
struct Item<T, R> {
    item: T,
    answer: oneshot::Sender<Result<R, sqlx::Error>>,
}

/// The handle runs hand their items to ([`Batches::write`]).
pub(super) struct Batches<T, R> {
    items: mpsc::UnboundedSender<Item<T, R>>,
}

impl<T: Clone + Send + Sync + 'static, R: Send + 'static> Batches<T, R> {
    /// Starts `writers` writers, each taking up to `most` items at a time and writing them with
    /// `write`, which answers for each item in the order given. They end when the handle is
    /// dropped and what it was given is written.
    pub(super) fn start<W, Fut>(writers: usize, most: usize, write: W) -> Batches<T, R>
    where
        W: Fn(Arc<[T]>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<Vec<R>, sqlx::Error>> + Send + 'static,
    {
        let (items, waiting) = mpsc::unbounded_channel();
        let waiting = Arc::new(Mutex::new(waiting));
        for _ in 0..writers {
            tokio::spawn(write_batches(waiting.clone(), most, write.clone()));
        }
        Batches { items }
    }

    /// Writes `item` in the next batch, and returns what `write` answered for it.
    pub(super) async fn write(&self, item: T) -> Result<R, sqlx::Error> {
        let (answer, answered) = oneshot::channel();
        self.items
            .send(Item { item, answer })
            .map_err(|_| sqlx::Error::PoolClosed)?;
        answered.await.unwrap_or(Err(sqlx::Error::PoolClosed))
    }
}

/// One writer: takes the next batch (the first waiting item and those behind it) and writes it.
async fn write_batches<T, R, W, Fut>(
    waiting: Arc<Mutex<mpsc::UnboundedReceiver<Item<T, R>>>>,
    most: usize,
    write: W,
) where
    T: Clone,
    W: Fn(Arc<[T]>) -> Fut,
    Fut: Future<Output = Result<Vec<R>, sqlx::Error>>,
{
    loop {
        let mut batch = Vec::new();
        {
            let mut waiting = waiting.lock().await;
            if waiting.recv_many(&mut batch, most).await == 0 {
                return;
            }
        }
        let (items, answers): (Vec<T>, Vec<_>) =
            batch.into_iter().map(|i| (i.item, i.answer)).unzip();
        let items: Arc<[T]> = items.into();
        let n = items.len();
        let written = match write(items.clone()).await.and_then(|w| counted(n, w)) {
            Ok(written) => written.into_iter().map(Ok).collect(),
            Err(e) if n == 1 => vec![Err(e)],
            Err(e) => {
                tracing::warn!(error = %e, items = n, "a batch failed; writing its items one by one");
                let mut alone = Vec::with_capacity(n);
                for item in items.iter() {
                    let one = write(Arc::from([item.clone()])).await;
                    alone.push(one.and_then(|w| counted(1, w)).map(|mut w| w.remove(0)));
                }
                alone
            }
        };
        for (answer, r) in answers.into_iter().zip(written) {
            let _ = answer.send(r);
        }
    }
}

/// `written`, if it answers for each of the `n` items of its batch.
fn counted<R>(n: usize, written: Vec<R>) -> Result<Vec<R>, sqlx::Error> {
    if written.len() == n {
        return Ok(written);
    }
    Err(sqlx::Error::Protocol(format!(
        "a batch of {n} answered {} times",
        written.len()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex as StdMutex;
    use tokio::sync::Notify;

    type Answer = fn(&[u32]) -> Result<Vec<u32>, sqlx::Error>;

    /// With one writer of `most` items at a time answering with `answer`: writes 0, which holds
    /// the writer until `rest` wait behind it, then lets it go. Returns what 0 and each of `rest`
    /// got, and the batches `answer` was given, in order.
    async fn behind_a_held_batch(
        most: usize,
        rest: &[u32],
        answer: Answer,
    ) -> (Vec<Result<u32, String>>, Vec<Vec<u32>>) {
        let gate = Arc::new(Notify::new());
        let seen: Arc<StdMutex<Vec<Vec<u32>>>> = Arc::default();
        let batches = {
            let (gate, seen) = (gate.clone(), seen.clone());
            Arc::new(Batches::start(1, most, move |items: Arc<[u32]>| {
                let (gate, seen) = (gate.clone(), seen.clone());
                async move {
                    seen.lock().unwrap().push(items.to_vec());
                    if *items == [0] {
                        gate.notified().await;
                    }
                    answer(&items)
                }
            }))
        };
        let write = |i: u32| {
            let batches = batches.clone();
            tokio::spawn(async move { batches.write(i).await })
        };
        let first = write(0);
        // The first is alone in its batch, and holds the only writer until the gate opens.
        while seen.lock().unwrap().is_empty() {
            tokio::task::yield_now().await;
        }
        let rest: Vec<_> = rest.iter().map(|i| write(*i)).collect();
        tokio::task::yield_now().await;
        gate.notify_one();
        let answers = futures_util::future::join_all(std::iter::once(first).chain(rest)).await;
        let answers = answers
            .into_iter()
            .map(|a| a.unwrap().map_err(|e| e.to_string()))
            .collect();
        let seen = seen.lock().unwrap().clone();
        (answers, seen)
    }

    #[tokio::test]
    async fn what_comes_while_every_writer_is_busy_goes_together_in_the_next_batch() {
        let (answers, seen) = behind_a_held_batch(3, &[1, 2, 3, 4], |items| {
            Ok(items.iter().map(|i| i * 10).collect())
        })
        .await;
        assert_eq!(answers, [Ok(0), Ok(10), Ok(20), Ok(30), Ok(40)]);
        assert_eq!(seen[0], vec![0]);
        // At most three at a time, in the order they came.
        assert_eq!(seen[1..].concat(), vec![1, 2, 3, 4]);
        assert!(seen[1..].iter().all(|b| b.len() <= 3), "{seen:?}");
    }

    #[tokio::test]
    async fn a_failed_batch_is_written_again_one_by_one_and_only_the_bad_item_fails() {
        let (answers, seen) = behind_a_held_batch(8, &[1, 13, 2], |items| {
            // 13 can't be written: a statement holding it fails whole.
            if items.contains(&13) {
                return Err(sqlx::Error::PoolTimedOut);
            }
            Ok(items.to_vec())
        })
        .await;
        assert_eq!(answers[..2], [Ok(0), Ok(1)]);
        assert!(answers[2].as_ref().unwrap_err().contains("pool timed out"));
        assert_eq!(answers[3], Ok(2));
        // The batch of three, then each alone.
        assert_eq!(seen[1..], [vec![1, 13, 2], vec![1], vec![13], vec![2]]);
    }

    #[tokio::test]
    async fn a_short_answer_fails_every_item_of_the_batch() {
        let short = Batches::start(1, 8, |_: Arc<[u32]>| async { Ok(Vec::<u32>::new()) });
        let e = short.write(1).await.unwrap_err();
        assert!(e.to_string().contains("answered 0 times"), "{e}");
    }
}
