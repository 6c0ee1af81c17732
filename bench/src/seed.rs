//! Feeds set up as the fan-out leaves them: timeline rows, then their groups' marks, then trims.
//! A read serves stored groups, so rows written any other way would read as an empty aggregated
//! feed.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use feeds::aggregate;
use feeds::fanout::{Fanout, FanoutSettings};
use feeds::model::{Activity, ActivityId, FollowEdge};
use feeds::queue::embedded::EmbeddedQueue;
use feeds::queue::FanoutJob;
use feeds::service::Feeds;
use feeds::store::sqlite::SqliteDb;
use feeds::store::{Store, TimelineEntry};
use feeds::BoxError;
use futures::StreamExt;

use crate::cass::fanout_settings;
use crate::log;

/// Writes `activities` into `owner`'s timeline as the fan-out does without its trim: the rows,
/// then their groups' marks (a timeline no longer than the feed's bound needs no trim).
pub async fn write_timeline(
    store: &dyn Store,
    owner: &str,
    activities: &[Activity],
) -> Result<(), BoxError> {
    let entries: Vec<TimelineEntry> = activities
        .iter()
        .map(|a| TimelineEntry {
            owner: owner.to_owned(),
            activity: a.clone(),
        })
        .collect();
    aggregate::insert_rows(store, fanout_settings().grouping, &entries).await?;
    Ok(())
}

/// `n` activities by `actors` (in turn) with `verbs` (in turn), evenly spread over `[from, to)`,
/// oldest first.
pub fn activities(
    actors: &[String],
    verbs: &[String],
    n: usize,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    object: &str,
) -> Vec<Activity> {
    let span = (to - from).num_microseconds().unwrap_or(0).max(0);
    (0..n)
        .map(|k| {
            let offset = span * k as i64 / n.max(1) as i64;
            let time =
                feeds::model::truncate_to_micros(from + chrono::Duration::microseconds(offset));
            Activity {
                id: ActivityId::new(time).0,
                actor: actors[k % actors.len()].clone(),
                verb: verbs[k % verbs.len()].clone(),
                object: format!("{object}_{k}"),
                target: None,
                time,
                foreign_id: None,
                to: Vec::new(),
                extra: None,
            }
        })
        .collect()
}

/// The real delivery path on an in-process queue: each activity is stored, then its `Deliver` job
/// runs through `Fanout::run` (timeline rows, marks, trims at the bench's feed length); the jobs
/// those enqueue are worked off afterwards.
pub struct Deliverer {
    store: Arc<dyn Store>,
    queue: EmbeddedQueue,
    fanout: Fanout,
}

impl Deliverer {
    /// The queue is the embedded one in memory: the jobs stay in this process, apart from any
    /// server's queue.
    pub async fn new(store: Arc<dyn Store>) -> Result<Deliverer, BoxError> {
        let queue =
            EmbeddedQueue::new(SqliteDb::open(":memory:")?, Duration::from_secs(30), 5).await?;
        let fanout = Fanout::new(store.clone(), Arc::new(queue.clone()), fanout_settings());
        Ok(Deliverer {
            store,
            queue,
            fanout,
        })
    }

    pub fn store(&self) -> &dyn Store {
        self.store.as_ref()
    }

    /// `follower` follows each of `followees` (the edges only: no backfill job).
    pub async fn follow(&self, follower: &str, followees: &[String]) -> Result<(), BoxError> {
        for followee in followees {
            let edge = FollowEdge {
                follower: follower.to_owned(),
                following: followee.clone(),
                created_at: Utc::now(),
            };
            self.store.follow(&edge).await?;
        }
        Ok(())
    }

    /// Delivers `activities`, `concurrency` at a time; logs progress under `label` for long runs.
    /// Answers the seconds it took.
    pub async fn deliver(
        &self,
        activities: Vec<Activity>,
        concurrency: usize,
        label: &str,
    ) -> Result<f64, BoxError> {
        let total = activities.len();
        let step = if total >= 5_000 {
            total / 10
        } else {
            usize::MAX
        };
        let done = AtomicUsize::new(0);
        let t0 = Instant::now();
        let mut results = futures::stream::iter(activities)
            .map(|a| async move {
                self.store.put_activity(&a).await?;
                let job = FanoutJob::Deliver {
                    activity_id: a.id,
                    actor: a.actor,
                    after: None,
                };
                self.fanout.run(&job).await?;
                Ok::<(), BoxError>(())
            })
            .buffer_unordered(concurrency);
        while let Some(r) = results.next().await {
            r?;
            let n = done.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_multiple_of(step) {
                log(&format!(
                    "{label}: {n} of {total} delivered ({:.0} s)",
                    t0.elapsed().as_secs_f64()
                ));
            }
        }
        self.drain().await?;
        Ok(t0.elapsed().as_secs_f64())
    }

    /// The service over the same store and queue: what it enqueues, [`Deliverer::drain`] runs.
    pub fn service(&self, settings: &FanoutSettings) -> Feeds {
        Feeds::new(self.store.clone(), Arc::new(self.queue.clone()), settings)
    }

    /// Runs what the jobs enqueued (deliveries, next chunks, backfills, purges) until the queue
    /// is empty.
    pub async fn drain(&self) -> Result<(), BoxError> {
        loop {
            let messages = self.queue.receive(10).await?;
            if messages.is_empty() {
                return Ok(());
            }
            let failed = self.fanout.run_batch(&messages).await;
            if !failed.is_empty() {
                return Err(format!("{} fan-out jobs failed while seeding", failed.len()).into());
            }
            let ids: Vec<String> = messages.into_iter().map(|m| m.id).collect();
            self.queue.delete(&ids).await?;
        }
    }
}

/// Rows in `owner`'s timeline (up to `max`).
pub async fn timeline_len(store: &dyn Store, owner: &str, max: usize) -> Result<usize, BoxError> {
    Ok(store
        .timeline(owner, feeds::store::IdRange::default(), max)
        .await?
        .len())
}

/// Waits until every mark made so far is older than the clock-skew allowance. A read recomputes a
/// group as of its scan's start less that allowance, so within it a fresh mark still counts as
/// later and every read recomputes the day again; after it, one read leaves the groups clean.
pub async fn settle() {
    let skew = Duration::from_micros(aggregate::CLOCK_SKEW_US.unsigned_abs());
    tokio::time::sleep(skew + Duration::from_millis(100)).await;
}

/// A tag that keeps this run's users apart from earlier runs' in the same keyspace.
pub fn run_tag() -> String {
    format!("{:x}", Utc::now().timestamp_millis())
}
