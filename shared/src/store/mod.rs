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

/// One group of someone's aggregated feed: the feed is `(owner, feed)` (`feed` names the
/// grouping), the group a day (days since 1970-01-01, UTC) and a key within it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupRef {
    pub owner: String,
    pub feed: String,
    pub day: i32,
    pub key: String,
}

/// A pulled author someone follows, and the oldest of its pulled activities that person sees
/// (`None`: all of them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PulledFollowee {
    pub followee: String,
    pub floor: Option<String>,
}

/// An open realtime connection: its user, and the id its endpoint knows it by (API Gateway's
/// `connectionId`, or the standalone server's own).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Connection {
    pub user: String,
    pub id: String,
}

/// How long the records of a connection live unless written again: API Gateway closes a
/// WebSocket connection after two hours at most; the standalone server writes its own again
/// every hour. `etc/schema.cql` and `template.yaml` give the connection tables this default TTL.
pub const CONNECTION_TTL: std::time::Duration = std::time::Duration::from_secs(2 * 60 * 60);

/// Days of an aggregated feed, both ends included; `None` is unbounded.
#[derive(Debug, Clone, Copy, Default)]
pub struct DayRange {
    pub max: Option<i32>,
    pub min: Option<i32>,
}

/// A group as last computed from the timeline: its newest activity (which orders groups) and the
/// group's JSON as the API answers it.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupSummary {
    pub newest_id: String,
    pub json: String,
    /// The newest activity id of each of the group's actors, in the order of its `actors`, as a
    /// JSON array: what merging pulled activities into the group needs.
    pub actors_newest: String,
}

/// A stored group row. It is stale when something touched the group (`dirty_us`) after the scan
/// its summary was computed from started (`clean_us`), or when no scan computed it yet
/// (`clean_us` 0). A computed row without a summary is a group with no activity left.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredGroup {
    pub day: i32,
    pub key: String,
    pub summary: Option<GroupSummary>,
    pub clean_us: i64,
    pub dirty_us: i64,
}

impl StoredGroup {
    pub fn is_stale(&self) -> bool {
        self.clean_us == 0 || self.dirty_us > self.clean_us
    }
}

/// A recomputed group of one day: its summary, or `None` when it has no activity left.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupWrite {
    pub key: String,
    pub summary: Option<GroupSummary>,
}

/// What `GET /users/{user}` answers: exact once the work the changes enqueued has run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct UserCounts {
    pub followers: u64,
    pub following: u64,
    pub activities: u64,
}

/// One of a user's counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Counted {
    Followers,
    Following,
    Activities,
}

/// The groups of a notification feed that are unseen, and those unread (read implies seen, so
/// `unseen` is a subset of `unread`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NotificationMarks {
    pub unseen: std::collections::HashSet<String>,
    pub unread: std::collections::HashSet<String>,
}

/// One side of the follow edges as a store keeps them: `following`, the edge itself, and
/// `followers`, the copy the fan-out reads. A store with one row per edge has it on both sides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EdgeSide {
    Following,
    Followers,
}

impl EdgeSide {
    pub fn name(self) -> &'static str {
        match self {
            EdgeSide::Following => "following",
            EdgeSide::Followers => "followers",
        }
    }
}

/// How an edge's `followers` row stood against its `following` row, the edge itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EdgeCheck {
    /// They agree (always, in a store with one row per edge).
    InStep,
    /// The edge exists, and its `followers` row is missing or carries another time.
    FollowerRowMissing,
    /// A `followers` row of an edge that does not exist: never followed, or unfollowed.
    FollowerRowStray,
}

/// What [`Store::census`] counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Census {
    /// Users with a count above zero, as last counted.
    Users,
    /// Follow edges: the `following` side, unfollowed edges left out.
    Edges,
    /// Rows of the `followers` side: as many as the edges when both sides agree.
    FollowerRows,
    /// Stored activities.
    Activities,
}

/// One page of a scan of a whole table, and where the next page starts (`None`: the scan is over).
#[derive(Debug, Clone, PartialEq)]
pub struct ScanPage<T> {
    pub items: Vec<T>,
    pub next: Option<String>,
}

/// How far the clocks of two machines writing the same feed may disagree. A recomputed group is
/// stored as of its scan's start minus this, so that a mark from a machine whose clock is behind
/// still counts as later than the scan.
///
/// A feed marked more often than this rescans its newest day at each read (the scan cannot be
/// stored as current while a mark may be younger than the allowance): machines synchronised by
/// NTP or Amazon Time Sync disagree by milliseconds, so the allowance is a quarter second. A
/// recount skips only when a count began more than this after it was asked.
pub const CLOCK_SKEW_US: i64 = 250_000;

