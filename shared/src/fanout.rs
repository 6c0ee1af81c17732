//! Fan-out on write: copies activities into followers' timelines, backfills on follow, purges on
//! unfollow and removes deleted activities. Each message handles one bounded chunk and enqueues the
//! rest, and every write is idempotent, so a redelivered message changes nothing.

use std::sync::Arc;
use std::time::Duration;

use futures::future::{BoxFuture, FutureExt};
use futures::stream::{self, StreamExt};
use tracing::Instrument;

use crate::aggregate::{self, Grouping};
use crate::metrics;
use crate::model::Activity;
use crate::notify;
use crate::queue::{Consumer, EraseStage, FanoutJob, Queue, QueueError, QueueMessage};
use crate::realtime::{self, Realtime, Transport};
use crate::store::{Counted, DayRange, IdRange, Store, StoreError, TimelineEntry};
use crate::trace;
use crate::update;

#[derive(Debug, thiserror::Error)]
pub enum FanoutError {
    #[error("the message is not a fan-out job: {0}")]
    Unparsable(String),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("queue: {0}")]
    Queue(#[from] QueueError),
}

#[derive(Debug, Clone, Copy)]
pub struct FanoutSettings {
    /// Followers (or activities, for a purge) handled per message.
    pub chunk_size: usize,
    /// Activities copied into a new follower's timeline.
    pub backfill_limit: usize,
    /// How aggregated feeds group activities (their groups are marked as timelines change).
    pub grouping: Grouping,
    /// Activities a flat or aggregated feed keeps; older ones are trimmed away.
    pub max_length: usize,
    /// An actor with more followers than this is a pulled author: what it posts from then on is
    /// merged into its followers' feeds when they read, not copied into them.
    pub pull_threshold: usize,
    /// Receives after which the queue dead-letters a message (SQS's `maxReceiveCount`): a message
    /// that fails at this receive is counted as dead-lettered.
    pub max_receives: u32,
}

impl Default for FanoutSettings {
    fn default() -> Self {
        FanoutSettings {
            chunk_size: 500,
            backfill_limit: 100,
            grouping: Grouping::default(),
            max_length: 1000,
            pull_threshold: 10_000,
            max_receives: 5,
        }
    }
}

impl FanoutSettings {
    /// One delivery in this many trims its feed: reading a feed's length costs about as many rows
    /// as it holds, so a long feed is trimmed now and then and may run over by a few dozen rows
    /// in between; a short one is trimmed at each delivery.
    fn trim_every(&self) -> usize {
        (self.max_length / 64).clamp(1, 16)
    }
}

/// Items an erasure message handles at most.
const ERASE_CHUNK: usize = 100;

/// How long an adoption waits for its author's mark. The post that adopts enqueues the job just
/// before it writes the mark, so a fan-out that is quick to receive it may look first; failing then
/// would hold the first pushes to the author's followers for a whole visibility timeout.
const MARK_WAIT: Duration = Duration::from_secs(2);
const MARK_POLL: Duration = Duration::from_millis(50);

/// What one message did, for its log line and its metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Chunk {
    /// Feed rows written, rewritten or removed.
    pub rows: usize,
    /// A delivery's chunk that read the end of the follower list: the post is then in every
    /// follower's feed, or is being written by the chunks still running.
    pub delivered: bool,
}

#[derive(Clone)]
pub struct Fanout {
    store: Arc<dyn Store>,
    queue: Arc<dyn Queue>,
    settings: FanoutSettings,
    /// Pushes to realtime connections, when this process has a way to reach them (the
    /// standalone server's hub; API Gateway's Management API when configured).
    realtime: Option<Realtime>,
}

impl Fanout {
    pub fn new(store: Arc<dyn Store>, queue: Arc<dyn Queue>, settings: FanoutSettings) -> Self {
        Fanout {
            store,
            queue,
            settings,
            realtime: None,
        }
    }

    /// This fan-out, pushing what it changes in whose feeds to the connections recorded in its
    /// store, through `transport`.
    pub fn with_realtime(mut self, transport: Arc<dyn Transport>) -> Self {
        self.realtime = Some(Realtime::new(self.store.clone(), transport));
        self
    }

