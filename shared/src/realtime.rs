//! Realtime events: what the fan-out tells the principals connected to a realtime endpoint when
//! their feeds change. The fan-out publishes to an [`Events`] sink when it has one (the
//! standalone server's WebSocket hub); publishing never waits and never fails a fan-out job.

use serde::Serialize;

use crate::model::Activity;
use crate::notify;

/// Which of a principal's feeds changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Feed {
    Flat,
    Notification,
}

/// One event for one user, as the realtime contract words its messages.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Message {
    Activity { feed: Feed, activity: Activity },
    Removed { feed: Feed, id: String },
    Counts { unseen: usize, unread: usize },
}

/// Where the fan-out sends events.
pub trait Events: Send + Sync + 'static {
    /// Whether `user` is listening: the fan-out skips the work of an event nobody receives.
    fn listening(&self, user: &str) -> bool;
    /// Hands `message` to `user`'s connections, without waiting.
    fn publish(&self, user: &str, message: &Message);
}

/// The user and feed a timeline key belongs to: `<user>` is a flat feed, `<user>#notifications`
/// a notification feed.
pub fn feed_of(owner: &str) -> (&str, Feed) {
    match notify::user_of_feed(owner) {
        Some(user) => (user, Feed::Notification),
        None => (owner, Feed::Flat),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_worded_as_the_contract_says() {
        let removed = Message::Removed {
            feed: Feed::Notification,
            id: "a1".into(),
        };
        assert_eq!(
            serde_json::to_value(&removed).unwrap(),
            serde_json::json!({"type": "removed", "feed": "notification", "id": "a1"})
        );
        let counts = Message::Counts {
            unseen: 1,
            unread: 2,
        };
        assert_eq!(
            serde_json::to_value(&counts).unwrap(),
            serde_json::json!({"type": "counts", "unseen": 1, "unread": 2})
        );
        assert_eq!(feed_of("usr_1"), ("usr_1", Feed::Flat));
        assert_eq!(
            feed_of(&notify::feed_owner("usr_1")),
            ("usr_1", Feed::Notification)
        );
    }
}
