//! Realtime events: what the fan-out tells the principals connected to a realtime endpoint when
//! their feeds change, and the records of who is connected.
//!
//! Whoever accepts a connection records it in the store ([`connect`]): API Gateway's `$connect`
//! (the `realtime` function) or the standalone server. The fan-out looks the recipients of each
//! change up there and hands the messages to a [`Transport`]: API Gateway's Management API
//! ([`apigw`], feature `apigw`) or the standalone server's hub. A pulled author's activities are
//! in no follower's timeline, so its followers' connections are also recorded under it, when
//! they connect and when they start following it: a push never reads a follower list. Pushing
//! never fails a fan-out job: errors are logged, and a connection that is gone is forgotten.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use futures::StreamExt;
use serde::Serialize;

use crate::model::Activity;
use crate::notify;
use crate::store::{Connection, Store, StoreError};

#[cfg(feature = "apigw")]
pub mod apigw;

/// Connections sent to at once; one connection's messages go in order.
const SENDS_IN_FLIGHT: usize = 32;

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

impl Message {
    /// `activity` arrived in `feed`, or left it when `removed`.
    pub fn changed(feed: Feed, activity: &Activity, removed: bool) -> Self {
        match removed {
            false => Message::Activity {
                feed,
                activity: activity.clone(),
            },
            true => Message::Removed {
                feed,
                id: activity.id.clone(),
            },
        }
    }
}

/// What became of a message handed to a [`Transport`] for one connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sent {
    Delivered,
    /// Closed for good (API Gateway answers 410 Gone): the connection's records are deleted.
    Gone,
    /// Held by another process (standalone servers sharing a store): neither this transport's to
    /// send to nor to forget.
    Elsewhere,
    /// Anything else: logged, the connection kept.
    Failed(String),
}

/// How messages reach connections.
#[async_trait]
pub trait Transport: Send + Sync + 'static {
    /// True when no connection can be reached through this transport now: publishing then skips
    /// its look-ups.
    fn idle(&self) -> bool {
        false
    }
    /// Hands `text` to connection `id`.
    async fn send(&self, id: &str, text: &str) -> Sent;
}

/// Records a new connection: under its user, then under each pulled author the user follows.
/// Recorded first, so that a follow of a pulled author racing this one finds it
/// ([`Realtime::pulled_followed`]); the pulled authors are read again afterwards, so that an
/// unfollow whose purge missed the new record does not leave it behind.
pub async fn connect(store: &dyn Store, connection: &Connection) -> Result<(), StoreError> {
    store.put_connection(connection).await?;
    let one = std::slice::from_ref(connection);
    let authors = pulled_authors(store, &connection.user).await?;
    let puts = authors.iter().map(|a| store.put_pulled_connections(a, one));
    futures::future::try_join_all(puts).await?;
    let still = pulled_authors(store, &connection.user).await?;
    let gone = authors.iter().filter(|a| !still.contains(a));
    futures::future::try_join_all(gone.map(|a| store.delete_pulled_connections(a, one))).await?;
    Ok(())
}

/// Forgets connection `id` (closed): answers its user, if it was recorded.
pub async fn disconnect(store: &dyn Store, id: &str) -> Result<Option<String>, StoreError> {
    let Some(user) = store.connection_user(id).await? else {
        return Ok(None);
    };
    let connection = Connection {
        user,
        id: id.to_owned(),
    };
    forget(store, &connection).await?;
    Ok(Some(connection.user))
}

/// Deletes every record of `connection`.
async fn forget(store: &dyn Store, connection: &Connection) -> Result<(), StoreError> {
    let one = std::slice::from_ref(connection);
    let authors = pulled_authors(store, &connection.user).await?;
    let deletes = authors
        .iter()
        .map(|a| store.delete_pulled_connections(a, one));
    futures::future::try_join_all(deletes).await?;
    store.delete_connection(connection).await
}

async fn pulled_authors(store: &dyn Store, user: &str) -> Result<Vec<String>, StoreError> {
    let followees = store.pulled_followees(user).await?;
    Ok(followees.into_iter().map(|p| p.followee).collect())
}

/// Pushes messages to the connections recorded in a store, through a transport.
#[derive(Clone)]
pub struct Realtime {
    store: Arc<dyn Store>,
    transport: Arc<dyn Transport>,
}