    /// Tells the connected owners of `entries` that the rows arrived (or left, when `removed`):
    /// one look-up for all of them.
    async fn publish_rows(&self, entries: &[TimelineEntry], removed: bool) {
        let Some(realtime) = &self.realtime else {
            return;
        };
        let mut users: Vec<String> = entries
            .iter()
            .map(|e| realtime::feed_of(&e.owner).0.to_owned())
            .collect();
        users.sort_unstable();
        users.dedup();
        let to = realtime.connections(&users).await;
        let connected: std::collections::HashSet<&str> =
            to.iter().map(|c| c.user.as_str()).collect();
        let messages: Vec<(String, realtime::Message)> = entries
            .iter()
            .filter_map(|e| {
                let (user, feed) = realtime::feed_of(&e.owner);
                let message = || realtime::Message::changed(feed, &e.activity, removed);
                connected
                    .contains(user)
                    .then(|| (user.to_owned(), message()))
            })
            .collect();
        realtime.send(&to, &messages).await;
    }

    /// Tells the connected ones of `users` that `activities` arrived in their flat feeds (or
    /// left them, when `removed`).
    async fn publish_flat(&self, users: &[String], activities: &[Activity], removed: bool) {
        let Some(realtime) = &self.realtime else {
            return;
        };
        if activities.is_empty() {
            return;
        }
        let to = realtime.connections(users).await;
        let connected = realtime::users_of(&to);
        let mut messages = Vec::with_capacity(connected.len() * activities.len());
        for user in connected {
            for a in activities {
                let message = realtime::Message::changed(realtime::Feed::Flat, a, removed);
                messages.push((user.to_owned(), message));
            }
        }
        realtime.send(&to, &messages).await;
    }

    /// Tells the connected users of these notification feeds their counts.
    async fn publish_counts(&self, owners: &[String]) -> Result<(), StoreError> {
        let Some(realtime) = &self.realtime else {
            return Ok(());
        };
        let users: Vec<String> = owners
            .iter()
            .filter_map(|o| notify::user_of_feed(o).map(str::to_owned))
            .collect();
        let to = realtime.connections(&users).await;
        let connected = realtime::users_of(&to);
        let mut messages = Vec::with_capacity(connected.len());
        for user in connected {
            let marks = self
                .store
                .notification_marks(&notify::feed_owner(user))
                .await?;
            let message = realtime::Message::Counts {
                unseen: marks.unseen.len(),
                unread: marks.unread.len(),
            };
            messages.push((user.to_owned(), message));
        }
        realtime.send(&to, &messages).await;
        Ok(())
    }

