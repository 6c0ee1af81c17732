//! The application service: each operation of the API (post, delete, follow, unfollow, the feed
//! reads) in one place, with its checks in the contract's order (validity, then authorization) and
//! the ordering of its store and queue writes, including the undo when the second write fails.
//! Entry points (HTTP, Lambda) authenticate and translate; they never touch the store or the queue.

use std::sync::Arc;

use chrono::Utc;
use futures::{StreamExt, TryStreamExt};

use serde_json::value::RawValue;

use crate::aggregate::{self, GroupPosition, Grouping};
use crate::auth::Principal;
use crate::error::{Error, Result};
use crate::fanout::FanoutSettings;
use crate::model::{
    check_user_id, truncate_to_micros, Activity, ActivityId, BatchedEdge, FollowBatch, FollowEdge,
    FollowRequest, NewActivity, Relation, ValidationError, MAX_FOLLOW_BATCH,
};
use crate::notify;
use crate::queue::{EraseStage, FanoutJob, Queue, QueueError};
use crate::store::{Counted, IdRange, Store, StoreError, UserCounts};
use crate::update::ActivityPatch;

fn edge_jobs(edge: &FollowEdge, follow: bool) -> Vec<FanoutJob> {
    FanoutJob::edge_changed(&edge.follower, &edge.following, follow)
}

/// Compare-and-set passes an update makes before it gives up on a contended activity.
const UPDATE_ATTEMPTS: usize = 5;

/// Edges of a batch written at once.
const BATCH_CONCURRENCY: usize = 8;

/// Where the next page of a flat feed starts: below `before`, with `served` activities of the
/// walk before it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlatPosition {
    pub before: String,
    pub served: usize,
}

impl FlatPosition {
    /// `<id>.<served>`.
    pub fn encode(&self) -> String {
        format!("{}.{}", self.before, self.served)
    }

    /// Also `<id>` alone, as cursors of earlier releases were: nothing counted.
    pub fn decode(text: &str) -> Option<Self> {
        let (id, served) = match text.split_once('.') {
            Some((id, n)) => (id, n.parse().ok()?),
            None => (text, 0),
        };
        ActivityId::is_valid(id).then(|| FlatPosition {
            before: id.to_owned(),
            served,
        })
    }
}

/// The feeds service over a store and the fan-out queue. Built once per process; cloning is cheap.
#[derive(Clone)]
pub struct Feeds {
    store: Arc<dyn Store>,
    queue: Arc<dyn Queue>,
    grouping: Grouping,
    pull_threshold: usize,
    chunk_size: usize,
    max_length: usize,
}

/// What `GET /health` reports: each dependency, reachable or not.
pub struct Health {
    pub store: std::result::Result<(), StoreError>,
    pub queue: std::result::Result<(), QueueError>,
}

impl Feeds {
    pub fn new(store: Arc<dyn Store>, queue: Arc<dyn Queue>, settings: &FanoutSettings) -> Self {
        Feeds {
            store,
            queue,
            grouping: settings.grouping,
            pull_threshold: settings.pull_threshold,
            chunk_size: settings.chunk_size,
            max_length: settings.max_length,
        }
    }

    pub async fn health(&self) -> Health {
        let (store, queue) = tokio::join!(self.store.health(), self.queue.health());
        Health { store, queue }
    }

    /// Adds the edge (answering whether it is new) and enqueues its backfill.
    pub async fn follow(
        &self,
        principal: &Principal,
        req: FollowRequest,
    ) -> Result<(FollowEdge, bool)> {
        check_user_id("follower", &req.follower)?;
        check_user_id("following", &req.following)?;
        if req.follower == req.following {
            return Err(
                ValidationError::new("self_follow", "a user cannot follow themselves").into(),
            );
        }
        authorize(
            principal,
            &req.follower,
            "only the follower (or a feeds:admin service) may follow",
        )?;
        let edge = FollowEdge {
            follower: req.follower,
            following: req.following,
            created_at: truncate_to_micros(Utc::now()),
        };
        let (edge, created) = self.store.follow(&edge).await?;
        // Backfill (and recount) also on an existing edge: a retry after a failed enqueue must
        // still do both.
        self.queue.send(&edge_jobs(&edge, true)).await?;
        Ok((edge, created))
    }

