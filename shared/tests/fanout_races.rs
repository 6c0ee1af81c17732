//! Fan-out jobs that overlap a change of the follow edge, in the worst order, made deterministic:
//! the store pauses one job just before its write while the edge changes and the opposite job runs
//! to the end. Once the queue is drained, the follower's timeline agrees with the final edge.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use feeds::fanout::{Fanout, FanoutSettings};
use feeds::model::{parse_time, Activity, ActivityId, FollowEdge, Relation};
use feeds::queue::embedded::EmbeddedQueue;
use feeds::queue::FanoutJob;
use feeds::store::sqlite::{SqliteDb, SqliteStore};
use feeds::store::{IdRange, Store, StoreError, TimelineEntry};
use feeds_testkit::wait::drain_embedded;
use tokio::sync::oneshot;

/// Holds the next call of one write until released.
struct Gate {
    op: &'static str,
    reached: oneshot::Sender<()>,
    release: oneshot::Receiver<()>,
}

/// The SQLite store, with a gate in front of its timeline writes.
struct GatedStore {
    inner: SqliteStore,
    gate: Mutex<Option<Gate>>,
}

impl GatedStore {
    /// Arms the gate on `op`: answers (reached, release).
    fn arm(&self, op: &'static str) -> (oneshot::Receiver<()>, oneshot::Sender<()>) {
        let (reached_tx, reached_rx) = oneshot::channel();
        let (release_tx, release_rx) = oneshot::channel();
        *self.gate.lock().unwrap() = Some(Gate {
            op,
            reached: reached_tx,
            release: release_rx,
        });
        (reached_rx, release_tx)
    }

    async fn pass(&self, op: &'static str) {
        let gate = {
            let mut gate = self.gate.lock().unwrap();
            match gate.as_ref() {
                Some(g) if g.op == op => gate.take(),
                _ => None,
            }
        };
        if let Some(gate) = gate {
            let _ = gate.reached.send(());
            let _ = gate.release.await;
        }
    }
}