    /// Runs one job: writes its chunk, and enqueues the next chunk first so that chunks of a large
    /// follower list proceed in parallel.
    pub async fn run(&self, job: &FanoutJob) -> Result<Chunk, FanoutError> {
        let chunk = self.settings.chunk_size;
        let mut done = Chunk::default();
        match job {
            FanoutJob::Deliver {
                activity_id,
                actor,
                after,
            }
            | FanoutJob::Retract {
                activity_id,
                actor,
                after,
            } => {
                let deliver = matches!(job, FanoutJob::Deliver { .. });
                if !deliver && after.is_none() {
                    // A pulled activity is in no timeline (backfills copy none): one delete.
                    if self.store.get_pulled(actor, activity_id).await?.is_some() {
                        self.store.delete_pulled(actor, activity_id).await?;
                        if let Some(realtime) = &self.realtime {
                            let message = realtime::Message::Removed {
                                feed: realtime::Feed::Flat,
                                id: activity_id.clone(),
                            };
                            realtime.publish_pulled(actor, &message).await;
                        }
                        return Ok(done);
                    }
                }
                let activity = if deliver {
                    match self.store.get_activity(activity_id).await? {
                        Some(a) => Some(a),
                        // Deleted before its fan-out ran: nothing to deliver.
                        None => return Ok(done),
                    }
                } else {
                    None
                };
                let followers = self.store.followers(actor, after.as_deref(), chunk).await?;
                done.delivered = deliver && followers.len() < chunk;
                if followers.len() == chunk {
                    let next = followers.last().map(|r| r.user.clone());
                    let job = match job {
                        FanoutJob::Deliver { .. } => FanoutJob::Deliver {
                            activity_id: activity_id.clone(),
                            actor: actor.clone(),
                            after: next,
                        },
                        _ => FanoutJob::Retract {
                            activity_id: activity_id.clone(),
                            actor: actor.clone(),
                            after: next,
                        },
                    };
                    self.queue.send(&[job]).await?;
                }
                match activity {
                    Some(activity) => {
                        let owners: Vec<String> = followers.into_iter().map(|r| r.user).collect();
                        let entries: Vec<TimelineEntry> = owners
                            .iter()
                            .map(|owner| TimelineEntry {
                                owner: owner.clone(),
                                activity: activity.clone(),
                            })
                            .collect();
                        self.add(&entries).await?;
                        done.rows = entries.len();
                        self.purge_unfollowed(actor, after.as_deref(), owners)
                            .await?;
                    }
                    None => {
                        let rows: Vec<(String, String)> = followers
                            .into_iter()
                            .map(|r| (r.user, activity_id.clone()))
                            .collect();
                        let present = self.store.timeline_entries(&rows).await?;
                        self.remove(&present).await?;
                        done.rows = present.len();
                    }
                }
            }
            FanoutJob::Backfill { follower, followee } => {
                // An unfollow that overtook this job wins: the final feed agrees with the final edge.
                if !self.store.is_following(follower, followee).await? {
                    return Ok(done);
                }
                let limit = self.settings.backfill_limit;
                let recent = self
                    .store
                    .user_feed(followee, IdRange::default(), limit)
                    .await?;
                // Pulled activities are merged at read time from `floor` on, as far back as
                // this backfill reaches; the others are copied.
                let mut entries: Vec<TimelineEntry> = Vec::with_capacity(recent.len());
                let pulled_author = self.store.is_pulled_author(followee).await?;
                let pulled: std::collections::HashSet<String> = match (pulled_author, recent.last())
                {
                    (true, Some(oldest)) => {
                        let range = IdRange {
                            before: None,
                            not_before: Some(&oldest.id),
                        };
                        self.store
                            .pulled(followee, range, limit)
                            .await?
                            .into_iter()
                            .map(|a| a.id)
                            .collect()
                    }
                    _ => Default::default(),
                };
                let floor = (recent.len() == limit)
                    .then(|| recent.last().map(|a| a.id.clone()))
                    .flatten();
                let mut merged: Vec<Activity> = Vec::new();
                for a in recent {
                    match pulled.contains(&a.id) {
                        false => entries.push(TimelineEntry {
                            owner: follower.clone(),
                            activity: a,
                        }),
                        true => merged.push(a),
                    }
                }
                self.add(&entries).await?;
                done.rows = entries.len();
                if pulled_author {
                    self.store
                        .put_pulled_followee(follower, followee, floor.as_deref())
                        .await?;
                    if let Some(realtime) = &self.realtime {
                        realtime
                            .pulled_followed(followee, std::slice::from_ref(follower))
                            .await?;
                        // Readable from now on, as the copied rows are.
                        let follower = std::slice::from_ref(follower);
                        self.publish_flat(follower, &merged, false).await;
                    }
                }
                // An unfollow whose purge ran between the check above and this write left rows
                // that no purge will see: purge again.
                let wrote = !entries.is_empty() || pulled_author;
                if wrote && !self.store.is_following(follower, followee).await? {
                    self.queue
                        .send(&[FanoutJob::Purge {
                            follower: follower.clone(),
                            followee: followee.clone(),
                            before: None,
                        }])
                        .await?;
                }
            }
            FanoutJob::Purge {
                follower,
                followee,
                before,
            } => {
                if self.store.is_following(follower, followee).await? {
                    return Ok(done);
                }
                let pulled_row = match before {
                    None => self
                        .store
                        .pulled_followees(follower)
                        .await?
                        .into_iter()
                        .find(|p| &p.followee == followee),
                    Some(_) => None,
                };
                let pulled_rows = pulled_row.is_some();
                if let Some(row) = pulled_row {
                    self.store
                        .delete_pulled_followee(follower, followee)
                        .await?;
                    if let Some(realtime) = &self.realtime {
                        realtime.pulled_unfollowed(followee, follower).await?;
                        // No longer readable, as the purged rows are not.
                        let seen = IdRange {
                            before: None,
                            not_before: row.floor.as_deref(),
                        };
                        let max = self.settings.max_length;
                        let gone = self.store.pulled(followee, seen, max).await?;
                        let follower = std::slice::from_ref(follower);
                        self.publish_flat(follower, &gone, true).await;
                    }
                }
                let range = IdRange {
                    before: before.as_deref(),
                    not_before: None,
                };
                // Scans the follower's timeline rather than the followee's own feed: an activity
                // deleted after the unfollow is gone from the followee's feed, and its retraction
                // no longer reaches this ex-follower.
                let page = self.store.timeline(follower, range, chunk).await?;
                if page.len() == chunk {
                    let next = page.last().map(|a| a.id.clone());
                    self.queue
                        .send(&[FanoutJob::Purge {
                            follower: follower.clone(),
                            followee: followee.clone(),
                            before: next,
                        }])
                        .await?;
                }
                let rows: Vec<TimelineEntry> = page
                    .into_iter()
                    .filter(|a| &a.actor == followee)
                    .map(|activity| TimelineEntry {
                        owner: follower.clone(),
                        activity,
                    })
                    .collect();
                self.remove(&rows).await?;
                done.rows = rows.len();
                // A follow again whose backfill ran between the check above and this delete lost
                // its rows: backfill again.
                let removed = !rows.is_empty() || pulled_rows;
                if removed && self.store.is_following(follower, followee).await? {
                    self.queue
                        .send(&[FanoutJob::Backfill {
                            follower: follower.clone(),
                            followee: followee.clone(),
                        }])
                        .await?;
                }
            }
            FanoutJob::Notify { activity_id, from } => {
                // Deleted before its delivery ran: nothing to deliver.
                let Some(activity) = self.store.get_activity(activity_id).await? else {
                    return Ok(done);
                };
                let users = notify::recipients(&activity);
                let end = from.saturating_add(chunk).min(users.len());
                if end < users.len() {
                    self.queue
                        .send(&[FanoutJob::Notify {
                            activity_id: activity_id.clone(),
                            from: end,
                        }])
                        .await?;
                }
                let Some(users) = users.get(*from..end) else {
                    return Ok(done);
                };
                let store = self.store.as_ref();
                let entries = notify::prepare_delivery(store, &activity, users).await?;
                done.rows = entries.len();
                for (owner, cut_day) in self.add_to(&entries, notify::GROUPING).await? {
                    notify::prune(store, &owner, cut_day, true).await?;
                }
                let owners: Vec<String> = entries.into_iter().map(|e| e.owner).collect();
                self.publish_counts(&owners).await?;
            }
            FanoutJob::Erase { user, stage } => self.erase(user, *stage).await?,
            FanoutJob::Update { activity_id, after } => {
                done.rows = self.update(activity_id, after.as_deref()).await?
            }
            FanoutJob::Unnotify {
                activity_id,
                group,
                users,
            } => {
                let store = self.store.as_ref();
                let owners: Vec<String> = users.iter().map(|u| notify::feed_owner(u)).collect();
                let rows: Vec<(String, String)> = owners
                    .iter()
                    .map(|o| (o.clone(), activity_id.clone()))
                    .collect();
                let present = store.timeline_entries(&rows).await?;
                aggregate::remove_rows(store, notify::GROUPING, &present).await?;
                self.publish_rows(&present, true).await;
                done.rows = present.len();
                // Also where the row was gone already: a first attempt may have stopped after
                // removing it.
                if let Some(day) = notify::day_of_group(group) {
                    for owner in &owners {
                        notify::prune(store, owner, day, false).await?;
                    }
                }
                self.publish_counts(&owners).await?;
            }
            FanoutJob::Recount {
                user,
                what,
                asked_us,
            } => self.store.recount(user, *what, *asked_us).await?,
            FanoutJob::Adopt { author, after } => {
                // Its followers are walked only once the mark is visible: a follow after this
                // walk read its page then sees the mark in its own backfill.
                if !self.mark_visible(author).await? {
                    return Err(FanoutError::Store(StoreError::Unavailable(format!(
                        "{author} is not marked as a pulled author yet"
                    ))));
                }
                let followers = self
                    .store
                    .followers(author, after.as_deref(), chunk)
                    .await?;
                if followers.len() == chunk {
                    let next = followers.last().map(|r| r.user.clone());
                    self.queue
                        .send(&[FanoutJob::Adopt {
                            author: author.clone(),
                            after: next,
                        }])
                        .await?;
                }
                let owners: Vec<String> = followers.into_iter().map(|r| r.user).collect();
                let writes = owners
                    .iter()
                    .map(|owner| self.store.put_pulled_followee(owner, author, None));
                done.rows = futures::future::try_join_all(writes).await?.len();
                if let Some(realtime) = &self.realtime {
                    realtime.pulled_followed(author, &owners).await?;
                    // What it pulled since it was marked is readable by these followers from now
                    // on (all of it: their floor is none).
                    let limit = self.settings.backfill_limit;
                    let merged = self.store.pulled(author, IdRange::default(), limit).await?;
                    self.publish_flat(&owners, &merged, false).await;
                }
                self.purge_unfollowed(author, after.as_deref(), owners)
                    .await?;
            }
            FanoutJob::PushPulled { activity_id, actor } => {
                let Some(realtime) = &self.realtime else {
                    return Ok(done);
                };
                // Deleted before this ran: nothing to push.
                if let Some(activity) = self.store.get_pulled(actor, activity_id).await? {
                    let message = realtime::Message::Activity {
                        feed: realtime::Feed::Flat,
                        activity,
                    };
                    realtime.publish_pulled(actor, &message).await;
                }
            }
            FanoutJob::PushCounts { user } => {
                self.publish_counts(&[notify::feed_owner(user)]).await?
            }
        }
        Ok(done)
    }