impl Realtime {
    pub fn new(store: Arc<dyn Store>, transport: Arc<dyn Transport>) -> Self {
        Realtime { store, transport }
    }

    /// The connections of `users`: none when the transport is idle, or when the look-up fails
    /// (logged).
    pub async fn connections(&self, users: &[String]) -> Vec<Connection> {
        if users.is_empty() || self.transport.idle() {
            return Vec::new();
        }
        match self.store.connections(users).await {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(error = %e, "cannot look realtime connections up: nothing pushed");
                Vec::new()
            }
        }
    }

    /// Sends each `(user, message)` to that user's connections among `to`, in order.
    pub async fn send(&self, to: &[Connection], messages: &[(String, Message)]) {
        if to.is_empty() {
            return;
        }
        let mut texts: HashMap<&str, Vec<Arc<str>>> = HashMap::new();
        for (user, message) in messages {
            if let Some(text) = encode(message) {
                texts.entry(user.as_str()).or_default().push(text);
            }
        }
        let plan = to
            .iter()
            .filter_map(|c| texts.get(c.user.as_str()).map(|t| (c, t.as_slice())));
        self.deliver(plan).await;
    }

    /// Sends `message` to the connected followers of the pulled author `author`.
    pub async fn publish_pulled(&self, author: &str, message: &Message) {
        if self.transport.idle() {
            return;
        }
        let to = match self.store.pulled_connections(author).await {
            Ok(to) => to,
            Err(e) => {
                tracing::warn!(author, error = %e, "cannot look a pulled author's connections up: nothing pushed");
                return;
            }
        };
        let Some(text) = encode(message) else { return };
        let text = [text];
        self.deliver(to.iter().map(|c| (c, &text[..]))).await;
    }

    /// `followers` now see the pulled author `author`'s activities: their connections are
    /// recorded under it. After the follow's own record: a connection made meanwhile is found
    /// here or finds that record ([`connect`]).
    pub async fn pulled_followed(
        &self,
        author: &str,
        followers: &[String],
    ) -> Result<(), StoreError> {
        let connections = self.store.connections(followers).await?;
        if connections.is_empty() {
            return Ok(());
        }
        self.store
            .put_pulled_connections(author, &connections)
            .await
    }

    /// `follower` no longer sees the pulled author `author`'s activities.
    pub async fn pulled_unfollowed(&self, author: &str, follower: &str) -> Result<(), StoreError> {
        let connections = self.store.connections(&[follower.to_owned()]).await?;
        if connections.is_empty() {
            return Ok(());
        }
        self.store
            .delete_pulled_connections(author, &connections)
            .await
    }

    /// Sends each connection its texts, in order, connections concurrently; forgets a connection
    /// that is gone.
    async fn deliver<'a>(&self, plan: impl Iterator<Item = (&'a Connection, &'a [Arc<str>])>) {
        futures::stream::iter(plan)
            .for_each_concurrent(SENDS_IN_FLIGHT, |(connection, texts)| async move {
                for text in texts {
                    match self.transport.send(&connection.id, text).await {
                        Sent::Delivered | Sent::Elsewhere => {}
                        Sent::Gone => {
                            tracing::info!(user = %connection.user, connection = %connection.id, "realtime connection gone: forgetting it");
                            if let Err(e) = forget(self.store.as_ref(), connection).await {
                                tracing::warn!(connection = %connection.id, error = %e, "cannot forget a gone realtime connection");
                            }
                            return;
                        }
                        Sent::Failed(why) => {
                            tracing::warn!(user = %connection.user, connection = %connection.id, error = %why, "realtime message not delivered");
                        }
                    }
                }
            })
            .await;
    }
}

/// The users `connections` belong to, each once.
pub fn users_of(connections: &[Connection]) -> Vec<&str> {
    let mut users: Vec<&str> = connections.iter().map(|c| c.user.as_str()).collect();
    users.sort_unstable();
    users.dedup();
    users
}

fn encode(message: &Message) -> Option<Arc<str>> {
    match serde_json::to_string(message) {
        Ok(text) => Some(text.into()),
        Err(e) => {
            tracing::error!(error = %e, "cannot encode a realtime message");
            None
        }
    }
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