    /// Adds every edge of `batch` (answering, in the order given, whether each is new) and
    /// enqueues their backfills. Every edge is checked, then authorized, before any is written.
    pub async fn follow_batch(
        &self,
        principal: &Principal,
        batch: FollowBatch,
    ) -> Result<Vec<BatchedEdge>> {
        let n = batch.follows.len();
        if n == 0 || n > MAX_FOLLOW_BATCH {
            return Err(ValidationError::new(
                "invalid_batch",
                format!("`follows` holds 1 to {MAX_FOLLOW_BATCH} edges, not {n}"),
            )
            .into());
        }
        for (i, req) in batch.follows.iter().enumerate() {
            let at = |e: ValidationError| {
                ValidationError::new(e.code, format!("follows[{i}]: {}", e.message))
            };
            check_user_id("follower", &req.follower).map_err(at)?;
            check_user_id("following", &req.following).map_err(at)?;
            if req.follower == req.following {
                return Err(at(ValidationError::new(
                    "self_follow",
                    "a user cannot follow themselves",
                ))
                .into());
            }
        }
        for req in &batch.follows {
            authorize(
                principal,
                &req.follower,
                "only the follower (or a feeds:admin service) may follow",
            )?;
        }
        // Each distinct edge once, a few at a time; a repeat within the batch is not new.
        let mut distinct: Vec<(&str, &str)> = Vec::with_capacity(n);
        for req in &batch.follows {
            let key = (req.follower.as_str(), req.following.as_str());
            if !distinct.contains(&key) {
                distinct.push(key);
            }
        }
        let created_at = truncate_to_micros(Utc::now());
        let edges: Vec<FollowEdge> = distinct
            .iter()
            .map(|(follower, following)| FollowEdge {
                follower: (*follower).to_owned(),
                following: (*following).to_owned(),
                created_at,
            })
            .collect();
        let writes = edges.into_iter().map(|edge| {
            let store = self.store.clone();
            async move { store.follow(&edge).await }
        });
        let written: Vec<(FollowEdge, bool)> = futures::stream::iter(writes)
            .buffered(BATCH_CONCURRENCY)
            .try_collect()
            .await?;
        let jobs: Vec<FanoutJob> = written
            .iter()
            .flat_map(|(edge, _)| edge_jobs(edge, true))
            .collect();
        self.queue.send(&jobs).await?;
        let mut first = vec![true; written.len()];
        Ok(batch
            .follows
            .iter()
            .map(|req| {
                let i = distinct
                    .iter()
                    .position(|k| *k == (req.follower.as_str(), req.following.as_str()))
                    .expect("every edge is among the distinct ones");
                let (edge, created) = &written[i];
                let created = *created && std::mem::replace(&mut first[i], false);
                BatchedEdge {
                    edge: edge.clone(),
                    created,
                }
            })
            .collect())
    }

    /// Removes the edge and enqueues the purge of the followee's activities from the follower's feed.
    pub async fn unfollow(
        &self,
        principal: &Principal,
        follower: &str,
        following: &str,
    ) -> Result<()> {
        check_user_id("follower", follower)?;
        check_user_id("following", following)?;
        authorize(
            principal,
            follower,
            "only the follower (or a feeds:admin service) may unfollow",
        )?;
        self.store.unfollow(follower, following).await?;
        let edge = FollowEdge {
            follower: follower.to_owned(),
            following: following.to_owned(),
            created_at: Utc::now(),
        };
        self.queue.send(&edge_jobs(&edge, false)).await?;
        Ok(())
    }

    /// Stores the activity (or finds the one first stored with its `foreign_id`) and enqueues its
    /// fan-out; answers the stored activity and whether it is new.
    pub async fn post(&self, principal: &Principal, new: NewActivity) -> Result<(Activity, bool)> {
        let activity = new.into_activity(Utc::now())?;
        authorize(
            principal,
            &activity.actor,
            "only the actor (or a feeds:admin service) may post its activities",
        )?;
        let (stored, created) = self.store.put_activity(&activity).await?;
        // Fanned out or pulled: decided once, for a new activity; a repeat finds the record. Done
        // on a repeat too: the first attempt may have stored the activity and then failed.
        let delivered = async {
            let pulled = match created {
                true => self.pulls(&stored.actor).await?,
                false => self
                    .store
                    .get_pulled(&stored.actor, &stored.id)
                    .await?
                    .is_some(),
            };
            let mut jobs = vec![FanoutJob::recount(&stored.actor, Counted::Activities)];
            if pulled {
                self.store.put_pulled(&stored).await?;
                // In no timeline, so pushed to the connected followers by a job of its own.
                jobs.push(FanoutJob::PushPulled {
                    activity_id: stored.id.clone(),
                    actor: stored.actor.clone(),
                });
            } else {
                jobs.push(FanoutJob::Deliver {
                    activity_id: stored.id.clone(),
                    actor: stored.actor.clone(),
                    after: None,
                });
            }
            if !notify::recipients(&stored).is_empty() {
                jobs.push(FanoutJob::Notify {
                    activity_id: stored.id.clone(),
                    from: 0,
                });
            }
            self.queue.send(&jobs).await?;
            Ok::<bool, Error>(pulled)
        };
        let pulled = match delivered.await {
            Ok(pulled) => pulled,
            Err(e) => {
                if created {
                    // Undelivered, the activity must not stay: the client's retry stores it again.
                    if let Err(undo) = self.store.delete_activity(&stored).await {
                        tracing::error!(activity_id = %stored.id, error = %undo, "cannot undo an activity that was not delivered");
                    }
                }
                return Err(e);
            }
        };
        tracing::info!(activity_id = %stored.id, actor = %stored.actor, created, pulled, "activity posted");
        Ok((stored, created))
    }

