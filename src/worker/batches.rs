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
        let written = match write(items.clone()).await {
            Ok(written) if written.len() == n => written.into_iter().map(Ok).collect(),
            Ok(written) => {
                let answered = written.len();
                (0..n)
                    .map(|_| {
                        Err(sqlx::Error::Protocol(format!(
                            "a batch of {n} answered {answered} times"
                        )))
                    })
                    .collect()
            }
            Err(e) if n == 1 => vec![Err(e)],
            Err(e) => {
                tracing::warn!(error = %e, items = n, "a batch failed; writing its items one by one");
                let mut alone = Vec::with_capacity(n);
                for item in items.iter() {
                    alone.push(match write(Arc::from([item.clone()])).await {
                        Ok(mut r) if r.len() == 1 => Ok(r.remove(0)),
                        Ok(r) => Err(sqlx::Error::Protocol(format!(
                            "one item answered {} times",
                            r.len()
                        ))),
                        Err(e) => Err(e),
                    });
                }
                alone
            }
        };
        for (answer, r) in answers.into_iter().zip(written) {
            let _ = answer.send(r);
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
            Arc::new(Batches::start(1, 3, move |items: Arc<[u32]>| {
                let (gate, seen) = (gate.clone(), seen.clone());
                async move {
                    seen.lock().unwrap().push(items.to_vec());
                    if *items == [0] {
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
    async fn a_failed_batch_is_written_again_one_by_one_and_only_the_bad_item_fails() {
        let gate = Arc::new(Notify::new());
        let seen: Arc<StdMutex<Vec<Vec<u32>>>> = Arc::default();
        let batches = {
            let (gate, seen) = (gate.clone(), seen.clone());
            Arc::new(Batches::start(1, 8, move |items: Arc<[u32]>| {
                let (gate, seen) = (gate.clone(), seen.clone());
                async move {
                    seen.lock().unwrap().push(items.to_vec());
                    if *items == [0] {
                        gate.notified().await;
                    }
                    // 13 can't be written: a statement holding it fails whole.
                    if items.contains(&13) {
                        return Err(sqlx::Error::PoolTimedOut);
                    }
                    Ok(items.to_vec())
                }
            }))
        };
        let first = tokio::spawn({
            let batches = batches.clone();
            async move { batches.write(0).await }
        });
        while seen.lock().unwrap().is_empty() {
            tokio::task::yield_now().await;
        }
        let rest: Vec<_> = [1, 13, 2]
            .into_iter()
            .map(|i| {
                let batches = batches.clone();
                tokio::spawn(async move { batches.write(i).await })
            })
            .collect();
        tokio::task::yield_now().await;
        gate.notify_one();
        assert_eq!(first.await.unwrap().unwrap(), 0);
        let answers: Vec<_> = futures_util::future::join_all(rest).await;
        let answers: Vec<Result<u32, String>> = answers
            .into_iter()
            .map(|a| a.unwrap().map_err(|e| e.to_string()))
            .collect();
        assert_eq!(answers[0], Ok(1));
        assert!(answers[1].as_ref().unwrap_err().contains("pool timed out"));
        assert_eq!(answers[2], Ok(2));
        // The batch of three, then each alone.
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen[1..], [vec![1, 13, 2], vec![1], vec![13], vec![2]]);
    }

    #[tokio::test]
    async fn a_short_answer_fails_every_item_of_the_batch() {
        let short = Batches::start(1, 8, |_: Arc<[u32]>| async { Ok(Vec::<u32>::new()) });
        let e = short.write(1).await.unwrap_err();
        assert!(e.to_string().contains("answered 0 times"), "{e}");
    }
}
