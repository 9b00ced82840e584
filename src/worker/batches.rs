//! A batched writer: what many runs hand it is written by at most `writers` statements in
//! flight. While fewer are in flight, an item is written alone as soon as it arrives; items that
//! arrive while all writers are busy wait for the next free one and go together, in one
//! statement. Nothing waits to fill a batch, so a quiet worker pays no latency for it, and a busy
//! one pays a statement's fixed cost (a round trip, planning, opening the table's indexes and
//! checks) once per batch instead of once per run.
//!
//! A batch that fails fails each of its items with the same error; each run retries its own.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::{Mutex, mpsc, oneshot};

/// One item to write, and where to say how it went.
struct Item<T, R> {
    item: T,
    answer: oneshot::Sender<Result<R, Arc<sqlx::Error>>>,
}

/// The handle runs hand their items to ([`Batches::write`]).
pub(super) struct Batches<T, R> {
    items: mpsc::UnboundedSender<Item<T, R>>,
}

impl<T: Send + 'static, R: Send + 'static> Batches<T, R> {
    /// Starts `writers` writers, each taking up to `most` items at a time and writing them with
    /// `write`, which answers for each item in the order given. They end when the handle is
    /// dropped and what it was given is written.
    pub(super) fn start<W, Fut>(writers: usize, most: usize, write: W) -> Batches<T, R>
    where
        W: Fn(Vec<T>) -> Fut + Clone + Send + Sync + 'static,
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
        match answered.await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => Err(sqlx::Error::Protocol(format!("writing a batch: {e}"))),
            Err(_) => Err(sqlx::Error::PoolClosed),
        }
    }
}

/// One writer: takes the next batch (the first waiting item and those behind it) and writes it.
async fn write_batches<T, R, W, Fut>(
    waiting: Arc<Mutex<mpsc::UnboundedReceiver<Item<T, R>>>>,
    most: usize,
    write: W,
) where
    W: Fn(Vec<T>) -> Fut,
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
        let n = items.len();
        match write(items).await {
            Ok(written) if written.len() == n => {
                for (answer, r) in answers.into_iter().zip(written) {
                    let _ = answer.send(Ok(r));
                }
            }
            Ok(written) => {
                let e = Arc::new(sqlx::Error::Protocol(format!(
                    "a batch of {n} answered {} times",
                    written.len()
                )));
                for answer in answers {
                    let _ = answer.send(Err(e.clone()));
                }
            }
            Err(e) => {
                let e = Arc::new(e);
                for answer in answers {
                    let _ = answer.send(Err(e.clone()));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex as StdMutex;
    use tokio::sync::Notify;

    #[tokio::test]
    async fn what_comes_while_every_writer_is_busy_goes_together_in_the_next_batch() {
        let gate = Arc::new(Notify::new());
        let seen: Arc<StdMutex<Vec<Vec<u32>>>> = Arc::default();
        let batches = {
            let (gate, seen) = (gate.clone(), seen.clone());
            Arc::new(Batches::start(1, 3, move |items: Vec<u32>| {
                let (gate, seen) = (gate.clone(), seen.clone());
                async move {
                    seen.lock().unwrap().push(items.clone());
                    if items == [0] {
                        gate.notified().await;
                    }
                    Ok(items.iter().map(|i| i * 10).collect())
                }
            }))
        };
        let first = tokio::spawn({
            let batches = batches.clone();
            async move { batches.write(0).await }
        });
        // The first is alone in its batch, and holds the only writer until the gate opens.
        while seen.lock().unwrap().is_empty() {
            tokio::task::yield_now().await;
        }
        let rest: Vec<_> = (1..=4)
            .map(|i| {
                let batches = batches.clone();
                tokio::spawn(async move { batches.write(i).await })
            })
            .collect();
        tokio::task::yield_now().await;
        gate.notify_one();
        assert_eq!(first.await.unwrap().unwrap(), 0);
        for (i, r) in (1..=4).zip(rest) {
            assert_eq!(r.await.unwrap().unwrap(), i * 10);
        }
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen[0], vec![0]);
        // At most three at a time, in the order they came.
        assert_eq!(seen[1..].concat(), vec![1, 2, 3, 4]);
        assert!(seen[1..].iter().all(|b| b.len() <= 3), "{seen:?}");
    }

    #[tokio::test]
    async fn a_failed_batch_fails_each_of_its_items_and_a_short_answer_fails_them_too() {
        let failing = Batches::start(1, 8, |_: Vec<u32>| async {
            Err::<Vec<u32>, _>(sqlx::Error::PoolTimedOut)
        });
        let e = failing.write(1).await.unwrap_err();
        assert!(e.to_string().contains("pool timed out"), "{e}");
        let short = Batches::start(1, 8, |_: Vec<u32>| async { Ok(Vec::<u32>::new()) });
        let e = short.write(1).await.unwrap_err();
        assert!(e.to_string().contains("answered 0 times"), "{e}");
    }
}