    /// Writes timeline rows and marks their groups (`aggregate::insert_rows`), then trims.
    async fn add(&self, entries: &[TimelineEntry]) -> Result<(), StoreError> {
        self.add_to(entries, self.settings.grouping).await.map(drop)
    }

    /// [`Fanout::add`] into feeds grouped by `grouping`; answers the feeds it trimmed, each with
    /// the day of its cut.
    async fn add_to(
        &self,
        entries: &[TimelineEntry],
        grouping: Grouping,
    ) -> Result<Vec<(String, i32)>, StoreError> {
        let mut trimmed = Vec::new();
        if entries.is_empty() {
            return Ok(trimmed);
        }
        aggregate::insert_rows(self.store.as_ref(), grouping, entries).await?;
        self.publish_rows(entries, false).await;
        let mut owners: Vec<&str> = entries.iter().map(|e| e.owner.as_str()).collect();
        owners.sort_unstable();
        let every = self.settings.trim_every();
        let mut i = 0;
        while i < owners.len() {
            let owner = owners[i];
            let rows = owners[i..].iter().take_while(|o| **o == owner).count();
            i += rows;
            // A backfill (many rows at once) always trims; single deliveries now and then.
            if rows > 1 || every == 1 || rand::random_range(0..every) == 0 {
                if let Some(day) = self.trim(owner, grouping).await? {
                    trimmed.push((owner.to_owned(), day));
                }
            }
        }
        Ok(trimmed)
    }