    /// Whether what `actor` posts now is pulled: it is a pulled author, or has just become one by
    /// having more than the threshold's followers. Its followers are told (a chunked job) before
    /// it is marked, so that a retry after a failure tells them again.
    async fn pulls(&self, actor: &str) -> Result<bool> {
        if self.store.is_pulled_author(actor).await? {
            return Ok(true);
        }
        let threshold = self.pull_threshold;
        let some = self
            .store
            .followers(actor, None, threshold.saturating_add(1))
            .await?;
        if some.len() <= threshold {
            return Ok(false);
        }
        self.queue
            .send(&[FanoutJob::Adopt {
                author: actor.to_owned(),
                after: None,
            }])
            .await?;
        self.store.mark_pulled_author(actor).await?;
        tracing::info!(
            actor,
            followers_over = threshold,
            "actor became a pulled author"
        );
        Ok(true)
    }

    /// Changes the activity's `target` and `extra`, in the actor's feed at once, then enqueues the
    /// rewrite of its other copies; answers the updated activity.
    pub async fn update(
        &self,
        principal: &Principal,
        id: &str,
        patch: ActivityPatch,
    ) -> Result<Activity> {
        let changes = patch.check()?;
        let not_found = || Error::NotFound(format!("no activity {id}"));
        if !ActivityId::is_valid(id) {
            return Err(not_found());
        }
        // Each pass is one compare-and-set from the version read; a concurrent update makes it
        // read again and apply the changes to what that one left.
        for _ in 0..UPDATE_ATTEMPTS {
            let (current, version) = self.store.get_versioned(id).await?.ok_or_else(not_found)?;
            authorize(
                principal,
                &current.actor,
                "only the actor (or a feeds:admin service) may update its activities",
            )?;
            let updated = changes.apply(&current)?;
            if self.store.update_activity(&updated, version).await? {
                self.queue
                    .send(&[FanoutJob::Update {
                        activity_id: id.to_owned(),
                        after: None,
                    }])
                    .await?;
                tracing::info!(activity_id = %id, version = version + 1, "activity updated");
                return Ok(updated);
            }
        }
        Err(Error::Store(StoreError::Unavailable(format!(
            "activity {id} kept changing under concurrent updates; try again"
        ))))
    }

    /// Enqueues the erasure of `user`: everything of it leaves the store, asynchronously.
    pub async fn erase_user(&self, principal: &Principal, user: &str) -> Result<()> {
        check_user_id("user", user)?;
        authorize(
            principal,
            user,
            "only the user itself (or a feeds:admin service) may erase a user",
        )?;
        self.queue
            .send(&[FanoutJob::Erase {
                user: user.to_owned(),
                stage: EraseStage::Activities,
            }])
            .await?;
        tracing::info!(user, "user erasure enqueued");
        Ok(())
    }

    /// Enqueues the activity's removal from every feed, then deletes it.
    pub async fn delete(&self, principal: &Principal, id: &str) -> Result<()> {
        let not_found = || Error::NotFound(format!("no activity {id}"));
        if !ActivityId::is_valid(id) {
            return Err(not_found());
        }
        let activity = self.store.get_activity(id).await?.ok_or_else(not_found)?;
        authorize(
            principal,
            &activity.actor,
            "only the actor (or a feeds:admin service) may delete its activities",
        )?;
        // The removal first: if the delete then fails, the retry finds the activity and repeats both.
        self.queue
            .send(&FanoutJob::removal(&activity, self.chunk_size))
            .await?;
        self.store.delete_activity(&activity).await?;
        // Counted after the delete too: the count sent with the removal may run before it.
        self.queue
            .send(&[FanoutJob::recount(&activity.actor, Counted::Activities)])
            .await?;
        Ok(())
    }

