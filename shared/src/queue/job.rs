//! The messages the fan-out queue carries: what the producers (the HTTP operations, the fan-out
//! itself) send, and what the fan-out worker runs.

use serde::{Deserialize, Serialize};

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
    /// Remove activity `activity_id`, of notification group `group`, from the notification feeds
    /// of `users`.
    Unnotify {
        activity_id: String,
        group: String,
        users: Vec<String>,
    },
}

impl FanoutJob {
    /// The recount of `user`'s `what`, asked now.
    pub fn recount(user: &str, what: Counted) -> Self {
        FanoutJob::Recount {
            user: user.to_owned(),
            what,
            asked_us: chrono::Utc::now().timestamp_micros(),
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