    async fn remove(&self, entries: &[TimelineEntry]) -> Result<(), StoreError> {
        aggregate::remove_rows(self.store.as_ref(), self.settings.grouping, entries).await?;
        self.publish_rows(entries, true).await;
        Ok(())
    }

    /// Cuts `owner`'s timeline to its newest `max_length` rows with one range delete, drops the
    /// groups of the days wholly below the cut and marks those of the cut's day. Rows below the
    /// cut that a concurrent writer added are gone with the rest, and their groups are dropped or
    /// marked after the cut too.
    /// Answers the day of the cut, when there was one.
    async fn trim(&self, owner: &str, grouping: Grouping) -> Result<Option<i32>, StoreError> {
        let Some(through) = self
            .store
            .timeline_id_at(owner, self.settings.max_length)
            .await?
        else {
            return Ok(None);
        };
        self.store.trim_timeline(owner, &through).await?;
        let Some(day) = aggregate::day_of_id(&through) else {
            return Ok(None);
        };
        let feed = grouping.feed();
        let now = aggregate::now_us();
        self.store.drop_groups(owner, feed, day, now).await?;
        let days = DayRange {
            max: Some(day),
            min: Some(day),
        };
        let groups: Vec<_> = self
            .store
            .groups(owner, feed, days, usize::MAX)
            .await?
            .into_iter()
            .map(|g| crate::store::GroupRef {
                owner: owner.to_owned(),
                feed: feed.to_owned(),
                day: g.day,
                key: g.key,
            })
            .collect();
        self.store.mark_groups(&groups, now).await?;
        Ok(Some(day))
    }

