//! Fan-out jobs that overlap a change of the follow edge, in the worst order, made deterministic:
//! the store pauses one job just before its write while the edge changes and the opposite job runs
//! to the end. Once the queue is drained, the follower's timeline agrees with the final edge.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use feeds::aggregate::{self, Grouping};
use feeds::fanout::{Fanout, FanoutSettings};
use feeds::model::{parse_time, Activity, ActivityId, FollowEdge, Relation};
use feeds::queue::embedded::EmbeddedQueue;
use feeds::queue::FanoutJob;
use feeds::store::sqlite::{SqliteDb, SqliteStore};
use feeds::store::{
    Census, Connection, Counted, DayRange, EdgeCheck, EdgeSide, GroupRef, GroupWrite, IdRange,
    NotificationMarks, PulledFollowee, ScanPage, Store, StoreError, StoredGroup, TimelineEntry,
    UserCounts,
};
use feeds_testkit::wait::drain_embedded;
use serde_json::Value;
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
    async fn get_versioned(&self, id: &str) -> Result<Option<(Activity, i64)>, StoreError> {
        self.inner.get_versioned(id).await
    }
    async fn update_activity(&self, activity: &Activity, version: i64) -> Result<bool, StoreError> {
        self.inner.update_activity(activity, version).await
    }
    async fn rewrite_own_copies(
        &self,
        activity: &Activity,
        pulled: bool,
    ) -> Result<(), StoreError> {
        self.inner.rewrite_own_copies(activity, pulled).await
    }
    async fn erase_notification_marks(&self, owner: &str, at_us: i64) -> Result<(), StoreError> {
        self.inner.erase_notification_marks(owner, at_us).await
    }
    async fn unmark_pulled_author(&self, actor: &str) -> Result<(), StoreError> {
        self.inner.unmark_pulled_author(actor).await
    }
    async fn remove_own_copies(&self, activity: &Activity) -> Result<(), StoreError> {
        self.inner.remove_own_copies(activity).await
    }
    async fn rewrite_timeline(&self, entries: &[TimelineEntry]) -> Result<(), StoreError> {
        self.pass("rewrite_timeline").await;
        self.inner.rewrite_timeline(entries).await
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
        let rows = self.inner.timeline(owner, range, limit).await;
        // After the read: a paused reader has seen the rows.
        self.pass("timeline").await;
        rows
    }
    async fn insert_timeline(&self, entries: &[TimelineEntry]) -> Result<(), StoreError> {
        self.pass("insert_timeline").await;
        self.inner.insert_timeline(entries).await
    }
    async fn delete_timeline(&self, rows: &[(String, String)]) -> Result<(), StoreError> {
        self.pass("delete_timeline").await;
        self.inner.delete_timeline(rows).await
    }
    async fn timeline_entries(
        &self,
        rows: &[(String, String)],
    ) -> Result<Vec<TimelineEntry>, StoreError> {
        self.inner.timeline_entries(rows).await
    }
    async fn timeline_id_at(
        &self,
        owner: &str,
        position: usize,
    ) -> Result<Option<String>, StoreError> {
        self.inner.timeline_id_at(owner, position).await
    }
    async fn trim_timeline(&self, owner: &str, through: &str) -> Result<(), StoreError> {
        self.pass("trim_timeline").await;
        self.inner.trim_timeline(owner, through).await
    }
    async fn mark_groups(&self, groups: &[GroupRef], at_us: i64) -> Result<(), StoreError> {
        self.pass("mark_groups").await;
        self.inner.mark_groups(groups, at_us).await
    }
    async fn groups(
        &self,
        owner: &str,
        feed: &str,
        days: DayRange,
        limit: usize,
    ) -> Result<Vec<StoredGroup>, StoreError> {
        self.inner.groups(owner, feed, days, limit).await
    }
    async fn drop_groups(
        &self,
        owner: &str,
        feed: &str,
        day: i32,
        at_us: i64,
    ) -> Result<(), StoreError> {
        self.inner.drop_groups(owner, feed, day, at_us).await
    }
    async fn put_groups(
        &self,
        owner: &str,
        feed: &str,
        day: i32,
        writes: &[GroupWrite],
        as_of_us: i64,
    ) -> Result<(), StoreError> {
        self.pass("put_groups").await;
        self.inner
            .put_groups(owner, feed, day, writes, as_of_us)
            .await
    }
    async fn is_pulled_author(&self, actor: &str) -> Result<bool, StoreError> {
        self.inner.is_pulled_author(actor).await
    }
    async fn mark_pulled_author(&self, actor: &str) -> Result<(), StoreError> {
        self.inner.mark_pulled_author(actor).await
    }
    async fn put_pulled(&self, activity: &Activity) -> Result<(), StoreError> {
        self.inner.put_pulled(activity).await
    }
    async fn get_pulled(&self, actor: &str, id: &str) -> Result<Option<Activity>, StoreError> {
        self.inner.get_pulled(actor, id).await
    }
    async fn delete_pulled(&self, actor: &str, id: &str) -> Result<(), StoreError> {
        self.inner.delete_pulled(actor, id).await
    }
    async fn pulled(
        &self,
        actor: &str,
        range: IdRange<'_>,
        limit: usize,
    ) -> Result<Vec<Activity>, StoreError> {
        self.inner.pulled(actor, range, limit).await
    }
    async fn put_pulled_followee(
        &self,
        user: &str,
        followee: &str,
        floor: Option<&str>,
    ) -> Result<(), StoreError> {
        self.pass("put_pulled_followee").await;
        self.inner.put_pulled_followee(user, followee, floor).await
    }
    async fn delete_pulled_followee(&self, user: &str, followee: &str) -> Result<(), StoreError> {
        self.pass("delete_pulled_followee").await;
        self.inner.delete_pulled_followee(user, followee).await
    }
    async fn pulled_followees(&self, user: &str) -> Result<Vec<PulledFollowee>, StoreError> {
        self.inner.pulled_followees(user).await
    }
    async fn user_counts(&self, user: &str) -> Result<UserCounts, StoreError> {
        self.inner.user_counts(user).await
    }
    async fn recount(&self, user: &str, what: Counted, asked_us: i64) -> Result<(), StoreError> {
        self.inner.recount(user, what, asked_us).await
    }
    async fn take_allowance(
        &self,
        principal: &str,
        class: &str,
        minute: i64,
        want: u64,
        limit: u64,
    ) -> Result<u64, StoreError> {
        self.inner
            .take_allowance(principal, class, minute, want, limit)
            .await
    }
    async fn notification_marks(&self, owner: &str) -> Result<NotificationMarks, StoreError> {
        self.inner.notification_marks(owner).await
    }
    async fn add_notification_marks(
        &self,
        owner: &str,
        keys: &[String],
        at_us: i64,
    ) -> Result<(), StoreError> {
        self.inner.add_notification_marks(owner, keys, at_us).await
    }
    async fn remove_notification_marks(
        &self,
        owner: &str,
        keys: Option<&[String]>,
        read: bool,
        at_us: i64,
    ) -> Result<(), StoreError> {
        self.inner
            .remove_notification_marks(owner, keys, read, at_us)
            .await
    }
    async fn scan_edges(
        &self,
        side: EdgeSide,
        from: Option<&str>,
        page: usize,
    ) -> Result<ScanPage<(String, String)>, StoreError> {
        self.inner.scan_edges(side, from, page).await
    }
    async fn check_edge(
        &self,
        follower: &str,
        followee: &str,
        repair: bool,
    ) -> Result<EdgeCheck, StoreError> {
        self.inner.check_edge(follower, followee, repair).await
    }
    async fn scan_activities(
        &self,
        from: Option<&str>,
        page: usize,
    ) -> Result<ScanPage<Activity>, StoreError> {
        self.inner.scan_activities(from, page).await
    }
    async fn census(
        &self,
        what: Census,
        from: Option<&str>,
        page: usize,
    ) -> Result<(u64, Option<String>), StoreError> {
        self.inner.census(what, from, page).await
    }

    async fn put_connection(&self, connection: &Connection) -> Result<(), StoreError> {
        self.inner.put_connection(connection).await
    }
    async fn delete_connection(&self, connection: &Connection) -> Result<(), StoreError> {
        self.inner.delete_connection(connection).await
    }
    async fn connection_user(&self, id: &str) -> Result<Option<String>, StoreError> {
        self.inner.connection_user(id).await
    }
    async fn connections(&self, users: &[String]) -> Result<Vec<Connection>, StoreError> {
        self.inner.connections(users).await
    }
    async fn put_pulled_connections(
        &self,
        author: &str,
        connections: &[Connection],
    ) -> Result<(), StoreError> {
        self.inner.put_pulled_connections(author, connections).await
    }
    async fn delete_pulled_connections(
        &self,
        author: &str,
        connections: &[Connection],
    ) -> Result<(), StoreError> {
        self.inner
            .delete_pulled_connections(author, connections)
            .await
    }
    async fn pulled_connections(&self, author: &str) -> Result<Vec<Connection>, StoreError> {
        self.inner.pulled_connections(author).await
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
            to: Vec::new(),
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
        let task = tokio::spawn(async move {
            fanout.run(&job).await.unwrap();
        });
        reached.await.expect("the job reaches the gate");
        (task, release)
    }

    /// Starts a read of `owner`'s aggregated feed, and answers once it waits at the armed gate.
    async fn read_paused(
        &self,
        op: &'static str,
        owner: &str,
    ) -> (tokio::task::JoinHandle<Vec<Value>>, oneshot::Sender<()>) {
        let (reached, release) = self.store.arm(op);
        let (store, owner) = (self.store.clone(), owner.to_owned());
        let task = tokio::spawn(async move { read(&store, &owner).await });
        reached.await.expect("the read reaches the gate");
        (task, release)
    }

    /// `owner`'s aggregated feed, all of it.
    async fn aggregated(&self, owner: &str) -> Vec<Value> {
        read(&self.store, owner).await
    }

    /// The aggregated feed agrees with the timeline: one group per verb and day, holding the
    /// timeline's activities (tests here hold fewer than a group lists).
    async fn assert_groups_agree(&self, owner: &str) {
        let timeline = self.timeline(owner).await;
        let groups = self.aggregated(owner).await;
        let listed: Vec<String> = groups
            .iter()
            .flat_map(|g| g["activities"].as_array().unwrap().clone())
            .map(|a| a["id"].as_str().unwrap().to_owned())
            .collect();
        let counted: u64 = groups
            .iter()
            .map(|g| g["activity_count"].as_u64().unwrap())
            .sum();
        assert_eq!(listed, timeline, "the groups list what the timeline holds");
        assert_eq!(counted as usize, timeline.len(), "and count it");
    }

    async fn run(&self, job: FanoutJob) {
        self.fanout.run(&job).await.unwrap();
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

/// Reads with no clock-skew allowance (one clock here), so that a scan is stored as of exactly
/// when it began: an ordering mistake then shows, instead of hiding inside the allowance.
async fn read(store: &GatedStore, owner: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut from = None;
    loop {
        let (groups, next) = aggregate::page(
            store,
            owner,
            Grouping::VerbDay,
            from.as_ref(),
            10,
            usize::MAX,
            aggregate::now_us,
        )
        .await
        .unwrap();
        out.extend(
            groups
                .iter()
                .map(|g| serde_json::from_str::<Value>(g.get()).unwrap()),
        );
        match next {
            Some(p) => from = Some(p),
            None => return out,
        }
    }
}

fn deliver(a: &Activity) -> FanoutJob {
    FanoutJob::Deliver {
        activity_id: a.id.clone(),
        actor: a.actor.clone(),
        after: None,
    }
}

fn count(groups: &[Value]) -> Vec<u64> {
    groups
        .iter()
        .map(|g| g["activity_count"].as_u64().unwrap())
        .collect()
}

#[tokio::test]
async fn a_read_that_recomputed_while_a_delivery_ran_leaves_its_group_stale() {
    let s = setup().await;
    s.follow("fan", "star").await;
    let a1 = s.post("star", 1).await;
    s.run(deliver(&a1)).await;
    // The read has scanned the day (a1 only) and not yet stored the group.
    let (task, release) = s.read_paused("timeline", "fan").await;
    let a2 = s.post("star", 2).await;
    s.run(deliver(&a2)).await;
    release.send(()).unwrap();
    assert_eq!(
        count(&task.await.unwrap()),
        [1],
        "that read answers what it scanned"
    );
    assert_eq!(
        count(&s.aggregated("fan").await),
        [2],
        "the next read lost a2"
    );
    s.assert_groups_agree("fan").await;
}

#[tokio::test]
async fn a_read_that_recomputed_while_a_delete_ran_leaves_its_group_stale() {
    let s = setup().await;
    s.follow("fan", "star").await;
    let (a1, a2) = (s.post("star", 1).await, s.post("star", 2).await);
    s.run(deliver(&a1)).await;
    s.run(deliver(&a2)).await;
    let (task, release) = s.read_paused("timeline", "fan").await;
    s.store.delete_activity(&a2).await.unwrap();
    s.run(FanoutJob::Retract {
        activity_id: a2.id.clone(),
        actor: "star".into(),
        after: None,
    })
    .await;
    release.send(()).unwrap();
    assert_eq!(count(&task.await.unwrap()), [2]);
    assert_eq!(
        count(&s.aggregated("fan").await),
        [1],
        "the next read still lists a2"
    );
    s.assert_groups_agree("fan").await;
}

#[tokio::test]
async fn a_read_that_recomputed_while_a_purge_ran_drops_the_group() {
    let s = setup().await;
    s.follow("fan", "star").await;
    let a1 = s.post("star", 1).await;
    s.run(deliver(&a1)).await;
    let (task, release) = s.read_paused("put_groups", "fan").await;
    s.store.unfollow("fan", "star").await.unwrap();
    s.run(FanoutJob::Purge {
        follower: "fan".into(),
        followee: "star".into(),
        before: None,
    })
    .await;
    release.send(()).unwrap();
    assert_eq!(count(&task.await.unwrap()), [1]);
    assert!(
        s.aggregated("fan").await.is_empty(),
        "the purged group came back"
    );
}

#[tokio::test]
async fn a_delivery_read_between_its_rows_and_its_mark_shows_on_the_next_read() {
    let s = setup().await;
    s.follow("fan", "star").await;
    let (a1, a2) = (s.post("star", 1).await, s.post("star", 2).await);
    s.run(deliver(&a1)).await;
    assert_eq!(count(&s.aggregated("fan").await), [1]);
    // Paused before its rows: had it marked the group first, the read below would recompute,
    // miss the rows and store the group as current.
    let (task, release) = s.start_paused("insert_timeline", deliver(&a2)).await;
    assert_eq!(count(&s.aggregated("fan").await), [1]);
    release.send(()).unwrap();
    task.await.unwrap();
    assert_eq!(count(&s.aggregated("fan").await), [2]);
    // Paused between its rows and its mark: the read serves the stored group, the mark follows.
    let a3 = s.post("star", 3).await;
    let (task, release) = s.start_paused("mark_groups", deliver(&a3)).await;
    assert_eq!(count(&s.aggregated("fan").await), [2]);
    release.send(()).unwrap();
    task.await.unwrap();
    assert_eq!(count(&s.aggregated("fan").await), [3]);
    s.assert_groups_agree("fan").await;
}

#[tokio::test]
async fn two_authors_delivering_into_one_group_at_once_and_a_redelivery_lose_nothing() {
    let s = setup().await;
    s.follow("fan", "star").await;
    s.follow("fan", "other").await;
    let a1 = s.post("star", 1).await;
    let b1 = s.post("other", 2).await;
    s.run(deliver(&a1)).await;
    s.aggregated("fan").await;
    // One delivery has written its row and not yet marked; the other runs whole, and a read
    // recomputes the group in between.
    let (task, release) = s.start_paused("mark_groups", deliver(&b1)).await;
    let a2 = s.post("star", 3).await;
    s.run(deliver(&a2)).await;
    s.aggregated("fan").await;
    release.send(()).unwrap();
    task.await.unwrap();
    s.run(deliver(&a2)).await;
    let groups = s.aggregated("fan").await;
    assert_eq!(count(&groups), [3]);
    assert_eq!(groups[0]["actors"], serde_json::json!(["star", "other"]));
    s.assert_groups_agree("fan").await;
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
    s.assert_groups_agree("fan").await;
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
    s.assert_groups_agree("fan").await;
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
    s.assert_groups_agree("fan").await;
    s.assert_groups_agree("friend").await;
}

/// The star as a pulled author with one pulled activity.
async fn pulled_star(s: &Setup) -> Activity {
    s.store.mark_pulled_author("star").await.unwrap();
    let a = s.post("star", 5).await;
    s.store.put_pulled(&a).await.unwrap();
    a
}

impl Setup {
    /// `owner`'s flat feed as the service reads it: the timeline with pulled authors merged in.
    async fn flat(&self, owner: &str) -> Vec<String> {
        let feeds = feeds::service::Feeds::new(
            self.store.clone(),
            Arc::new(self.queue.clone()),
            &FanoutSettings::default(),
        );
        feeds
            .flat(owner, None, 100)
            .await
            .unwrap()
            .into_iter()
            .map(|a| a.id)
            .collect()
    }
}

#[tokio::test]
async fn adopt_that_read_the_followers_before_an_unfollow_leaves_nothing_behind() {
    let s = setup().await;
    s.follow("fan", "star").await;
    s.follow("friend", "star").await;
    let a = pulled_star(&s).await;
    let adopt = FanoutJob::Adopt {
        author: "star".into(),
        after: None,
    };
    // The adoption has read the followers (both); it is about to record them.
    let (task, release) = s.start_paused("put_pulled_followee", adopt).await;
    s.store.unfollow("fan", "star").await.unwrap();
    s.run(FanoutJob::Purge {
        follower: "fan".into(),
        followee: "star".into(),
        before: None,
    })
    .await;
    release.send(()).unwrap();
    task.await.unwrap();
    drain_embedded(&s.queue, &s.fanout).await;
    assert!(
        s.flat("fan").await.is_empty(),
        "{} reached an ex-follower",
        a.id
    );
    assert_eq!(s.flat("friend").await, [a.id]);
}

#[tokio::test]
async fn backfill_of_a_pulled_author_that_saw_the_edge_before_an_unfollow_leaves_nothing_behind() {
    let s = setup().await;
    s.follow("fan", "star").await;
    let a = pulled_star(&s).await;
    let backfill = FanoutJob::Backfill {
        follower: "fan".into(),
        followee: "star".into(),
    };
    let (task, release) = s.start_paused("put_pulled_followee", backfill).await;
    s.store.unfollow("fan", "star").await.unwrap();
    s.run(FanoutJob::Purge {
        follower: "fan".into(),
        followee: "star".into(),
        before: None,
    })
    .await;
    release.send(()).unwrap();
    task.await.unwrap();
    drain_embedded(&s.queue, &s.fanout).await;
    assert!(
        s.flat("fan").await.is_empty(),
        "{} stays for an ex-follower",
        a.id
    );
}

#[tokio::test]
async fn purge_that_overlapped_a_follow_again_of_a_pulled_author_leaves_the_feed_whole() {
    let s = setup().await;
    s.follow("fan", "star").await;
    let a = pulled_star(&s).await;
    let backfill = FanoutJob::Backfill {
        follower: "fan".into(),
        followee: "star".into(),
    };
    s.run(backfill.clone()).await;
    assert_eq!(s.flat("fan").await, std::slice::from_ref(&a.id));
    s.store.unfollow("fan", "star").await.unwrap();
    let purge = FanoutJob::Purge {
        follower: "fan".into(),
        followee: "star".into(),
        before: None,
    };
    // The purge has checked the edge (gone); it is about to forget the pulled author.
    let (task, release) = s.start_paused("delete_pulled_followee", purge).await;
    s.follow("fan", "star").await;
    s.run(backfill).await;
    release.send(()).unwrap();
    task.await.unwrap();
    drain_embedded(&s.queue, &s.fanout).await;
    assert_eq!(
        s.flat("fan").await,
        [a.id],
        "the follower lost a pulled author it follows"
    );
}

impl Setup {
    fn feeds(&self) -> feeds::service::Feeds {
        feeds::service::Feeds::new(
            self.store.clone(),
            Arc::new(self.queue.clone()),
            &FanoutSettings::default(),
        )
    }

    /// Updates `extra.v` of `id` as its actor would.
    async fn update(&self, id: &str, v: u32) {
        let patch: feeds::update::ActivityPatch =
            serde_json::from_value(serde_json::json!({"set": {"extra.v": v}})).unwrap();
        let star = feeds::auth::Principal {
            sub: "star".into(),
            admin: false,
        };
        self.feeds().update(&star, id, patch).await.unwrap();
    }

    /// `extra.v` of activity `id` in `owner`'s timeline.
    async fn version_in(&self, owner: &str, id: &str) -> Option<Value> {
        let rows = [(owner.to_owned(), id.to_owned())];
        let entries = self.store.timeline_entries(&rows).await.unwrap();
        entries[0].activity.extra.as_ref()?.get("v").cloned()
    }
}

#[tokio::test]
async fn an_update_that_read_an_older_version_leaves_the_newest_everywhere() {
    let s = setup().await;
    s.follow("fan", "star").await;
    let a = s.post("star", 1).await;
    s.run(FanoutJob::Deliver {
        activity_id: a.id.clone(),
        actor: "star".into(),
        after: None,
    })
    .await;
    let rewrite = FanoutJob::Update {
        activity_id: a.id.clone(),
        after: None,
    };
    s.update(&a.id, 2).await;
    // Version 2's rewrite has read it and is about to write the copy.
    let (task, release) = s.start_paused("rewrite_timeline", rewrite.clone()).await;
    // Version 3, and its rewrite, all done meanwhile.
    s.update(&a.id, 3).await;
    s.run(rewrite).await;
    assert_eq!(s.version_in("fan", &a.id).await, Some(3.into()));
    // Version 2 lands on top of 3, then its rewrite reads the activity again.
    release.send(()).unwrap();
    task.await.unwrap();
    assert_eq!(
        s.version_in("fan", &a.id).await,
        Some(3.into()),
        "an older version was left on top of a newer one"
    );
    drain_embedded(&s.queue, &s.fanout).await;
    assert_eq!(s.version_in("fan", &a.id).await, Some(3.into()));
    let own = s
        .store
        .user_feed("star", IdRange::default(), 10)
        .await
        .unwrap();
    assert_eq!(own[0].extra.as_ref().unwrap()["v"], 3);
    s.assert_groups_agree("fan").await;
}

/// The post that makes an author pulled enqueues the adoption just before it writes the mark: an
/// adoption that runs first waits for the mark instead of failing into a visibility timeout, and
/// one whose mark never comes (the post died in between) fails, so that its message is retried.
#[tokio::test]
async fn an_adoption_that_runs_before_its_mark_waits_for_it() {
    let s = setup().await;
    s.follow("fan", "star").await;
    let adopt = FanoutJob::Adopt {
        author: "star".into(),
        after: None,
    };
    let fanout = s.fanout.clone();
    let job = adopt.clone();
    let task = tokio::spawn(async move { fanout.run(&job).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!task.is_finished(), "the adoption waits for the mark");
    s.store.mark_pulled_author("star").await.unwrap();
    task.await
        .unwrap()
        .expect("the adoption, once the mark is there");
    let followees = s.store.pulled_followees("fan").await.unwrap();
    let authors: Vec<&str> = followees.iter().map(|f| f.followee.as_str()).collect();
    assert_eq!(authors, ["star"]);

    s.follow("fan", "comet").await;
    let never = FanoutJob::Adopt {
        author: "comet".into(),
        after: None,
    };
    let err = s.fanout.run(&never).await.unwrap_err();
    assert!(err.to_string().contains("not marked"), "{err}");
    assert_eq!(s.store.pulled_followees("fan").await.unwrap().len(), 1);
}
