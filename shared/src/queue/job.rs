//! The messages the fan-out queue carries: what the producers (the HTTP operations, the fan-out
//! itself) send, and what the fan-out worker runs.

use serde::{Deserialize, Serialize};

use crate::model::Activity;
use crate::notify;
use crate::store::Counted;

/// One message on the fan-out queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum FanoutJob {
    /// Copy activity `activity_id` of `actor` into the timelines of `actor`'s followers after `after`.
    Deliver {
        activity_id: String,
        actor: String,
        after: Option<String>,
    },
    /// Remove activity `activity_id` of `actor` from the timelines of `actor`'s followers after `after`.
    Retract {
        activity_id: String,
        actor: String,
        after: Option<String>,
    },
    /// Copy `followee`'s most recent activities into `follower`'s timeline.
    Backfill { follower: String, followee: String },
    /// Remove `followee`'s activities from `follower`'s timeline, scanning it from `before`.
    Purge {
        follower: String,
        followee: String,
        before: Option<String>,
    },
    /// `author` became a pulled author: its followers after `after` merge its pulled activities.
    Adopt {
        author: String,
        after: Option<String>,
    },
    /// Copy activity `activity_id` into the notification feeds of the users its `to` names (its
    /// actor excepted), from the `from`-th of them on.
    Notify {
        activity_id: String,
        #[serde(default)]
        from: usize,
    },
    /// Make `user`'s count of `what` exact again, unless a count begun after `asked_us` (when this
    /// was sent, microseconds since the epoch) did already.
    Recount {
        user: String,
        what: Counted,
        asked_us: i64,
    },
    /// Rewrite the copies of activity `activity_id` with its current content: in the timelines of
    /// its actor's followers after `after` and, for the first message (`after` null), its own
    /// copies and its recipients' notification feeds.
    Update {
        activity_id: String,
        after: Option<String>,
    },
    /// Erase `user`: its activities, then the edges from it, then the edges to it, then its own
    /// feeds; each message takes one chunk of its stage and enqueues what is left.
    Erase { user: String, stage: EraseStage },
    /// Remove activity `activity_id`, of notification group `group`, from the notification feeds
    /// of `users`.
    Unnotify {
        activity_id: String,
        group: String,
        users: Vec<String>,
    },
    /// Push the pulled activity `activity_id` of `actor` to the connected followers of `actor`
    /// (a pulled activity is in no timeline, so no delivery pushes it).
    PushPulled { activity_id: String, actor: String },
    /// Push `user`'s notification counts to its connections (they changed by a mark).
    PushCounts { user: String },
}

/// What an erasure has left to do, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EraseStage {
    Activities,
    Following,
    Followers,
    Feeds,
}

impl FanoutJob {
    /// What a change of the edge `follower` -> `followee` enqueues: its backfill (a follow) or
    /// purge (an unfollow), and the recounts of both ends.
    pub fn edge_changed(follower: &str, followee: &str, follow: bool) -> Vec<FanoutJob> {
        let (follower_id, followee_id) = (follower.to_owned(), followee.to_owned());
        let feed = if follow {
            FanoutJob::Backfill {
                follower: follower_id,
                followee: followee_id,
            }
        } else {
            FanoutJob::Purge {
                follower: follower_id,
                followee: followee_id,
                before: None,
            }
        };
        vec![
            feed,
            FanoutJob::recount(followee, Counted::Followers),
            FanoutJob::recount(follower, Counted::Following),
        ]
    }

    /// What removing `activity` from every feed takes: its retraction from its actor's followers,
    /// its removal from its recipients' notification feeds (`chunk` recipients a message), and
    /// the recount of its actor's activities.
    pub fn removal(activity: &Activity, chunk: usize) -> Vec<FanoutJob> {
        let mut jobs = vec![
            FanoutJob::recount(&activity.actor, Counted::Activities),
            FanoutJob::Retract {
                activity_id: activity.id.clone(),
                actor: activity.actor.clone(),
                after: None,
            },
        ];
        let recipients = notify::recipients(activity);
        for users in recipients.chunks(chunk.max(1)) {
            jobs.push(FanoutJob::Unnotify {
                activity_id: activity.id.clone(),
                group: notify::group_of(activity),
                users: users.to_vec(),
            });
        }
        jobs
    }

    /// The recount of `user`'s `what`, asked now.
    pub fn recount(user: &str, what: Counted) -> Self {
        FanoutJob::Recount {
            user: user.to_owned(),
            what,
            asked_us: chrono::Utc::now().timestamp_micros(),
        }
    }

    /// The job's kind, as its `kind` field names it.
    pub fn kind(&self) -> &'static str {
        match self {
            FanoutJob::Deliver { .. } => "deliver",
            FanoutJob::Retract { .. } => "retract",
            FanoutJob::Backfill { .. } => "backfill",
            FanoutJob::Purge { .. } => "purge",
            FanoutJob::Adopt { .. } => "adopt",
            FanoutJob::Notify { .. } => "notify",
            FanoutJob::Recount { .. } => "recount",
            FanoutJob::Update { .. } => "update",
            FanoutJob::Erase { .. } => "erase",
            FanoutJob::Unnotify { .. } => "unnotify",
            FanoutJob::PushPulled { .. } => "push_pulled",
            FanoutJob::PushCounts { .. } => "push_counts",
        }
    }

    /// The activity the job is about, when it is about one.
    pub fn activity_id(&self) -> Option<&str> {
        match self {
            FanoutJob::Deliver { activity_id, .. }
            | FanoutJob::Retract { activity_id, .. }
            | FanoutJob::Notify { activity_id, .. }
            | FanoutJob::Update { activity_id, .. }
            | FanoutJob::Unnotify { activity_id, .. }
            | FanoutJob::PushPulled { activity_id, .. } => Some(activity_id),
            _ => None,
        }
    }

    /// The message body the queue carries.
    pub fn encode(&self) -> String {
        serde_json::to_string(self).expect("a fan-out job serialises")
    }

    /// Parses a message body.
    pub fn decode(body: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_names_the_tag_a_job_is_encoded_with() {
        let jobs = [
            FanoutJob::Adopt {
                author: "a".into(),
                after: None,
            },
            FanoutJob::Erase {
                user: "u".into(),
                stage: EraseStage::Feeds,
            },
            FanoutJob::recount("u", Counted::Followers),
            FanoutJob::Unnotify {
                activity_id: "x".into(),
                group: "g".into(),
                users: vec![],
            },
        ];
        for job in jobs {
            let encoded: serde_json::Value = serde_json::from_str(&job.encode()).unwrap();
            assert_eq!(encoded["kind"], job.kind());
        }
    }
}