    /// Rewrites the copies of an updated activity with its current content (see [`crate::update`]):
    /// the timelines of one chunk of followers and, for the first chunk, its own copies and its
    /// recipients' notification feeds; then reads it again, and goes round with what it finds if
    /// it changed. Only rows that exist are rewritten. A row removed in between may come back
    /// whole: an unfollower's is purged again, and an activity deleted in between is removed
    /// again from everything this wrote.
    /// Answers the rows it rewrote, or removed again.
    async fn update(&self, activity_id: &str, after: Option<&str>) -> Result<usize, FanoutError> {
        let store = self.store.as_ref();
        let Some((mut current, _)) = store.get_versioned(activity_id).await? else {
            // Deleted: its removal takes every copy away.
            return Ok(0);
        };
        let actor = current.actor.clone();
        let first = after.is_none();
        // A pulled activity is in no timeline: its record is its followers' copy.
        let pulled = first && store.get_pulled(&actor, activity_id).await?.is_some();
        let owners: Vec<String> = if pulled {
            Vec::new()
        } else {
            let chunk = self.settings.chunk_size;
            let followers = store.followers(&actor, after, chunk).await?;
            if followers.len() == chunk {
                self.queue
                    .send(&[FanoutJob::Update {
                        activity_id: activity_id.to_owned(),
                        after: followers.last().map(|r| r.user.clone()),
                    }])
                    .await?;
            }
            followers.into_iter().map(|r| r.user).collect()
        };
        let recipients: Vec<String> = match first {
            true => notify::recipients(&current)
                .iter()
                .map(|u| notify::feed_owner(u))
                .collect(),
            false => Vec::new(),
        };
        let rows = |owners: &[String]| -> Vec<(String, String)> {
            owners
                .iter()
                .map(|o| (o.clone(), activity_id.to_owned()))
                .collect()
        };
        let (followed, addressed) = (rows(&owners), rows(&recipients));
        let (timeline, notified) = tokio::try_join!(
            store.timeline_entries(&followed),
            store.timeline_entries(&addressed)
        )?;
        let with = |entries: &[TimelineEntry], a: &Activity| -> Vec<TimelineEntry> {
            entries
                .iter()
                .map(|e| TimelineEntry {
                    owner: e.owner.clone(),
                    activity: a.clone(),
                })
                .collect()
        };
        loop {
            if first {
                store.rewrite_own_copies(&current, pulled).await?;
            }
            let grouping = self.settings.grouping;
            aggregate::rewrite_rows(store, grouping, &with(&timeline, &current)).await?;
            aggregate::rewrite_rows(store, notify::GROUPING, &with(&notified, &current)).await?;
            match store.get_versioned(activity_id).await? {
                Some((now, _)) if update::same_content(&now, &current) => break,
                Some((now, _)) => current = now,
                None => {
                    // Deleted while this ran: take away what it may have written back.
                    if first {
                        store.remove_own_copies(&current).await?;
                    }
                    self.remove(&timeline).await?;
                    if !notified.is_empty() {
                        self.queue
                            .send(&[FanoutJob::Unnotify {
                                activity_id: activity_id.to_owned(),
                                group: notify::group_of(&current),
                                users: notify::recipients(&current),
                            }])
                            .await?;
                    }
                    return Ok(timeline.len());
                }
            }
        }
        let rows = timeline.len() + notified.len();
        let written = timeline.into_iter().map(|e| e.owner).collect();
        self.purge_unfollowed(&actor, after, written).await?;
        Ok(rows)
    }

    /// One chunk of `user`'s erasure. Each stage reads its first page again, since what it handled
    /// is gone, and hands over to the next stage when a page comes back short; a redelivered
    /// message finds less to do.
    async fn erase(&self, user: &str, stage: EraseStage) -> Result<(), FanoutError> {
        let store = self.store.as_ref();
        // Each item costs a lightweight transaction or two: a chunk stays well within a
        // function's time limit.
        let chunk = self.settings.chunk_size.min(ERASE_CHUNK);
        let mut jobs = Vec::new();
        let handled = match stage {
            EraseStage::Activities => {
                let page = store.user_feed(user, IdRange::default(), chunk).await?;
                // The removals enqueued before the deletes, as a delete request does.
                let removals: Vec<FanoutJob> = page
                    .iter()
                    .flat_map(|a| FanoutJob::removal(a, self.settings.chunk_size))
                    .collect();
                self.queue.send(&removals).await?;
                for group in page.chunks(16) {
                    futures::future::try_join_all(group.iter().map(|a| store.delete_activity(a)))
                        .await?;
                }
                page.len()
            }
            EraseStage::Following => {
                // One partition (the user's), so one edge at a time.
                let page = store.following(user, None, chunk).await?;
                for r in &page {
                    self.unfollow(user, &r.user).await?;
                }
                page.len()
            }
            EraseStage::Followers => {
                let page = store.followers(user, None, chunk).await?;
                for group in page.chunks(16) {
                    futures::future::try_join_all(
                        group.iter().map(|r| self.unfollow(&r.user, user)),
                    )
                    .await?;
                }
                page.len()
            }
            EraseStage::Feeds => {
                let now = aggregate::now_us();
                let notifications = notify::feed_owner(user);
                for (owner, feeds) in [
                    (user, &[Grouping::VerbDay, Grouping::VerbActorDay][..]),
                    (&notifications, &[notify::GROUPING][..]),
                ] {
                    // Every id sorts below "g": the whole timeline.
                    store.trim_timeline(owner, "g").await?;
                    for grouping in feeds {
                        store
                            .drop_groups(owner, grouping.feed(), i32::MAX, now)
                            .await?;
                    }
                }
                store.erase_notification_marks(&notifications, now).await?;
                for p in store.pulled_followees(user).await? {
                    store.delete_pulled_followee(user, &p.followee).await?;
                    if let Some(realtime) = &self.realtime {
                        realtime.pulled_unfollowed(&p.followee, user).await?;
                    }
                }
                store.unmark_pulled_author(user).await?;
                for what in [Counted::Followers, Counted::Following, Counted::Activities] {
                    jobs.push(FanoutJob::recount(user, what));
                }
                tracing::info!(user, "user erased");
                0
            }
        };
        let next = match (stage, handled == chunk) {
            (_, true) => Some(stage),
            (EraseStage::Activities, false) => Some(EraseStage::Following),
            (EraseStage::Following, false) => Some(EraseStage::Followers),
            (EraseStage::Followers, false) => Some(EraseStage::Feeds),
            (EraseStage::Feeds, false) => None,
        };
        jobs.extend(next.map(|stage| FanoutJob::Erase {
            user: user.to_owned(),
            stage,
        }));
        self.queue.send(&jobs).await?;
        Ok(())
    }