/// What a taker of `want` gets of an allowance of `limit` when the count, its own `want`
/// included, reads `used`: all of it under the limit, what is left of it at the limit, nothing
/// over it.
pub fn granted(want: u64, used: u64, limit: u64) -> u64 {
    want.saturating_sub(used.saturating_sub(limit))
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
    /// The activity and its version: 0 until its first update, one more at each.
    async fn get_versioned(&self, id: &str) -> Result<Option<(Activity, i64)>, StoreError>;
    /// Stores `activity`'s `target` and `extra` as version `version + 1`, if the stored activity
    /// exists and is still at `version`, and then its row in the actor's feed; answers whether it
    /// did (`false`: it changed or went meanwhile).
    async fn update_activity(&self, activity: &Activity, version: i64) -> Result<bool, StoreError>;
    /// Rewrites the copies of `activity` that belong to no reader: its row in the actor's feed
    /// and, when `pulled`, its pulled record.
    async fn rewrite_own_copies(&self, activity: &Activity, pulled: bool)
        -> Result<(), StoreError>;
    /// Removes what [`Store::rewrite_own_copies`] may have written back after the activity was
    /// deleted: its row in the actor's feed and its pulled record.
    async fn remove_own_copies(&self, activity: &Activity) -> Result<(), StoreError>;
    /// Rewrites timeline rows with their activity's `target` and `extra`. Meant for rows that
    /// exist; one removed meanwhile may come back whole (the caller checks after).
    async fn rewrite_timeline(&self, entries: &[TimelineEntry]) -> Result<(), StoreError>;
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
    /// The timeline rows among `rows` (`(owner, activity id)`) that exist.
    async fn timeline_entries(
        &self,
        rows: &[(String, String)],
    ) -> Result<Vec<TimelineEntry>, StoreError>;
    /// The id at `position` (0 = newest) of `owner`'s timeline, if it is that long.
    async fn timeline_id_at(
        &self,
        owner: &str,
        position: usize,
    ) -> Result<Option<String>, StoreError>;
    /// Removes every row of `owner`'s timeline whose id is `through` or older.
    async fn trim_timeline(&self, owner: &str, through: &str) -> Result<(), StoreError>;

    /// Records that the groups changed at `at_us` (microseconds since the epoch); a group keeps
    /// its latest mark, and a group without a row gets one, with no summary.
    async fn mark_groups(&self, groups: &[GroupRef], at_us: i64) -> Result<(), StoreError>;
    /// Group rows of the feed `(owner, feed)` in `days`, newest day first, at most `limit`.
    async fn groups(
        &self,
        owner: &str,
        feed: &str,
        days: DayRange,
        limit: usize,
    ) -> Result<Vec<StoredGroup>, StoreError>;
    /// Removes the feed's groups of the days before `day`, as of `at_us`: a later mark survives.
    async fn drop_groups(
        &self,
        owner: &str,
        feed: &str,
        day: i32,
        at_us: i64,
    ) -> Result<(), StoreError>;
    /// Stores groups of `day` recomputed from a timeline scan that started at `as_of_us`: each
    /// replaces the row only if the row's summary comes from an earlier scan, and a mark later
    /// than `as_of_us` survives, so the group stays stale. `None` empties the group (its row
    /// stays, so that an earlier scan's summary cannot come back over it).
    async fn put_groups(
        &self,
        owner: &str,
        feed: &str,
        day: i32,
        writes: &[GroupWrite],
        as_of_us: i64,
    ) -> Result<(), StoreError>;

    /// Whether `actor` is a pulled author: marked once, for good.
    async fn is_pulled_author(&self, actor: &str) -> Result<bool, StoreError>;
    async fn mark_pulled_author(&self, actor: &str) -> Result<(), StoreError>;
    /// Forgets that `actor` is a pulled author: only when the user is erased.
    async fn unmark_pulled_author(&self, actor: &str) -> Result<(), StoreError>;
    /// Records `activity` as pulled: merged into its actor's followers' feeds when they read.
    async fn put_pulled(&self, activity: &Activity) -> Result<(), StoreError>;
    /// The pulled activity `id` of `actor`, if it is one.
    async fn get_pulled(&self, actor: &str, id: &str) -> Result<Option<Activity>, StoreError>;
    async fn delete_pulled(&self, actor: &str, id: &str) -> Result<(), StoreError>;
    /// `actor`'s pulled activities, newest first.
    async fn pulled(
        &self,
        actor: &str,
        range: IdRange<'_>,
        limit: usize,
    ) -> Result<Vec<Activity>, StoreError>;
    /// `user` sees `followee`'s pulled activities from `floor` on (all when `None`).
    async fn put_pulled_followee(
        &self,
        user: &str,
        followee: &str,
        floor: Option<&str>,
    ) -> Result<(), StoreError>;
    async fn delete_pulled_followee(&self, user: &str, followee: &str) -> Result<(), StoreError>;
    /// The pulled authors `user` follows.
    async fn pulled_followees(&self, user: &str) -> Result<Vec<PulledFollowee>, StoreError>;

    /// `user`'s counts as last computed (zeros for a user nobody has seen).
    async fn user_counts(&self, user: &str) -> Result<UserCounts, StoreError>;
    /// Makes `user`'s count of `what` exact again, from its rows, unless a count that began after
    /// `asked_us` did already. A store that keeps its counts exact as it writes does nothing.
    async fn recount(&self, user: &str, what: Counted, asked_us: i64) -> Result<(), StoreError>;

    /// Takes up to `want` of `principal`'s `class` allowance in `minute` (minutes since 1970),
    /// whose limit is `limit`, and answers how much it got: 0 when none is left. However many
    /// processes take at once, no more than `limit` is granted in a minute.
    async fn take_allowance(
        &self,
        principal: &str,
        class: &str,
        minute: i64,
        want: u64,
        limit: u64,
    ) -> Result<u64, StoreError>;

    /// Which groups of the notification feed `owner` are unseen and unread.
    async fn notification_marks(&self, owner: &str) -> Result<NotificationMarks, StoreError>;
    /// Makes `keys` unseen and unread as of `at_us`: a removal with a later time wins over it, one
    /// with an earlier time loses.
    async fn add_notification_marks(
        &self,
        owner: &str,
        keys: &[String],
        at_us: i64,
    ) -> Result<(), StoreError>;
    /// Forgets the notification marks of `owner` made up to `at_us`: the user is erased.
    async fn erase_notification_marks(&self, owner: &str, at_us: i64) -> Result<(), StoreError>;
    /// Makes `keys` (every group when `None`) seen, and read too when `read`, as of `at_us`.
    async fn remove_notification_marks(
        &self,
        owner: &str,
        keys: Option<&[String]>,
        read: bool,
        at_us: i64,
    ) -> Result<(), StoreError>;

    // The operator's tools (`feeds-server admin`): scans of whole tables, a page at a time.

    /// One page of a whole side of the follow edges, as `(follower, followee)` in the table's
    /// order, from `from` (a [`ScanPage::next`]) on; about `page` rows (a page may hold fewer and
    /// still not be the last). Cassandra's `following` side includes the rows of unfollowed edges.
    async fn scan_edges(
        &self,
        side: EdgeSide,
        from: Option<&str>,
        page: usize,
    ) -> Result<ScanPage<(String, String)>, StoreError>;
    /// How the `followers` row of `follower -> followee` stands against the edge, read in that
    /// order (a `followers` row is never written before its edge, so one found without its edge
    /// is not a follow in progress); with `repair`, writes or deletes the row as `follow` and
    /// `unfollow` do, with their times, so that a follow or unfollow racing it still wins.
    async fn check_edge(
        &self,
        follower: &str,
        followee: &str,
        repair: bool,
    ) -> Result<EdgeCheck, StoreError>;
    /// One page of every stored activity, in the table's order, from `from` on.
    async fn scan_activities(
        &self,
        from: Option<&str>,
        page: usize,
    ) -> Result<ScanPage<Activity>, StoreError>;
    /// How many of `what` one page of a scan holds, and where the next page starts (a store that
    /// counts in one query answers the whole count and no next page).
    async fn census(
        &self,
        what: Census,
        from: Option<&str>,
        page: usize,
    ) -> Result<(u64, Option<String>), StoreError>;

    /// Records `connection` under its user, and its user under its id, for [`CONNECTION_TTL`].
    async fn put_connection(&self, connection: &Connection) -> Result<(), StoreError>;
    /// Forgets both records of `connection`.
    async fn delete_connection(&self, connection: &Connection) -> Result<(), StoreError>;
    /// The user of connection `id`, while it is recorded.
    async fn connection_user(&self, id: &str) -> Result<Option<String>, StoreError>;
    /// The recorded connections of `users`.
    async fn connections(&self, users: &[String]) -> Result<Vec<Connection>, StoreError>;
    /// Records `connections`, of followers of the pulled author `author`, under it for
    /// [`CONNECTION_TTL`].
    async fn put_pulled_connections(
        &self,
        author: &str,
        connections: &[Connection],
    ) -> Result<(), StoreError>;
    async fn delete_pulled_connections(
        &self,
        author: &str,
        connections: &[Connection],
    ) -> Result<(), StoreError>;
    /// The connections recorded under the pulled author `author`.
    async fn pulled_connections(&self, author: &str) -> Result<Vec<Connection>, StoreError>;
}
