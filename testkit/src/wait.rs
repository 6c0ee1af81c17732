//! Waiting: bounded polling until a condition holds, and the deterministic wait until the fan-out
//! has nothing left to do (its queue stays empty), instead of fixed sleeps.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use feeds::fanout::Fanout;
use feeds::queue::embedded::EmbeddedQueue;
use feeds::queue::sqs::SqsQueue;
use feeds::store::sqlite::SqliteDb;

use crate::services::{self, Received};

/// Waits (at most `limit`) until `check` holds.
pub async fn eventually<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Where a server's fan-out jobs wait.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FanoutQueue {
    /// The embedded queue of this SQLite file.
    Embedded(PathBuf),
    /// This SQS queue, on `FEEDS_SQS_ENDPOINT`.
    Sqs(String),
}

/// A handle on a [`FanoutQueue`], opened on the caller's runtime.
enum Handle {
    Embedded(EmbeddedQueue),
    Sqs(SqsQueue),
}

impl Handle {
    async fn open(queue: &FanoutQueue) -> Handle {
        match queue {
            FanoutQueue::Embedded(path) => {
                let db = SqliteDb::open(path).expect("the server's SQLite file");
                // The settings only matter to receiving, which this handle never does.
                let queue = EmbeddedQueue::new(db, Duration::from_secs(30), 5)
                    .await
                    .expect("the embedded queue");
                Handle::Embedded(queue)
            }
            FanoutQueue::Sqs(url) => Handle::Sqs(SqsQueue::new(services::sqs_client().await, url)),
        }
    }

    /// Jobs waiting, in flight or delayed.
    async fn pending(&self) -> u64 {
        match self {
            Handle::Embedded(q) => q.depth().await.expect("embedded queue depth").0,
            Handle::Sqs(q) => {
                let (visible, in_flight, delayed) = services::depth(q).await;
                visible + in_flight + delayed
            }
        }
    }
}

/// Puts `jobs` on the server's queue, as a producer (or a redelivery) would.
pub async fn enqueue(queue: &FanoutQueue, jobs: &[feeds::queue::FanoutJob]) {
    use feeds::queue::Queue;
    let sent = match Handle::open(queue).await {
        Handle::Embedded(q) => q.send(jobs).await,
        Handle::Sqs(q) => q.send(jobs).await,
    };
    sent.expect("the jobs are enqueued");
}

/// Waits (at most `limit`) until `queue` is empty (nothing waiting, in flight or delayed) for
/// three polls in a row: every fan-out job queued before the call has then run to its end.
pub async fn until_drained(queue: &FanoutQueue, limit: Duration) {
    let handle = Handle::open(queue).await;
    let deadline = Instant::now() + limit;
    let mut empty = 0;
    while empty < 3 {
        let pending = handle.pending().await;
        assert!(
            Instant::now() < deadline,
            "{queue:?} did not drain: {pending} jobs pending"
        );
        empty = if pending == 0 { empty + 1 } else { 0 };
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Runs every queued job until the embedded queue is empty, as the server's in-process worker
/// does; every job must succeed.
pub async fn drain_embedded(queue: &EmbeddedQueue, fanout: &Fanout) {
    loop {
        let messages = queue.receive(10).await.unwrap();
        if messages.is_empty() {
            return;
        }
        let failed = fanout.run_batch(&messages).await;
        assert!(failed.is_empty(), "fan-out jobs failed: {failed:?}");
        let ids: Vec<String> = messages.into_iter().map(|m| m.id).collect();
        queue.delete(&ids).await.unwrap();
    }
}

/// Runs the fan-out function's handler on everything the SQS queue delivers until it stays empty,
/// as Lambda's event source does: deletes what succeeded and answers the ids reported failed.
pub async fn drain_sqs(queue: &SqsQueue, fanout: &Fanout) -> Vec<String> {
    let mut failed = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(240);
    let mut empty_polls = 0;
    while empty_polls < 2 {
        assert!(Instant::now() < deadline, "the queue did not drain");
        let messages = services::receive(queue, 1).await;
        if messages.is_empty() {
            empty_polls += 1;
            continue;
        }
        empty_polls = 0;
        let failures = services::handle(fanout, &messages).await;
        for Received { id, receipt, .. } in &messages {
            if !failures.contains(id) {
                queue.delete(receipt).await.unwrap();
            }
        }
        failed.extend(failures);
    }
    failed
}