    /// Removes an edge as an erasure does, and enqueues at once what an unfollow enqueues: a
    /// retried message reads its page again and no longer finds this edge.
    async fn unfollow(&self, follower: &str, followee: &str) -> Result<(), FanoutError> {
        self.store.unfollow(follower, followee).await?;
        let jobs = FanoutJob::edge_changed(follower, followee, false);
        self.queue.send(&jobs).await?;
        Ok(())
    }

    /// Whether `author` is marked as a pulled author, waiting up to [`MARK_WAIT`] for the mark.
    async fn mark_visible(&self, author: &str) -> Result<bool, StoreError> {
        let deadline = tokio::time::Instant::now() + MARK_WAIT;
        loop {
            if self.store.is_pulled_author(author).await? {
                return Ok(true);
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(false);
            }
            tokio::time::sleep(MARK_POLL).await;
        }
    }

    /// After a delivery wrote to `owners`, the followers of `followee` it read after `after`:
    /// enqueues a purge for each who has unfollowed since, whose own purge may have run before the
    /// write and missed its row. One page read; an edge check only for those no longer on it.
    async fn purge_unfollowed(
        &self,
        followee: &str,
        after: Option<&str>,
        owners: Vec<String>,
    ) -> Result<(), FanoutError> {
        if owners.is_empty() {
            return Ok(());
        }
        let still: std::collections::HashSet<String> = self
            .store
            .followers(followee, after, self.settings.chunk_size)
            .await?
            .into_iter()
            .map(|r| r.user)
            .collect();
        let mut purges = Vec::new();
        for owner in owners.into_iter().filter(|o| !still.contains(o)) {
            // Off the page: unfollowed, or pushed past its end by new followers.
            if !self.store.is_following(&owner, followee).await? {
                purges.push(FanoutJob::Purge {
                    follower: owner,
                    followee: followee.to_owned(),
                    before: None,
                });
            }
        }
        if !purges.is_empty() {
            self.queue.send(&purges).await?;
        }
        Ok(())
    }

    /// Runs one raw message, and logs and measures what it did.
    pub async fn run_message(&self, body: &str) -> Result<(), FanoutError> {
        let job = FanoutJob::decode(body).map_err(|e| FanoutError::Unparsable(e.to_string()))?;
        let done = self.run(&job).await?;
        // From the post's request to the end of the chunk that ended its delivery.
        let lag = done
            .delivered
            .then(|| trace::current().and_then(|t| t.age_ms()))
            .flatten()
            .map(|ms| Duration::from_millis(ms as u64));
        let lag_ms = lag.map(|l| l.as_millis() as u64);
        tracing::info!(
            kind = job.kind(),
            activity_id = job.activity_id(),
            rows = done.rows,
            lag_ms,
            "fan-out message done"
        );
        metrics::fanout_chunk(job.kind(), done.rows, lag);
        Ok(())
    }

    /// Runs a batch concurrently, each message within the trace it carries (a new one when it
    /// carries none) and in its own span; answers the ids of the messages that failed, so that only
    /// they are redelivered.
    pub async fn run_batch(&self, messages: &[QueueMessage]) -> Vec<String> {
        // Boxed so the stream's futures are `Send` for any lifetime (spawned workers need it).
        let jobs: Vec<BoxFuture<'_, Option<String>>> = messages
            .iter()
            .map(|m| {
                let work = async move {
                    // Made inside the trace's span, so that it is its child.
                    let span = tracing::info_span!("fanout_message", message_id = %m.id);
                    self.run_reporting(m).instrument(span).await
                };
                trace::within(m.trace.start(), work).boxed()
            })
            .collect();
        let results: Vec<Option<String>> = stream::iter(jobs).buffer_unordered(16).collect().await;
        results.into_iter().flatten().collect()
    }