    /// `owner`'s flat feed, newest first, after `from`. With pulled authors merged in, the feed
    /// ends at its `max_length` newest activities, counted along the walk (the timeline alone is
    /// trimmed on write).
    pub async fn flat(
        &self,
        owner: &str,
        from: Option<&FlatPosition>,
        limit: usize,
    ) -> Result<Vec<Activity>> {
        let before = from.map(|p| p.before.as_str());
        let left = self.max_length.saturating_sub(from.map_or(0, |p| p.served));
        let (rows, pulled) = tokio::try_join!(
            self.store.timeline(owner, range(before), limit),
            self.store.pulled_followees(owner)
        )?;
        if pulled.is_empty() {
            return Ok(rows);
        }
        // The pulled authors' activities merged in, each from its floor on.
        let reads = pulled.iter().map(|p| {
            let range = IdRange {
                before,
                not_before: p.floor.as_deref(),
            };
            self.store.pulled(&p.followee, range, limit)
        });
        let mut all = rows;
        for list in futures::future::try_join_all(reads).await? {
            all.extend(list);
        }
        all.sort_by(|a, b| b.id.cmp(&a.id));
        all.dedup_by(|a, b| a.id == b.id);
        all.truncate(limit.min(left));
        Ok(all)
    }

    /// `user`'s own activities, newest first, ids before `before`.
    pub async fn user_feed(
        &self,
        user: &str,
        before: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Activity>> {
        check_user_id("user", user)?;
        Ok(self.store.user_feed(user, range(before), limit).await?)
    }

    /// A page of `owner`'s aggregated feed from `from`, and where the next page starts.
    pub async fn aggregated(
        &self,
        owner: &str,
        from: Option<GroupPosition>,
        limit: usize,
    ) -> Result<(Vec<Box<RawValue>>, Option<GroupPosition>)> {
        let store = self.store.as_ref();
        let time = aggregate::scan_time;
        let (grouping, max) = (self.grouping, self.max_length);
        Ok(aggregate::page(store, owner, grouping, from.as_ref(), limit, max, time).await?)
    }

    /// A page of the principal's notification feed from `from`.
    pub async fn notifications(
        &self,
        owner: &str,
        from: Option<GroupPosition>,
        limit: usize,
    ) -> Result<notify::NotificationPage> {
        Ok(notify::page(self.store.as_ref(), owner, from.as_ref(), limit).await?)
    }

    /// Marks groups of `owner`'s notification feed seen (and read, when `read`); answers the
    /// counts after the change: (unseen, unread).
    pub async fn mark_notifications(
        &self,
        owner: &str,
        req: notify::MarkRequest,
        read: bool,
    ) -> Result<(usize, usize)> {
        let marked = req.into_marked()?;
        let before = self
            .store
            .notification_marks(&notify::feed_owner(owner))
            .await?;
        let after = notify::mark(self.store.as_ref(), owner, &marked, read).await?;
        if after != (before.unseen.len(), before.unread.len()) {
            // The mark is made and answered either way: its push is the one thing lost.
            let push = FanoutJob::PushCounts {
                user: owner.to_owned(),
            };
            if let Err(e) = self.queue.send(&[push]).await {
                tracing::warn!(user = owner, error = %e, "cannot enqueue the push of notification counts");
            }
        }
        Ok(after)
    }

    /// `user`'s counts: followers, following, own activities.
    pub async fn user_counts(&self, user: &str) -> Result<UserCounts> {
        check_user_id("user", user)?;
        Ok(self.store.user_counts(user).await?)
    }

    /// `user`'s followers, or the users `user` follows, ordered by id, after `after`.
    pub async fn relations(
        &self,
        side: Side,
        user: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Relation>> {
        check_user_id("user", user)?;
        Ok(match side {
            Side::Followers => self.store.followers(user, after, limit).await?,
            Side::Following => self.store.following(user, after, limit).await?,
        })
    }
}

/// Which side of a user's follow edges a list walks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Who follows the user.
    Followers,
    /// Whom the user follows.
    Following,
}

impl Side {
    /// The list's name in cursors and paths.
    pub fn name(self) -> &'static str {
        match self {
            Side::Followers => "followers",
            Side::Following => "following",
        }
    }
}

fn authorize(principal: &Principal, user: &str, refusal: &'static str) -> Result<()> {
    if principal.may_act_for(user) {
        Ok(())
    } else {
        Err(Error::Forbidden(refusal))
    }
}

fn range(before: Option<&str>) -> IdRange<'_> {
    IdRange {
        before,
        not_before: None,
    }
}
