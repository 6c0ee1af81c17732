//! The store: one interface, implemented by Cassandra / Amazon Keyspaces and by SQLite.

use async_trait::async_trait;

use crate::model::{Activity, FollowEdge, Relation};

#[cfg(feature = "aws")]
pub mod cassandra;
pub mod sqlite;

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be reached or timed out: the request may be retried later (`503`).
    #[error("{0}")]
    Unavailable(String),
    /// Anything else (`500`).
    #[error("{0}")]
    Internal(String),
}

/// A slice of a timeline, newest first: ids `< before` (when given) and `>= not_before` (when given).
#[derive(Debug, Clone, Copy, Default)]
pub struct IdRange<'a> {
    pub before: Option<&'a str>,
    pub not_before: Option<&'a str>,
}

/// One row of someone's timeline (flat feed).
#[derive(Debug, Clone, PartialEq)]
pub struct TimelineEntry {
    pub owner: String,
    pub activity: Activity,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// A cheap query that proves the store answers.
    async fn health(&self) -> Result<(), StoreError>;

    /// Adds the edge; answers the stored edge and whether it is new (an existing edge keeps its
    /// original `created_at`).
    async fn follow(&self, edge: &FollowEdge) -> Result<(FollowEdge, bool), StoreError>;
    async fn unfollow(&self, follower: &str, following: &str) -> Result<(), StoreError>;
    async fn is_following(&self, follower: &str, following: &str) -> Result<bool, StoreError>;
    /// Followers of `user` ordered by id, after `after`.
    async fn followers(
        &self,
        user: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Relation>, StoreError>;
    /// Users `user` follows, ordered by id, after `after`.
    async fn following(
        &self,
        user: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Relation>, StoreError>;

    /// Stores a new activity (and its row in the actor's own feed) unless the actor already has one
    /// with the same `foreign_id`: answers the stored activity and whether it is new.
    async fn put_activity(&self, activity: &Activity) -> Result<(Activity, bool), StoreError>;
    async fn get_activity(&self, id: &str) -> Result<Option<Activity>, StoreError>;
    /// Removes the activity, its row in the actor's feed and its `foreign_id`; timelines are the
    /// fan-out's job.
    async fn delete_activity(&self, activity: &Activity) -> Result<(), StoreError>;
    /// The actor's own activities, newest first.
    async fn user_feed(
        &self,
        actor: &str,
        range: IdRange<'_>,
        limit: usize,
    ) -> Result<Vec<Activity>, StoreError>;

    /// Someone's timeline, newest first.
    async fn timeline(
        &self,
        owner: &str,
        range: IdRange<'_>,
        limit: usize,
    ) -> Result<Vec<Activity>, StoreError>;
    /// Writes timeline rows; writing a row that exists changes nothing.
    async fn insert_timeline(&self, entries: &[TimelineEntry]) -> Result<(), StoreError>;
    /// Removes `(owner, activity id)` rows; removing a missing row changes nothing.
    async fn delete_timeline(&self, rows: &[(String, String)]) -> Result<(), StoreError>;
}