    /// Runs `m`; answers its id when it failed, and counts it when the queue dead-letters it.
    async fn run_reporting(&self, m: &QueueMessage) -> Option<String> {
        let e = self.run_message(&m.body).await.err()?;
        let last = m.receives >= self.settings.max_receives;
        tracing::error!(
            message_id = %m.id,
            receives = m.receives,
            dead_lettered = last,
            error = %e,
            "fan-out message failed"
        );
        if last {
            metrics::dead_lettered(&m.id);
        }
        Some(m.id.clone())
    }

    /// Works a queue in-process until `shutdown` resolves: receives, runs each batch, and
    /// acknowledges the messages that did not fail, so that only failed ones are redelivered.
    pub async fn work(
        &self,
        queue: &dyn Consumer,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        loop {
            let received = tokio::select! {
                _ = &mut shutdown => return,
                r = queue.receive(10) => r,
            };
            let received = match received {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(error = %e, "cannot receive from the fan-out queue; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            if received.is_empty() {
                continue;
            }
            let messages: Vec<QueueMessage> = received.iter().map(|d| d.message.clone()).collect();
            let failed = self.run_batch(&messages).await;
            let handled: Vec<_> = received
                .into_iter()
                .filter(|d| !failed.contains(&d.message.id))
                .collect();
            if let Err(e) = queue.acknowledge(&handled).await {
                tracing::error!(error = %e, "cannot delete handled messages; they will be redelivered");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{parse_time, Activity, ActivityId, FollowEdge};
    use crate::queue::embedded::EmbeddedQueue;
    use crate::store::sqlite::{SqliteDb, SqliteStore};

    /// Runs every queued job, in order, until the queue is empty.
    async fn drain(fanout: &Fanout, queue: &EmbeddedQueue) {
        loop {
            let messages = queue.receive(10).await.unwrap();
            if messages.is_empty() {
                return;
            }
            assert!(fanout.run_batch(&messages).await.is_empty());
            queue
                .delete(&messages.iter().map(|m| m.id.clone()).collect::<Vec<_>>())
                .await
                .unwrap();
        }
    }

    #[tokio::test]
    async fn activity_deleted_after_unfollow_leaves_the_ex_followers_feed() {
        let db = SqliteDb::open(":memory:").unwrap();
        let store = Arc::new(SqliteStore::new(db.clone()));
        let queue = EmbeddedQueue::new(db, Duration::from_secs(30), 5)
            .await
            .unwrap();
        let settings = FanoutSettings {
            chunk_size: 2,
            ..Default::default()
        };
        let fanout = Fanout::new(store.clone(), Arc::new(queue.clone()), settings);
        for star in ["star", "other"] {
            let edge = FollowEdge {
                follower: "fan".into(),
                following: star.into(),
                created_at: chrono::Utc::now(),
            };
            store.follow(&edge).await.unwrap();
        }
        let mut posted = Vec::new();
        for (i, actor) in ["star", "other", "star", "star", "other"]
            .iter()
            .enumerate()
        {
            let time = parse_time(&format!("2026-11-29T10:00:0{i}Z")).unwrap();
            let a = Activity {
                id: ActivityId::new(time).0,
                actor: actor.to_string(),
                verb: "post".into(),
                object: "o".into(),
                target: None,
                time,
                foreign_id: None,
                to: Vec::new(),
                extra: None,
            };
            store.put_activity(&a).await.unwrap();
            queue
                .send(&[FanoutJob::Deliver {
                    activity_id: a.id.clone(),
                    actor: a.actor.clone(),
                    after: None,
                }])
                .await
                .unwrap();
            posted.push(a);
        }
        drain(&fanout, &queue).await;
        assert_eq!(
            store
                .timeline("fan", IdRange::default(), 10)
                .await
                .unwrap()
                .len(),
            5
        );

        // The unfollow, then a delete, both before any of their jobs runs.
        store.unfollow("fan", "star").await.unwrap();
        queue
            .send(&[FanoutJob::Purge {
                follower: "fan".into(),
                followee: "star".into(),
                before: None,
            }])
            .await
            .unwrap();
        store.delete_activity(&posted[0]).await.unwrap();
        let retract = FanoutJob::Retract {
            activity_id: posted[0].id.clone(),
            actor: "star".into(),
            after: None,
        };
        queue.send(&[retract]).await.unwrap();
        drain(&fanout, &queue).await;

        let left: Vec<String> = store
            .timeline("fan", IdRange::default(), 10)
            .await
            .unwrap()
            .into_iter()
            .map(|a| a.actor)
            .collect();
        assert_eq!(
            left,
            ["other", "other"],
            "nothing of the unfollowed user remains, deleted or not"
        );
    }
}