#[async_trait]
impl Store for GatedStore {
    async fn health(&self) -> Result<(), StoreError> {
        self.inner.health().await
    }
    async fn follow(&self, edge: &FollowEdge) -> Result<(FollowEdge, bool), StoreError> {
        self.inner.follow(edge).await
    }
    async fn unfollow(&self, follower: &str, following: &str) -> Result<(), StoreError> {
        self.inner.unfollow(follower, following).await
    }
    async fn is_following(&self, follower: &str, following: &str) -> Result<bool, StoreError> {
        self.inner.is_following(follower, following).await
    }
    async fn followers(
        &self,
        user: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Relation>, StoreError> {
        self.inner.followers(user, after, limit).await
    }
    async fn following(
        &self,
        user: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Relation>, StoreError> {
        self.inner.following(user, after, limit).await
    }
    async fn put_activity(&self, activity: &Activity) -> Result<(Activity, bool), StoreError> {
        self.inner.put_activity(activity).await
    }
    async fn get_activity(&self, id: &str) -> Result<Option<Activity>, StoreError> {
        self.inner.get_activity(id).await
    }
    async fn delete_activity(&self, activity: &Activity) -> Result<(), StoreError> {
        self.inner.delete_activity(activity).await
    }
    async fn user_feed(
        &self,
        actor: &str,
        range: IdRange<'_>,
        limit: usize,
    ) -> Result<Vec<Activity>, StoreError> {
        self.inner.user_feed(actor, range, limit).await
    }
    async fn timeline(
        &self,
        owner: &str,
        range: IdRange<'_>,
        limit: usize,
    ) -> Result<Vec<Activity>, StoreError> {
        self.inner.timeline(owner, range, limit).await
    }
    async fn insert_timeline(&self, entries: &[TimelineEntry]) -> Result<(), StoreError> {
        self.pass("insert_timeline").await;
        self.inner.insert_timeline(entries).await
    }
    async fn delete_timeline(&self, rows: &[(String, String)]) -> Result<(), StoreError> {
        self.pass("delete_timeline").await;
        self.inner.delete_timeline(rows).await
    }
}

struct Setup {
    store: Arc<GatedStore>,
    queue: EmbeddedQueue,
    fanout: Fanout,
}

async fn setup() -> Setup {
    let db = SqliteDb::open(":memory:").unwrap();
    let store = Arc::new(GatedStore {
        inner: SqliteStore::new(db.clone()),
        gate: Mutex::new(None),
    });
    let queue = EmbeddedQueue::new(db, Duration::from_secs(30), 5)
        .await
        .unwrap();
    let fanout = Fanout::new(
        store.clone(),
        Arc::new(queue.clone()),
        FanoutSettings::default(),
    );
    Setup {
        store,
        queue,
        fanout,
    }
}

impl Setup {
    async fn follow(&self, follower: &str, following: &str) {
        let edge = FollowEdge {
            follower: follower.into(),
            following: following.into(),
            created_at: chrono::Utc::now(),
        };
        self.store.follow(&edge).await.unwrap();
    }

    async fn post(&self, actor: &str, second: u32) -> Activity {
        let time = parse_time(&format!("2026-11-29T10:00:{second:02}Z")).unwrap();
        let activity = Activity {
            id: ActivityId::new(time).0,
            actor: actor.into(),
            verb: "post".into(),
            object: format!("o{second}"),
            target: None,
            time,
            foreign_id: None,
            extra: None,
        };
        self.store.put_activity(&activity).await.unwrap();
        activity
    }

    /// Starts `job`, and answers once it waits at the armed gate.
    async fn start_paused(
        &self,
        op: &'static str,
        job: FanoutJob,
    ) -> (tokio::task::JoinHandle<()>, oneshot::Sender<()>) {
        let (reached, release) = self.store.arm(op);
        let fanout = self.fanout.clone();
        let task = tokio::spawn(async move { fanout.run(&job).await.unwrap() });
        reached.await.expect("the job reaches the gate");
        (task, release)
    }

    async fn timeline(&self, owner: &str) -> Vec<String> {
        self.store
            .timeline(owner, IdRange::default(), 100)
            .await
            .unwrap()
            .into_iter()
            .map(|a| a.id)
            .collect()
    }
}

#[tokio::test]
async fn backfill_that_saw_the_edge_before_an_unfollow_leaves_nothing_behind() {
    let s = setup().await;
    s.follow("fan", "star").await;
    let (a1, a2) = (s.post("star", 1).await, s.post("star", 2).await);
    let backfill = FanoutJob::Backfill {
        follower: "fan".into(),
        followee: "star".into(),
    };
    // The backfill has checked the edge and read the star's feed; it is about to write.
    let (task, release) = s.start_paused("insert_timeline", backfill).await;
    s.store.unfollow("fan", "star").await.unwrap();
    let purge = FanoutJob::Purge {
        follower: "fan".into(),
        followee: "star".into(),
        before: None,
    };
    s.fanout.run(&purge).await.unwrap();
    release.send(()).unwrap();
    task.await.unwrap();
    drain_embedded(&s.queue, &s.fanout).await;
    assert!(
        s.timeline("fan").await.is_empty(),
        "{} and {} stay in the feed of a user who no longer follows their actor",
        a1.id,
        a2.id
    );
}

#[tokio::test]
async fn purge_that_overlapped_a_follow_again_leaves_the_feed_whole() {
    let s = setup().await;
    s.follow("fan", "star").await;
    let (a1, a2) = (s.post("star", 1).await, s.post("star", 2).await);
    let backfill = FanoutJob::Backfill {
        follower: "fan".into(),
        followee: "star".into(),
    };
    s.fanout.run(&backfill).await.unwrap();
    assert_eq!(s.timeline("fan").await, [a2.id.clone(), a1.id.clone()]);

    s.store.unfollow("fan", "star").await.unwrap();
    let purge = FanoutJob::Purge {
        follower: "fan".into(),
        followee: "star".into(),
        before: None,
    };
    // The purge has checked the edge (gone) and read the timeline; it is about to delete.
    let (task, release) = s.start_paused("delete_timeline", purge).await;
    s.follow("fan", "star").await;
    s.fanout.run(&backfill).await.unwrap();
    release.send(()).unwrap();
    task.await.unwrap();
    drain_embedded(&s.queue, &s.fanout).await;
    assert_eq!(
        s.timeline("fan").await,
        [a2.id, a1.id],
        "the follower's feed lost the activities of a user it follows"
    );
}

#[tokio::test]
async fn delivery_that_read_the_followers_before_an_unfollow_leaves_nothing_behind() {
    let s = setup().await;
    s.follow("fan", "star").await;
    s.follow("friend", "star").await;
    let a = s.post("star", 1).await;
    let deliver = FanoutJob::Deliver {
        activity_id: a.id.clone(),
        actor: "star".into(),
        after: None,
    };
    // The delivery has read the followers (both); it is about to write.
    let (task, release) = s.start_paused("insert_timeline", deliver).await;
    s.store.unfollow("fan", "star").await.unwrap();
    let purge = FanoutJob::Purge {
        follower: "fan".into(),
        followee: "star".into(),
        before: None,
    };
    s.fanout.run(&purge).await.unwrap();
    release.send(()).unwrap();
    task.await.unwrap();
    drain_embedded(&s.queue, &s.fanout).await;
    assert!(
        s.timeline("fan").await.is_empty(),
        "{} reached a user who no longer follows its actor",
        a.id
    );
    assert_eq!(
        s.timeline("friend").await,
        [a.id],
        "and still reached the follower"
    );
}
