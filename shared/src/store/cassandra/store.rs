//! The store itself: every statement prepared once, paging, the two lightweight-transaction
//! protocols (follow edges, foreign ids) and [`Store`] on top of them.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::{StreamExt, TryStreamExt};
use scylla::client::session::Session;
use scylla::deserialize::row::DeserializeRow;
use scylla::response::query_result::{QueryResult, QueryRowsResult};
use scylla::response::{PagingState, PagingStateResponse};
use scylla::serialize::row::SerializeRow;
use scylla::statement::prepared::PreparedStatement;
use scylla::value::Row;

use super::errors::store_error;
use super::rows::{
    activity_values, rewrite_values, ActivityRow, ActivityValues, AppliedRow, CasRow,
    ConnectionRow, CountsRow, CreatedRow, EdgeCasRow, EdgeState, FolloweeRow, FollowerRow,
    ForeignIdCasRow, ForeignIdRow, GroupRow, IdRow, MarksRow, PulledFolloweeRow, SwapCasRow,
    UserRow, VersionedRow, ACTIVITY_COLUMNS,
};
use super::session::LiveSession;
use super::tally::Tally;
use super::CassandraConfig;
use crate::model::{from_micros, Activity, FollowEdge, Relation};
use crate::store::{
    Census, Connection, Counted, DayRange, EdgeCheck, EdgeSide, GroupRef, GroupWrite, IdRange,
    NotificationMarks, PulledFollowee, ScanPage, Store, StoreError, StoredGroup, TimelineEntry,
    UserCounts, CONNECTION_TTL,
};

/// How many rows or writes are in flight at once for one `insert_timeline` / `delete_timeline`.
const WRITE_CONCURRENCY: usize = 64;

/// How often a contended lightweight transaction (a mapping that changes under us) is retried.
const CAS_ATTEMPTS: usize = 3;

/// Rounds of a follow or unfollow against concurrent changes of the same edge (each round is one
/// lightweight transaction), with a short random pause before each retry.
const EDGE_ATTEMPTS: u32 = 12;

async fn edge_backoff(attempt: u32) {
    if attempt > 0 {
        let ceiling_us = 2_000 * u64::from(attempt.min(6));
        let pause = rand::random_range(0..ceiling_us);
        tokio::time::sleep(Duration::from_micros(pause)).await;
    }
}

/// Values an `IN` list may hold on Amazon Keyspaces.
const IN_VALUES: usize = 100;

/// Partitions a pulled author's connections are spread over (`pulled_connections.bucket`).
const CONNECTION_BUCKETS: i32 = 16;

/// The bucket of `user`'s rows in `pulled_connections`: the same on every machine and release.
fn connection_bucket(user: &str) -> i32 {
    use sha2::Digest;
    i32::from(sha2::Sha256::digest(user.as_bytes())[0]) % CONNECTION_BUCKETS
}

/// Ids are 32 lowercase hex digits: every id sorts after "" and before "g".
const ID_FLOOR: &str = "";
const ID_CEILING: &str = "g";

/// The outcome of a lightweight transaction.
enum Cas<R> {
    Applied,
    /// Not applied, with the row that made it fail when the server sent it back in the expected
    /// shape (Cassandra and ScyllaDB do; other servers may send `[applied]` alone).
    Rejected(Option<R>),
}

/// Every statement, prepared once.
struct Statements {
    health: PreparedStatement,
    edge_claim: PreparedStatement,
    edge_get: PreparedStatement,
    edge_swap: PreparedStatement,
    followers_page: PreparedStatement,
    follower_row_insert: PreparedStatement,
    follower_row_delete: PreparedStatement,
    following_page: PreparedStatement,
    foreign_id_claim: PreparedStatement,
    foreign_id_get: PreparedStatement,
    foreign_id_take_over: PreparedStatement,
    foreign_id_release: PreparedStatement,
    activity_insert: PreparedStatement,
    activity_get: PreparedStatement,
    activity_delete: PreparedStatement,
    user_activity_insert: PreparedStatement,
    user_activity_delete: PreparedStatement,
    user_feed_page: PreparedStatement,
    timeline_insert: PreparedStatement,
    timeline_delete: PreparedStatement,
    timeline_page: PreparedStatement,
    timeline_get: PreparedStatement,
    timeline_ids: PreparedStatement,
    timeline_trim: PreparedStatement,
    group_mark: PreparedStatement,
    groups_page: PreparedStatement,
    group_put: PreparedStatement,
    groups_drop: PreparedStatement,
    pulled_author_get: PreparedStatement,
    pulled_author_mark: PreparedStatement,
    pulled_insert: PreparedStatement,
    pulled_get: PreparedStatement,
    pulled_delete: PreparedStatement,
    pulled_page: PreparedStatement,
    pulled_followee_put: PreparedStatement,
    pulled_followee_delete: PreparedStatement,
    pulled_followees: PreparedStatement,
    marks_get: PreparedStatement,
    marks_add: PreparedStatement,
    unseen_remove: PreparedStatement,
    marks_remove: PreparedStatement,
    unseen_clear: PreparedStatement,
    marks_clear: PreparedStatement,
    counts_get: PreparedStatement,
    followers_set: PreparedStatement,
    following_set: PreparedStatement,
    activities_set: PreparedStatement,
    followers_all: PreparedStatement,
    following_all: PreparedStatement,
    activities_all: PreparedStatement,
    allowance_add: PreparedStatement,
    allowance_get: PreparedStatement,
    allowance_old: PreparedStatement,
    activity_get_versioned: PreparedStatement,
    activity_update: PreparedStatement,
    pulled_author_unmark: PreparedStatement,
    connection_put: PreparedStatement,
    connection_user_put: PreparedStatement,
    connection_delete: PreparedStatement,
    connection_user_delete: PreparedStatement,
    connection_user_get: PreparedStatement,
    connections_of: PreparedStatement,
    pulled_connection_put: PreparedStatement,
    pulled_connection_delete: PreparedStatement,
    pulled_connections_of: PreparedStatement,
}

/// The statements of the operator's tools (whole-table scans, an edge's `followers` row),
/// prepared on first use: a function's cold start never prepares them.
struct ScanStatements {
    following: PreparedStatement,
    followers: PreparedStatement,
    activities: PreparedStatement,
    activity_ids: PreparedStatement,
    counts: PreparedStatement,
    follower_row: PreparedStatement,
}

pub struct CassandraStore {
    session: LiveSession,
    st: Statements,
    keyspace: String,
    scans: tokio::sync::OnceCell<ScanStatements>,
    /// A foreign-id mapping whose activity is missing is taken over only when it is older than
    /// this: younger, the request that claimed it may still be writing the activity.
    claim_grace: Duration,
    /// Counts what each statement would cost on Amazon Keyspaces, when set.
    tally: Option<Arc<Tally>>,
}

impl CassandraStore {
    /// Prepares every statement against the tables of `cfg.keyspace` (run
    /// [`migrate`](fn@super::migrate) first).
    pub async fn new(session: Arc<Session>, cfg: &CassandraConfig) -> Result<Self, StoreError> {
        let ks = cfg.checked_keyspace()?;
        let ttl = CONNECTION_TTL.as_secs();
        let s = session.as_ref();
        // Idempotent statements may be retried by the driver (e.g. on a connection that died while
        // a Lambda was frozen); lightweight transactions may not.
        let st = tokio::try_join!(
            prepare(s, "SELECT release_version FROM system.local WHERE key = 'local'".to_owned(), true),
            prepare(s, format!("INSERT INTO {ks}.following (user, followee, created_us) VALUES (?, ?, ?) IF NOT EXISTS"), false),
            prepare(s, format!("SELECT created_us FROM {ks}.following WHERE user = ? AND followee = ?"), true),
            prepare(s, format!("UPDATE {ks}.following SET created_us = ? WHERE user = ? AND followee = ? IF created_us = ?"), false),
            prepare(s, format!("SELECT follower, created_us FROM {ks}.followers WHERE user = ? AND follower > ? LIMIT ?"), true),
            prepare(s, format!("INSERT INTO {ks}.followers (user, follower, created_us) VALUES (?, ?, ?) USING TIMESTAMP ?"), true),
            prepare(s, format!("DELETE FROM {ks}.followers USING TIMESTAMP ? WHERE user = ? AND follower = ?"), true),
            prepare(s, format!("SELECT followee, created_us FROM {ks}.following WHERE user = ? AND followee > ? LIMIT ?"), true),
            prepare(s, format!("INSERT INTO {ks}.activity_foreign_ids (actor, foreign_id, id, claimed_us) VALUES (?, ?, ?, ?) IF NOT EXISTS"), false),
            prepare(s, format!("SELECT id, claimed_us FROM {ks}.activity_foreign_ids WHERE actor = ? AND foreign_id = ?"), true),
            prepare(s, format!("UPDATE {ks}.activity_foreign_ids SET id = ?, claimed_us = ? WHERE actor = ? AND foreign_id = ? IF id = ?"), false),
            prepare(s, format!("DELETE FROM {ks}.activity_foreign_ids WHERE actor = ? AND foreign_id = ? IF id = ?"), false),
            prepare(s, format!("INSERT INTO {ks}.activities ({ACTIVITY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"), true),
            prepare(s, format!("SELECT {ACTIVITY_COLUMNS} FROM {ks}.activities WHERE id = ?"), true),
            // A lightweight transaction, as updates are: an update racing the delete then either
            // comes first or finds no row, and never leaves part of one behind.
            prepare(s, format!("DELETE FROM {ks}.activities WHERE id = ? IF EXISTS"), false),
            prepare(s, format!("INSERT INTO {ks}.user_activities ({ACTIVITY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"), true),
            prepare(s, format!("DELETE FROM {ks}.user_activities WHERE actor = ? AND id = ?"), true),
            prepare(s, format!("SELECT {ACTIVITY_COLUMNS} FROM {ks}.user_activities WHERE actor = ? AND id < ? AND id >= ? LIMIT ?"), true),
            prepare(s, format!("INSERT INTO {ks}.timeline (owner, {ACTIVITY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"), true),
            prepare(s, format!("DELETE FROM {ks}.timeline WHERE owner = ? AND id = ?"), true),
            prepare(s, format!("SELECT {ACTIVITY_COLUMNS} FROM {ks}.timeline WHERE owner = ? AND id < ? AND id >= ? LIMIT ?"), true),
            prepare(s, format!("SELECT {ACTIVITY_COLUMNS} FROM {ks}.timeline WHERE owner = ? AND id = ?"), true),
            prepare(s, format!("SELECT id FROM {ks}.timeline WHERE owner = ? LIMIT ?"), true),
            prepare(s, format!("DELETE FROM {ks}.timeline WHERE owner = ? AND id <= ?"), true),
            prepare(s, format!("UPDATE {ks}.feed_groups USING TIMESTAMP ? SET dirty_us = ? WHERE owner = ? AND feed = ? AND day = ? AND group_key = ?"), true),
            prepare(s, format!("SELECT day, group_key, newest_id, json, clean_us, dirty_us, actors_newest FROM {ks}.feed_groups WHERE owner = ? AND feed = ? AND day <= ? AND day >= ? LIMIT ?"), true),
            prepare(s, format!("UPDATE {ks}.feed_groups USING TIMESTAMP ? SET newest_id = ?, json = ?, actors_newest = ?, clean_us = ? WHERE owner = ? AND feed = ? AND day = ? AND group_key = ?"), true),
            prepare(s, format!("DELETE FROM {ks}.feed_groups USING TIMESTAMP ? WHERE owner = ? AND feed = ? AND day < ?"), true),
            prepare(s, format!("SELECT actor FROM {ks}.pulled_authors WHERE actor = ?"), true),
            prepare(s, format!("INSERT INTO {ks}.pulled_authors (actor, marked_us) VALUES (?, ?)"), true),
            prepare(s, format!("INSERT INTO {ks}.pulled_activities ({ACTIVITY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"), true),
            prepare(s, format!("SELECT {ACTIVITY_COLUMNS} FROM {ks}.pulled_activities WHERE actor = ? AND id = ?"), true),
            prepare(s, format!("DELETE FROM {ks}.pulled_activities WHERE actor = ? AND id = ?"), true),
            prepare(s, format!("SELECT {ACTIVITY_COLUMNS} FROM {ks}.pulled_activities WHERE actor = ? AND id < ? AND id >= ? LIMIT ?"), true),
            prepare(s, format!("INSERT INTO {ks}.pulled_followees (user, followee, floor) VALUES (?, ?, ?)"), true),
            prepare(s, format!("DELETE FROM {ks}.pulled_followees WHERE user = ? AND followee = ?"), true),
            prepare(s, format!("SELECT followee, floor FROM {ks}.pulled_followees WHERE user = ?"), true),
            prepare(s, format!("SELECT unseen, unread FROM {ks}.notification_marks WHERE owner = ?"), true),
            prepare(s, format!("UPDATE {ks}.notification_marks USING TIMESTAMP ? SET unseen = unseen + ?, unread = unread + ? WHERE owner = ?"), true),
            prepare(s, format!("UPDATE {ks}.notification_marks USING TIMESTAMP ? SET unseen = unseen - ? WHERE owner = ?"), true),
            prepare(s, format!("UPDATE {ks}.notification_marks USING TIMESTAMP ? SET unseen = unseen - ?, unread = unread - ? WHERE owner = ?"), true),
            prepare(s, format!("DELETE unseen FROM {ks}.notification_marks USING TIMESTAMP ? WHERE owner = ?"), true),
            prepare(s, format!("DELETE unseen, unread FROM {ks}.notification_marks USING TIMESTAMP ? WHERE owner = ?"), true),
            prepare(s, format!("SELECT followers, following, activities, followers_us, following_us, activities_us FROM {ks}.user_counts WHERE user = ?"), true),
            prepare(s, format!("UPDATE {ks}.user_counts USING TIMESTAMP ? SET followers = ?, followers_us = ? WHERE user = ?"), true),
            prepare(s, format!("UPDATE {ks}.user_counts USING TIMESTAMP ? SET following = ?, following_us = ? WHERE user = ?"), true),
            prepare(s, format!("UPDATE {ks}.user_counts USING TIMESTAMP ? SET activities = ?, activities_us = ? WHERE user = ?"), true),
            prepare(s, format!("SELECT created_us FROM {ks}.followers WHERE user = ?"), true),
            prepare(s, format!("SELECT created_us FROM {ks}.following WHERE user = ?"), true),
            prepare(s, format!("SELECT time_us FROM {ks}.user_activities WHERE actor = ?"), true),
            // A counter update is not idempotent: never retried.
            prepare(s, format!("UPDATE {ks}.rate_windows SET used = used + ? WHERE principal = ? AND class = ? AND minute = ?"), false),
            prepare(s, format!("SELECT used FROM {ks}.rate_windows WHERE principal = ? AND class = ? AND minute = ?"), true),
            prepare(s, format!("DELETE FROM {ks}.rate_windows WHERE principal = ? AND class = ? AND minute < ?"), true),
            prepare(s, format!("SELECT {ACTIVITY_COLUMNS}, version FROM {ks}.activities WHERE id = ?"), true),
            prepare(s, format!("UPDATE {ks}.activities SET target = ?, extra = ?, version = ? WHERE id = ? IF actor = ? AND version = ?"), false),
            prepare(s, format!("DELETE FROM {ks}.pulled_authors WHERE actor = ?"), true),
            prepare(s, format!("INSERT INTO {ks}.connections (user, connection_id, connected_us) VALUES (?, ?, ?) USING TTL {ttl}"), true),
            prepare(s, format!("INSERT INTO {ks}.connection_users (connection_id, user) VALUES (?, ?) USING TTL {ttl}"), true),
            prepare(s, format!("DELETE FROM {ks}.connections WHERE user = ? AND connection_id = ?"), true),
            prepare(s, format!("DELETE FROM {ks}.connection_users WHERE connection_id = ?"), true),
            prepare(s, format!("SELECT user FROM {ks}.connection_users WHERE connection_id = ?"), true),
            prepare(s, format!("SELECT user, connection_id FROM {ks}.connections WHERE user IN ?"), true),
            prepare(s, format!("INSERT INTO {ks}.pulled_connections (author, bucket, user, connection_id) VALUES (?, ?, ?, ?) USING TTL {ttl}"), true),
            prepare(s, format!("DELETE FROM {ks}.pulled_connections WHERE author = ? AND bucket = ? AND user = ? AND connection_id = ?"), true),
            prepare(s, format!("SELECT user, connection_id FROM {ks}.pulled_connections WHERE author = ? AND bucket IN ?"), true),
        )?;
        let st = Statements {
            health: st.0,
            edge_claim: st.1,
            edge_get: st.2,
            edge_swap: st.3,
            followers_page: st.4,
            follower_row_insert: st.5,
            follower_row_delete: st.6,
            following_page: st.7,
            foreign_id_claim: st.8,
            foreign_id_get: st.9,
            foreign_id_take_over: st.10,
            foreign_id_release: st.11,
            activity_insert: st.12,
            activity_get: st.13,
            activity_delete: st.14,
            user_activity_insert: st.15,
            user_activity_delete: st.16,
            user_feed_page: st.17,
            timeline_insert: st.18,
            timeline_delete: st.19,
            timeline_page: st.20,
            timeline_get: st.21,
            timeline_ids: st.22,
            timeline_trim: st.23,
            group_mark: st.24,
            groups_page: st.25,
            group_put: st.26,
            groups_drop: st.27,
            pulled_author_get: st.28,
            pulled_author_mark: st.29,
            pulled_insert: st.30,
            pulled_get: st.31,
            pulled_delete: st.32,
            pulled_page: st.33,
            pulled_followee_put: st.34,
            pulled_followee_delete: st.35,
            pulled_followees: st.36,
            marks_get: st.37,
            marks_add: st.38,
            unseen_remove: st.39,
            marks_remove: st.40,
            unseen_clear: st.41,
            marks_clear: st.42,
            counts_get: st.43,
            followers_set: st.44,
            following_set: st.45,
            activities_set: st.46,
            followers_all: st.47,
            following_all: st.48,
            activities_all: st.49,
            allowance_add: st.50,
            allowance_get: st.51,
            allowance_old: st.52,
            activity_get_versioned: st.53,
            activity_update: st.54,
            pulled_author_unmark: st.55,
            connection_put: st.56,
            connection_user_put: st.57,
            connection_delete: st.58,
            connection_user_delete: st.59,
            connection_user_get: st.60,
            connections_of: st.61,
            pulled_connection_put: st.62,
            pulled_connection_delete: st.63,
            pulled_connections_of: st.64,
        };
        // Long enough for the claiming request to have finished (each of its few statements is
        // bounded by the request timeout), short enough that a client retrying after a crash
        // is not refused for long.
        let claim_grace = (cfg.request_timeout * 6).max(Duration::from_secs(10));
        Ok(CassandraStore {
            session: LiveSession::new(session, cfg),
            st,
            keyspace: ks.to_owned(),
            scans: tokio::sync::OnceCell::new(),
            claim_grace,
            tally: None,
        })
    }

    /// The same store, counting every statement it runs into `tally`.
    pub fn counting(mut self, tally: Arc<Tally>) -> Self {
        self.tally = Some(tally);
        self
    }

    /// The session the store runs on now.
    pub fn session(&self) -> Arc<Session> {
        self.session.current()
    }

    async fn execute(
        &self,
        op: &str,
        statement: &PreparedStatement,
        values: impl SerializeRow,
    ) -> Result<QueryResult, StoreError> {
        let values = &values;
        let result = self
            .session
            .run(op, statement, |session| async move {
                session.execute_unpaged(statement, values).await
            })
            .await?;
        if let Some(tally) = &self.tally {
            tally.record(statement, values, Some(&result));
        }
        Ok(result)
    }

    /// At most one row, by primary key.
    async fn get_row<R>(
        &self,
        op: &str,
        statement: &PreparedStatement,
        values: impl SerializeRow,
    ) -> Result<Option<R>, StoreError>
    where
        R: for<'f, 'm> DeserializeRow<'f, 'm>,
    {
        let result = self.execute(op, statement, values).await?;
        let rows = result.into_rows_result().map_err(|e| store_error(op, e))?;
        rows.maybe_first_row::<R>().map_err(|e| store_error(op, e))
    }

    /// One page of a slice from `paging` on (counted when the store counts), and where the next
    /// page starts.
    async fn single_page(
        &self,
        op: &str,
        statement: &PreparedStatement,
        values: &impl SerializeRow,
        paging: &PagingState,
    ) -> Result<(QueryRowsResult, PagingStateResponse), StoreError> {
        let (result, next) = self
            .session
            .run(op, statement, |session| async move {
                session
                    .execute_single_page(statement, values, paging.clone())
                    .await
            })
            .await?;
        if let Some(tally) = &self.tally {
            tally.record(statement, values, Some(&result));
        }
        let rows = result.into_rows_result().map_err(|e| store_error(op, e))?;
        Ok((rows, next))
    }

    /// Up to `limit` rows of a slice whose CQL also says `LIMIT`, page after page: a server may
    /// end a page early (Amazon Keyspaces stops at 1 MB), so one page is not always all of them.
    async fn get_rows<R>(
        &self,
        op: &str,
        statement: &PreparedStatement,
        values: impl SerializeRow,
        limit: usize,
    ) -> Result<Vec<R>, StoreError>
    where
        R: for<'f, 'm> DeserializeRow<'f, 'm>,
    {
        let mut out = Vec::new();
        let mut paging = PagingState::start();
        while out.len() < limit {
            let (rows, next) = self.single_page(op, statement, &values, &paging).await?;
            for row in rows.rows::<R>().map_err(|e| store_error(op, e))? {
                out.push(row.map_err(|e| store_error(op, e))?);
            }
            match next {
                PagingStateResponse::HasMorePages { state } => paging = state,
                PagingStateResponse::NoMorePages => break,
            }
        }
        out.truncate(limit);
        Ok(out)
    }

    /// How many rows of a partition's slice pass `keep` (on the statement's only column), page
    /// after page.
    async fn count_rows(
        &self,
        op: &str,
        statement: &PreparedStatement,
        values: impl SerializeRow,
        keep: impl Fn(i64) -> bool,
    ) -> Result<u64, StoreError> {
        let mut count = 0;
        let mut paging = PagingState::start();
        loop {
            let (rows, next) = self.single_page(op, statement, &values, &paging).await?;
            for row in rows.rows::<(i64,)>().map_err(|e| store_error(op, e))? {
                if keep(row.map_err(|e| store_error(op, e))?.0) {
                    count += 1;
                }
            }
            match next {
                PagingStateResponse::HasMorePages { state } => paging = state,
                PagingStateResponse::NoMorePages => return Ok(count),
            }
        }
    }

    /// Runs a lightweight transaction.
    async fn cas<R>(
        &self,
        op: &str,
        statement: &PreparedStatement,
        values: impl SerializeRow,
    ) -> Result<Cas<R>, StoreError>
    where
        R: CasRow + for<'f, 'm> DeserializeRow<'f, 'm>,
    {
        let result = self.execute(op, statement, values).await?;
        let rows = result.into_rows_result().map_err(|e| store_error(op, e))?;
        if rows.column_specs().len() > 1 {
            if let Ok(row) = rows.single_row::<R>() {
                return Ok(if row.applied() {
                    Cas::Applied
                } else {
                    Cas::Rejected(Some(row))
                });
            }
        }
        // `[applied]` alone, or with columns of another shape: read `[applied]` only.
        let row: Row = rows.single_row().map_err(|e| store_error(op, e))?;
        match row.columns.first() {
            Some(Some(scylla::value::CqlValue::Boolean(true))) => Ok(Cas::Applied),
            Some(Some(scylla::value::CqlValue::Boolean(false))) => Ok(Cas::Rejected(None)),
            _ => Err(StoreError::Internal(format!(
                "Cassandra {op}: the result has no [applied] column"
            ))),
        }
    }

    async fn relations<R>(
        &self,
        op: &str,
        statement: &PreparedStatement,
        user: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<R>, StoreError>
    where
        R: for<'f, 'm> DeserializeRow<'f, 'm>,
    {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let cql_limit = i32::try_from(limit).unwrap_or(i32::MAX);
        self.get_rows(op, statement, (user, after.unwrap_or(""), cql_limit), limit)
            .await
    }

    async fn activities(
        &self,
        op: &str,
        statement: &PreparedStatement,
        key: &str,
        range: IdRange<'_>,
        limit: usize,
    ) -> Result<Vec<Activity>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let before = range.before.unwrap_or(ID_CEILING);
        let not_before = range.not_before.unwrap_or(ID_FLOOR);
        let cql_limit = i32::try_from(limit).unwrap_or(i32::MAX);
        let rows: Vec<ActivityRow> = self
            .get_rows(op, statement, (key, before, not_before, cql_limit), limit)
            .await?;
        rows.into_iter().map(ActivityRow::into_activity).collect()
    }

    async fn timeline_entry(
        &self,
        owner: &str,
        id: &str,
    ) -> Result<Option<TimelineEntry>, StoreError> {
        let row: Option<ActivityRow> = self
            .get_row("timeline_entries", &self.st.timeline_get, (owner, id))
            .await?;
        row.map(|r| {
            r.into_activity().map(|activity| TimelineEntry {
                owner: owner.to_owned(),
                activity,
            })
        })
        .transpose()
    }

    /// Writes timeline rows with the columns `values` gives, one single-partition write per row,
    /// concurrently: rows of different owners are different partitions, which a batch would only
    /// make slower (and Keyspaces caps batches).
    async fn write_timeline(
        &self,
        op: &str,
        entries: &[TimelineEntry],
        values: fn(&Activity) -> ActivityValues<'_>,
    ) -> Result<(), StoreError> {
        let writes: Vec<_> = entries
            .iter()
            .map(|TimelineEntry { owner, activity }| {
                let (id, actor, verb, object, target, time_us, foreign_id, extra, to) =
                    values(activity);
                let values = (
                    owner.as_str(),
                    id,
                    actor,
                    verb,
                    object,
                    target,
                    time_us,
                    foreign_id,
                    extra,
                    to,
                );
                self.execute(op, &self.st.timeline_insert, values)
            })
            .collect();
        run_concurrently(writes).await
    }

    /// Writes the actor's feed row, then the `activities` row: an activity that can be read by
    /// id is complete, which is what `put_activity` checks before answering an existing one.
    async fn write_activity(&self, a: &Activity) -> Result<(), StoreError> {
        let op = "put_activity";
        self.execute(op, &self.st.user_activity_insert, activity_values(a))
            .await?;
        self.execute(op, &self.st.activity_insert, activity_values(a))
            .await?;
        Ok(())
    }

    async fn scans(&self) -> Result<&ScanStatements, StoreError> {
        self.scans
            .get_or_try_init(|| async {
                let session = self.session.current();
                let (s, ks) = (session.as_ref(), &self.keyspace);
                let st = tokio::try_join!(
                    prepare(
                        s,
                        format!("SELECT user, followee, created_us FROM {ks}.following"),
                        true
                    ),
                    prepare(
                        s,
                        format!("SELECT user, follower FROM {ks}.followers"),
                        true
                    ),
                    prepare(
                        s,
                        format!("SELECT {ACTIVITY_COLUMNS} FROM {ks}.activities"),
                        true
                    ),
                    prepare(s, format!("SELECT id FROM {ks}.activities"), true),
                    prepare(
                        s,
                        format!("SELECT followers, following, activities FROM {ks}.user_counts"),
                        true
                    ),
                    prepare(
                        s,
                        format!(
                            "SELECT created_us FROM {ks}.followers WHERE user = ? AND follower = ?"
                        ),
                        true
                    ),
                )?;
                Ok(ScanStatements {
                    following: st.0,
                    followers: st.1,
                    activities: st.2,
                    activity_ids: st.3,
                    counts: st.4,
                    follower_row: st.5,
                })
            })
            .await
    }

    /// One page (at most `page` rows) of a whole-table scan, from `from` (the driver's paging
    /// state, in base64), and where the next page starts.
    async fn scan_page<R>(
        &self,
        op: &str,
        statement: &PreparedStatement,
        from: Option<&str>,
        page: usize,
    ) -> Result<(Vec<R>, Option<String>), StoreError>
    where
        R: for<'f, 'm> DeserializeRow<'f, 'm>,
    {
        use base64::Engine;
        let codec = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let paging = match from {
            None => PagingState::start(),
            Some(text) => PagingState::new_from_raw_bytes(codec.decode(text).map_err(|e| {
                StoreError::Internal(format!("Cassandra {op}: not a scan position: {e}"))
            })?),
        };
        let mut statement = statement.clone();
        statement.set_page_size(i32::try_from(page.max(1)).unwrap_or(i32::MAX));
        let (rows, next) = self.single_page(op, &statement, &(), &paging).await?;
        let items = rows
            .rows::<R>()
            .map_err(|e| store_error(op, e))?
            .collect::<Result<Vec<R>, _>>()
            .map_err(|e| store_error(op, e))?;
        let next = match next {
            PagingStateResponse::HasMorePages { state } => {
                state.as_bytes_slice().map(|bytes| codec.encode(bytes))
            }
            PagingStateResponse::NoMorePages => None,
        };
        Ok((items, next))
    }

    /// The `following` row of `follower -> user`, if there ever was one.
    async fn edge(
        &self,
        op: &str,
        follower: &str,
        user: &str,
    ) -> Result<Option<EdgeState>, StoreError> {
        let row: Option<CreatedRow> = self
            .get_row(op, &self.st.edge_get, (follower, user))
            .await?;
        Ok(row.map(|r| EdgeState::from_column(r.created_us)))
    }

    async fn foreign_id_holder(
        &self,
        actor: &str,
        foreign_id: &str,
    ) -> Result<Option<ForeignIdRow>, StoreError> {
        self.get_row(
            "put_activity: read foreign_id",
            &self.st.foreign_id_get,
            (actor, foreign_id),
        )
        .await
    }
}

/// Prepares one statement; `idempotent` lets the driver retry it.
async fn prepare(
    session: &Session,
    cql: String,
    idempotent: bool,
) -> Result<PreparedStatement, StoreError> {
    let mut statement = session
        .prepare(cql.as_str())
        .await
        .map_err(|e| store_error(&format!("prepare `{cql}`"), e))?;
    statement.set_is_idempotent(idempotent);
    Ok(statement)
}

fn now_us() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

#[async_trait]
impl Store for CassandraStore {
    async fn health(&self) -> Result<(), StoreError> {
        self.execute("health", &self.st.health, ()).await.map(drop)
    }

    async fn follow(&self, edge: &FollowEdge) -> Result<(FollowEdge, bool), StoreError> {
        let op = "follow";
        let (user, follower) = (edge.following.as_str(), edge.follower.as_str());
        let requested_us = edge.created_at.timestamp_micros().max(1);
        // The lightweight transactions run on the follower's `following` partition, not on the
        // followee's `followers` partition: thousands of users following one star at once would
        // contend there. See `EdgeState` for how the `followers` row is kept in step.
        let mut known: Option<Option<EdgeState>> = None;
        let mut settled = None;
        for attempt in 0..EDGE_ATTEMPTS {
            edge_backoff(attempt).await;
            let current = match known.take() {
                Some(state) => state,
                None => match self
                    .cas::<EdgeCasRow>(op, &self.st.edge_claim, (follower, user, requested_us))
                    .await?
                {
                    Cas::Applied => {
                        settled = Some((requested_us, true));
                        break;
                    }
                    Cas::Rejected(Some(row)) => row.created_us.map(EdgeState::from_column),
                    Cas::Rejected(None) => self.edge(op, follower, user).await?,
                },
            };
            match current {
                // Gone between the claim and the read (only rows older than `EdgeState` go).
                None => continue,
                Some(EdgeState::Following(since_us)) => {
                    settled = Some((since_us, false));
                    break;
                }
                Some(EdgeState::Unfollowed { tombstone_us }) => {
                    // Followed again: the new edge must be younger than the tombstone its last
                    // unfollow left on the `followers` row, or that tombstone would hide the row.
                    let since_us = requested_us.max(tombstone_us + 1);
                    let swap = (since_us, follower, user, -tombstone_us);
                    match self.cas::<SwapCasRow>(op, &self.st.edge_swap, swap).await? {
                        Cas::Applied => {
                            settled = Some((since_us, true));
                            break;
                        }
                        Cas::Rejected(row) => known = row.map(SwapCasRow::state),
                    }
                }
            }
        }
        let Some((since_us, created)) = settled else {
            return Err(StoreError::Unavailable(format!(
                "Cassandra follow: the edge {follower} -> {user} kept changing; try again"
            )));
        };
        // Written at the edge's own time on every call, so a retry repairs a `followers` row an
        // earlier attempt missed, and an unfollow's tombstone (one microsecond younger) wins
        // whichever of the two arrives first.
        self.execute(
            op,
            &self.st.follower_row_insert,
            (user, follower, since_us, since_us),
        )
        .await?;
        Ok((
            FollowEdge {
                created_at: from_micros(since_us),
                ..edge.clone()
            },
            created,
        ))
    }

    async fn unfollow(&self, follower: &str, following: &str) -> Result<(), StoreError> {
        let op = "unfollow";
        let mut known: Option<Option<EdgeState>> = None;
        for attempt in 0..EDGE_ATTEMPTS {
            edge_backoff(attempt).await;
            let current = match known.take() {
                Some(state) => state,
                None => self.edge(op, follower, following).await?,
            };
            let tombstone_us = match current {
                // Never followed: nothing to undo.
                None => return Ok(()),
                // Already unfollowed: the row delete again, in case the earlier call stopped
                // between its two writes.
                Some(EdgeState::Unfollowed { tombstone_us }) => tombstone_us,
                Some(EdgeState::Following(since_us)) => {
                    let tombstone_us = since_us + 1;
                    let swap = (-tombstone_us, follower, following, since_us);
                    match self.cas::<SwapCasRow>(op, &self.st.edge_swap, swap).await? {
                        Cas::Applied => tombstone_us,
                        Cas::Rejected(row) => {
                            known = row.map(SwapCasRow::state);
                            continue;
                        }
                    }
                }
            };
            self.execute(
                op,
                &self.st.follower_row_delete,
                (tombstone_us, following, follower),
            )
            .await?;
            return Ok(());
        }
        Err(StoreError::Unavailable(format!(
            "Cassandra unfollow: the edge {follower} -> {following} kept changing; try again"
        )))
    }

    async fn is_following(&self, follower: &str, following: &str) -> Result<bool, StoreError> {
        let state = self.edge("is_following", follower, following).await?;
        Ok(matches!(state, Some(EdgeState::Following(_))))
    }

    async fn followers(
        &self,
        user: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Relation>, StoreError> {
        let rows: Vec<FollowerRow> = self
            .relations("followers", &self.st.followers_page, user, after, limit)
            .await?;
        Ok(rows
            .into_iter()
            .map(|r| Relation {
                user: r.follower,
                since: from_micros(r.created_us),
            })
            .collect())
    }

    async fn following(
        &self,
        user: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Relation>, StoreError> {
        // Rows of unfollowed edges stay (see `EdgeState`): skipped, page after page.
        let mut out = Vec::new();
        let mut after = after.map(str::to_owned);
        while out.len() < limit {
            let want = limit - out.len();
            let rows: Vec<FolloweeRow> = self
                .relations(
                    "following",
                    &self.st.following_page,
                    user,
                    after.as_deref(),
                    want,
                )
                .await?;
            let exhausted = rows.len() < want;
            after = rows.last().map(|r| r.followee.clone());
            out.extend(rows.into_iter().filter_map(|r| {
                match EdgeState::from_column(r.created_us) {
                    EdgeState::Following(since_us) => Some(Relation {
                        user: r.followee,
                        since: from_micros(since_us),
                    }),
                    EdgeState::Unfollowed { .. } => None,
                }
            }));
            if exhausted {
                break;
            }
        }
        Ok(out)
    }

    async fn put_activity(&self, activity: &Activity) -> Result<(Activity, bool), StoreError> {
        let op = "put_activity";
        let Some(foreign_id) = activity.foreign_id.as_deref() else {
            self.write_activity(activity).await?;
            return Ok((activity.clone(), true));
        };
        let (actor, id) = (activity.actor.as_str(), activity.id.as_str());
        let claim = || {
            self.cas::<ForeignIdCasRow>(
                op,
                &self.st.foreign_id_claim,
                (actor, foreign_id, id, now_us()),
            )
        };
        let mut outcome = claim().await?;
        // Each pass handles the outcome of one lightweight transaction and may run the next.
        for attempt in 1.. {
            let holder = match outcome {
                Cas::Applied => {
                    self.write_activity(activity).await?;
                    return Ok((activity.clone(), true));
                }
                Cas::Rejected(Some(row)) => row.holder(),
                Cas::Rejected(None) => match self.foreign_id_holder(actor, foreign_id).await? {
                    Some(holder) => holder,
                    // Released in between (its activity was deleted): claim it again.
                    None if attempt < CAS_ATTEMPTS => {
                        outcome = claim().await?;
                        continue;
                    }
                    None => break,
                },
            };
            if let Some(existing) = self.get_activity(&holder.id).await? {
                return Ok((existing, false));
            }
            // The holder's activity is missing: its request crashed before writing it, or it was
            // deleted and the mapping not released. A young claim may still be being written.
            let age = Duration::from_micros(
                now_us()
                    .saturating_sub(holder.claimed_us.unwrap_or(0))
                    .max(0) as u64,
            );
            if age < self.claim_grace {
                return Err(StoreError::Unavailable(format!(
                    "Cassandra put_activity: activity {} with foreign_id {foreign_id:?} is still being stored; try again shortly",
                    holder.id
                )));
            }
            if attempt >= CAS_ATTEMPTS {
                break;
            }
            let take_over = (id, now_us(), actor, foreign_id, holder.id.as_str());
            outcome = match self
                .cas::<AppliedRow>(op, &self.st.foreign_id_take_over, take_over)
                .await?
            {
                Cas::Applied => Cas::Applied,
                // Someone else changed it first: look again.
                Cas::Rejected(_) => Cas::Rejected(None),
            };
        }
        Err(StoreError::Unavailable(format!(
            "Cassandra put_activity: foreign_id {foreign_id:?} of {actor} kept changing; try again"
        )))
    }

    async fn get_activity(&self, id: &str) -> Result<Option<Activity>, StoreError> {
        let row: Option<ActivityRow> = self
            .get_row("get_activity", &self.st.activity_get, (id,))
            .await?;
        row.map(ActivityRow::into_activity).transpose()
    }

    async fn delete_activity(&self, activity: &Activity) -> Result<(), StoreError> {
        let op = "delete_activity";
        let (id, actor) = (activity.id.as_str(), activity.actor.as_str());
        // The reverse of `write_activity`: once the `activities` row is gone the activity is gone.
        self.cas::<AppliedRow>(op, &self.st.activity_delete, (id,))
            .await?;
        self.execute(op, &self.st.user_activity_delete, (actor, id))
            .await?;
        if let Some(foreign_id) = activity.foreign_id.as_deref() {
            // Only if it still names this activity: a newer one may have taken it over.
            self.cas::<AppliedRow>(op, &self.st.foreign_id_release, (actor, foreign_id, id))
                .await?;
        }
        Ok(())
    }

    async fn user_feed(
        &self,
        actor: &str,
        range: IdRange<'_>,
        limit: usize,
    ) -> Result<Vec<Activity>, StoreError> {
        self.activities("user_feed", &self.st.user_feed_page, actor, range, limit)
            .await
    }

    async fn timeline(
        &self,
        owner: &str,
        range: IdRange<'_>,
        limit: usize,
    ) -> Result<Vec<Activity>, StoreError> {
        self.activities("timeline", &self.st.timeline_page, owner, range, limit)
            .await
    }

    async fn get_versioned(&self, id: &str) -> Result<Option<(Activity, i64)>, StoreError> {
        let row: Option<VersionedRow> = self
            .get_row("get_versioned", &self.st.activity_get_versioned, (id,))
            .await?;
        row.map(VersionedRow::into_versioned).transpose()
    }

    async fn update_activity(&self, activity: &Activity, version: i64) -> Result<bool, StoreError> {
        let op = "update_activity";
        let values = rewrite_values(activity);
        let was = (version > 0).then_some(version);
        let cas = (
            values.4,
            values.7.clone(),
            version + 1,
            activity.id.as_str(),
            activity.actor.as_str(),
            was,
        );
        match self
            .cas::<AppliedRow>(op, &self.st.activity_update, cas)
            .await?
        {
            Cas::Applied => {}
            Cas::Rejected(_) => return Ok(false),
        }
        self.execute(op, &self.st.user_activity_insert, values)
            .await?;
        Ok(true)
    }

    async fn rewrite_own_copies(
        &self,
        activity: &Activity,
        pulled: bool,
    ) -> Result<(), StoreError> {
        let op = "rewrite_own_copies";
        let values = rewrite_values(activity);
        self.execute(op, &self.st.user_activity_insert, values)
            .await?;
        if pulled {
            self.execute(op, &self.st.pulled_insert, rewrite_values(activity))
                .await?;
        }
        Ok(())
    }

    async fn remove_own_copies(&self, activity: &Activity) -> Result<(), StoreError> {
        let (id, actor) = (activity.id.as_str(), activity.actor.as_str());
        self.execute(
            "remove_own_copies",
            &self.st.user_activity_delete,
            (actor, id),
        )
        .await?;
        self.delete_pulled(actor, id).await
    }

    async fn rewrite_timeline(&self, entries: &[TimelineEntry]) -> Result<(), StoreError> {
        self.write_timeline("rewrite_timeline", entries, rewrite_values)
            .await
    }

    async fn insert_timeline(&self, entries: &[TimelineEntry]) -> Result<(), StoreError> {
        self.write_timeline("insert_timeline", entries, activity_values)
            .await
    }

    async fn delete_timeline(&self, rows: &[(String, String)]) -> Result<(), StoreError> {
        let writes: Vec<_> = rows
            .iter()
            .map(|(owner, id)| {
                self.execute(
                    "delete_timeline",
                    &self.st.timeline_delete,
                    (owner.as_str(), id.as_str()),
                )
            })
            .collect();
        run_concurrently(writes).await
    }

    async fn timeline_entries(
        &self,
        rows: &[(String, String)],
    ) -> Result<Vec<TimelineEntry>, StoreError> {
        let reads: Vec<_> = rows
            .iter()
            .map(|(owner, id)| self.timeline_entry(owner, id))
            .collect();
        let found: Vec<Option<TimelineEntry>> = futures::stream::iter(reads)
            .buffered(WRITE_CONCURRENCY)
            .try_collect()
            .await?;
        Ok(found.into_iter().flatten().collect())
    }

    async fn timeline_id_at(
        &self,
        owner: &str,
        position: usize,
    ) -> Result<Option<String>, StoreError> {
        let wanted = position.saturating_add(1);
        let cql_limit = i32::try_from(wanted).unwrap_or(i32::MAX);
        let ids: Vec<IdRow> = self
            .get_rows(
                "timeline_id_at",
                &self.st.timeline_ids,
                (owner, cql_limit),
                wanted,
            )
            .await?;
        Ok(ids.into_iter().nth(position).map(|r| r.id))
    }

    async fn trim_timeline(&self, owner: &str, through: &str) -> Result<(), StoreError> {
        // One range tombstone: reads that reach it skip everything below it at once.
        self.execute("trim_timeline", &self.st.timeline_trim, (owner, through))
            .await
            .map(drop)
    }

    async fn mark_groups(&self, groups: &[GroupRef], at_us: i64) -> Result<(), StoreError> {
        let writes: Vec<_> = groups
            .iter()
            .map(|g| {
                let values = (
                    at_us,
                    at_us,
                    g.owner.as_str(),
                    g.feed.as_str(),
                    g.day,
                    g.key.as_str(),
                );
                self.execute("mark_groups", &self.st.group_mark, values)
            })
            .collect();
        run_concurrently(writes).await
    }

    async fn groups(
        &self,
        owner: &str,
        feed: &str,
        days: DayRange,
        limit: usize,
    ) -> Result<Vec<StoredGroup>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let max = days.max.unwrap_or(i32::MAX);
        let min = days.min.unwrap_or(i32::MIN);
        let cql_limit = i32::try_from(limit).unwrap_or(i32::MAX);
        let rows: Vec<GroupRow> = self
            .get_rows(
                "groups",
                &self.st.groups_page,
                (owner, feed, max, min, cql_limit),
                limit,
            )
            .await?;
        Ok(rows.into_iter().map(GroupRow::into_group).collect())
    }

    async fn drop_groups(
        &self,
        owner: &str,
        feed: &str,
        day: i32,
        at_us: i64,
    ) -> Result<(), StoreError> {
        self.execute(
            "drop_groups",
            &self.st.groups_drop,
            (at_us, owner, feed, day),
        )
        .await
        .map(drop)
    }

    async fn put_groups(
        &self,
        owner: &str,
        feed: &str,
        day: i32,
        writes: &[GroupWrite],
        as_of_us: i64,
    ) -> Result<(), StoreError> {
        // Written at the scan's start: a later scan's summary and a later mark both win.
        let writes: Vec<_> = writes
            .iter()
            .map(|w| {
                let (newest_id, json, actors) = match &w.summary {
                    Some(s) => (
                        Some(s.newest_id.as_str()),
                        Some(s.json.as_str()),
                        Some(s.actors_newest.as_str()),
                    ),
                    None => (None, None, None),
                };
                let values = (
                    as_of_us,
                    newest_id,
                    json,
                    actors,
                    as_of_us,
                    owner,
                    feed,
                    day,
                    w.key.as_str(),
                );
                self.execute("put_groups", &self.st.group_put, values)
            })
            .collect();
        run_concurrently(writes).await
    }

    async fn is_pulled_author(&self, actor: &str) -> Result<bool, StoreError> {
        let row: Option<(String,)> = self
            .get_row("is_pulled_author", &self.st.pulled_author_get, (actor,))
            .await?;
        Ok(row.is_some())
    }

    async fn mark_pulled_author(&self, actor: &str) -> Result<(), StoreError> {
        self.execute(
            "mark_pulled_author",
            &self.st.pulled_author_mark,
            (actor, now_us()),
        )
        .await
        .map(drop)
    }

    async fn unmark_pulled_author(&self, actor: &str) -> Result<(), StoreError> {
        self.execute(
            "unmark_pulled_author",
            &self.st.pulled_author_unmark,
            (actor,),
        )
        .await
        .map(drop)
    }

    async fn put_pulled(&self, activity: &Activity) -> Result<(), StoreError> {
        self.execute(
            "put_pulled",
            &self.st.pulled_insert,
            activity_values(activity),
        )
        .await
        .map(drop)
    }

    async fn get_pulled(&self, actor: &str, id: &str) -> Result<Option<Activity>, StoreError> {
        let row: Option<ActivityRow> = self
            .get_row("get_pulled", &self.st.pulled_get, (actor, id))
            .await?;
        row.map(ActivityRow::into_activity).transpose()
    }

    async fn delete_pulled(&self, actor: &str, id: &str) -> Result<(), StoreError> {
        self.execute("delete_pulled", &self.st.pulled_delete, (actor, id))
            .await
            .map(drop)
    }

    async fn pulled(
        &self,
        actor: &str,
        range: IdRange<'_>,
        limit: usize,
    ) -> Result<Vec<Activity>, StoreError> {
        self.activities("pulled", &self.st.pulled_page, actor, range, limit)
            .await
    }

    async fn put_pulled_followee(
        &self,
        user: &str,
        followee: &str,
        floor: Option<&str>,
    ) -> Result<(), StoreError> {
        let values = (user, followee, floor);
        self.execute("put_pulled_followee", &self.st.pulled_followee_put, values)
            .await
            .map(drop)
    }

    async fn delete_pulled_followee(&self, user: &str, followee: &str) -> Result<(), StoreError> {
        self.execute(
            "delete_pulled_followee",
            &self.st.pulled_followee_delete,
            (user, followee),
        )
        .await
        .map(drop)
    }

    async fn pulled_followees(&self, user: &str) -> Result<Vec<PulledFollowee>, StoreError> {
        let rows: Vec<PulledFolloweeRow> = self
            .get_rows(
                "pulled_followees",
                &self.st.pulled_followees,
                (user,),
                usize::MAX,
            )
            .await?;
        Ok(rows
            .into_iter()
            .map(|r| PulledFollowee {
                followee: r.followee,
                floor: r.floor,
            })
            .collect())
    }

    async fn user_counts(&self, user: &str) -> Result<UserCounts, StoreError> {
        let row: Option<CountsRow> = self
            .get_row("user_counts", &self.st.counts_get, (user,))
            .await?;
        let n = |v: Option<i64>| v.unwrap_or(0).max(0) as u64;
        Ok(row.map_or_else(UserCounts::default, |r| UserCounts {
            followers: n(r.followers),
            following: n(r.following),
            activities: n(r.activities),
        }))
    }

    async fn recount(&self, user: &str, what: Counted, asked_us: i64) -> Result<(), StoreError> {
        let op = "recount";
        let row: Option<CountsRow> = self.get_row(op, &self.st.counts_get, (user,)).await?;
        let done_us = row.and_then(|r| match what {
            Counted::Followers => r.followers_us,
            Counted::Following => r.following_us,
            Counted::Activities => r.activities_us,
        });
        // Another machine's clock may run ahead: only a count begun clearly after the ask is enough.
        if done_us.is_some_and(|t| t >= asked_us.saturating_add(crate::store::CLOCK_SKEW_US)) {
            return Ok(());
        }
        // Stored as of the count's start: a later count wins over this one, an earlier one loses.
        let started = now_us();
        let (all, set) = match what {
            Counted::Followers => (&self.st.followers_all, &self.st.followers_set),
            Counted::Following => (&self.st.following_all, &self.st.following_set),
            Counted::Activities => (&self.st.activities_all, &self.st.activities_set),
        };
        // `following` keeps an unfollowed edge with its time negated, below zero.
        let count = self.count_rows(op, all, (user,), |t: i64| t >= 0).await?;
        self.execute(op, set, (started, count as i64, started, user))
            .await
            .map(drop)
    }

    async fn take_allowance(
        &self,
        principal: &str,
        class: &str,
        minute: i64,
        want: u64,
        limit: u64,
    ) -> Result<u64, StoreError> {
        let op = "take_allowance";
        let key = (principal, class, minute);
        let want_i = i64::try_from(want).unwrap_or(i64::MAX);
        let add = (scylla::value::Counter(want_i), principal, class, minute);
        self.execute(op, &self.st.allowance_add, add).await?;
        let used: Option<(scylla::value::Counter,)> =
            self.get_row(op, &self.st.allowance_get, key).await?;
        let used = used.map_or(0, |(c,)| c.0.max(0) as u64);
        let granted = crate::store::granted(want, used, limit);
        if granted < want {
            // What cannot be granted goes back, so that a refused request takes nothing.
            let back = scylla::value::Counter(-i64::try_from(want - granted).unwrap_or(i64::MAX));
            self.execute(op, &self.st.allowance_add, (back, principal, class, minute))
                .await?;
        }
        if used == want {
            // The first take of a minute: the earlier minutes are over.
            self.execute(op, &self.st.allowance_old, key).await?;
        }
        Ok(granted)
    }

    async fn notification_marks(&self, owner: &str) -> Result<NotificationMarks, StoreError> {
        let row: Option<MarksRow> = self
            .get_row("notification_marks", &self.st.marks_get, (owner,))
            .await?;
        Ok(
            row.map_or_else(NotificationMarks::default, |r| NotificationMarks {
                unseen: r.unseen.unwrap_or_default(),
                unread: r.unread.unwrap_or_default(),
            }),
        )
    }

    async fn add_notification_marks(
        &self,
        owner: &str,
        keys: &[String],
        at_us: i64,
    ) -> Result<(), StoreError> {
        if keys.is_empty() {
            return Ok(());
        }
        self.execute(
            "add_notification_marks",
            &self.st.marks_add,
            (at_us, keys, keys, owner),
        )
        .await
        .map(drop)
    }

    async fn erase_notification_marks(&self, owner: &str, at_us: i64) -> Result<(), StoreError> {
        // The row holds nothing but the two sets: clearing both as of `at_us` is forgetting it.
        self.remove_notification_marks(owner, None, true, at_us)
            .await
    }

    async fn remove_notification_marks(
        &self,
        owner: &str,
        keys: Option<&[String]>,
        read: bool,
        at_us: i64,
    ) -> Result<(), StoreError> {
        let op = "remove_notification_marks";
        match (keys, read) {
            (Some([]), _) => return Ok(()),
            (Some(keys), false) => {
                self.execute(op, &self.st.unseen_remove, (at_us, keys, owner))
                    .await?
            }
            (Some(keys), true) => {
                self.execute(op, &self.st.marks_remove, (at_us, keys, keys, owner))
                    .await?
            }
            (None, false) => {
                self.execute(op, &self.st.unseen_clear, (at_us, owner))
                    .await?
            }
            (None, true) => {
                self.execute(op, &self.st.marks_clear, (at_us, owner))
                    .await?
            }
        };
        Ok(())
    }

    async fn scan_edges(
        &self,
        side: EdgeSide,
        from: Option<&str>,
        page: usize,
    ) -> Result<ScanPage<(String, String)>, StoreError> {
        let op = "scan_edges";
        let scans = self.scans().await?;
        let (items, next) = match side {
            EdgeSide::Following => {
                let (rows, next) = self
                    .scan_page::<(String, String, i64)>(op, &scans.following, from, page)
                    .await?;
                let edges = rows.into_iter().map(|(user, followee, _)| (user, followee));
                (edges.collect(), next)
            }
            EdgeSide::Followers => {
                let (rows, next) = self
                    .scan_page::<(String, String)>(op, &scans.followers, from, page)
                    .await?;
                let edges = rows.into_iter().map(|(user, follower)| (follower, user));
                (edges.collect(), next)
            }
        };
        Ok(ScanPage { items, next })
    }

    async fn check_edge(
        &self,
        follower: &str,
        followee: &str,
        repair: bool,
    ) -> Result<EdgeCheck, StoreError> {
        let op = "check_edge";
        let scans = self.scans().await?;
        // The copy first, then the edge: a follow writes them in the other order, so a copy
        // found before its edge is read is not one a follow is writing.
        let copy: Option<CreatedRow> = self
            .get_row(op, &scans.follower_row, (followee, follower))
            .await?;
        let edge = self.edge(op, follower, followee).await?;
        enum Fix {
            Insert(i64),
            Delete(i64),
        }
        let (check, fix) = match (edge, copy.map(|r| r.created_us)) {
            (Some(EdgeState::Following(since)), Some(created)) if created == since => {
                (EdgeCheck::InStep, None)
            }
            // As `follow` writes it: an unfollow's tombstone, one microsecond younger, still wins.
            (Some(EdgeState::Following(since)), _) => {
                (EdgeCheck::FollowerRowMissing, Some(Fix::Insert(since)))
            }
            // As `unfollow` deletes it: a later follow is younger than the tombstone.
            (Some(EdgeState::Unfollowed { tombstone_us }), Some(_)) => {
                (EdgeCheck::FollowerRowStray, Some(Fix::Delete(tombstone_us)))
            }
            // No edge was ever made: a tombstone just younger than the row, older than any
            // follow that comes now.
            (None, Some(created)) => (EdgeCheck::FollowerRowStray, Some(Fix::Delete(created + 1))),
            (_, None) => (EdgeCheck::InStep, None),
        };
        match fix {
            Some(Fix::Insert(since)) if repair => {
                let values = (followee, follower, since, since);
                self.execute(op, &self.st.follower_row_insert, values)
                    .await?;
            }
            Some(Fix::Delete(at_us)) if repair => {
                let values = (at_us, followee, follower);
                self.execute(op, &self.st.follower_row_delete, values)
                    .await?;
            }
            _ => {}
        }
        Ok(check)
    }

    async fn scan_activities(
        &self,
        from: Option<&str>,
        page: usize,
    ) -> Result<ScanPage<Activity>, StoreError> {
        let scans = self.scans().await?;
        let (rows, next) = self
            .scan_page::<ActivityRow>("scan_activities", &scans.activities, from, page)
            .await?;
        let items = rows
            .into_iter()
            .map(ActivityRow::into_activity)
            .collect::<Result<_, _>>()?;
        Ok(ScanPage { items, next })
    }

    async fn census(
        &self,
        what: Census,
        from: Option<&str>,
        page: usize,
    ) -> Result<(u64, Option<String>), StoreError> {
        let op = "census";
        let scans = self.scans().await?;
        let count = |n: usize| n as u64;
        Ok(match what {
            Census::Users => {
                type Counts = (Option<i64>, Option<i64>, Option<i64>);
                let (rows, next) = self
                    .scan_page::<Counts>(op, &scans.counts, from, page)
                    .await?;
                let some = |n: Option<i64>| n.unwrap_or(0) > 0;
                let users = rows
                    .into_iter()
                    .filter(|(a, b, c)| some(*a) || some(*b) || some(*c));
                (count(users.count()), next)
            }
            Census::Edges => {
                let (rows, next) = self
                    .scan_page::<(String, String, i64)>(op, &scans.following, from, page)
                    .await?;
                // An unfollowed edge keeps its row, its time negated.
                (count(rows.iter().filter(|r| r.2 > 0).count()), next)
            }
            Census::FollowerRows => {
                let (rows, next) = self
                    .scan_page::<(String, String)>(op, &scans.followers, from, page)
                    .await?;
                (count(rows.len()), next)
            }
            Census::Activities => {
                let (rows, next) = self
                    .scan_page::<IdRow>(op, &scans.activity_ids, from, page)
                    .await?;
                (count(rows.len()), next)
            }
        })
    }

    async fn put_connection(&self, connection: &Connection) -> Result<(), StoreError> {
        let op = "put_connection";
        let (user, id) = (connection.user.as_str(), connection.id.as_str());
        tokio::try_join!(
            self.execute(op, &self.st.connection_put, (user, id, now_us())),
            self.execute(op, &self.st.connection_user_put, (id, user)),
        )?;
        Ok(())
    }

    async fn delete_connection(&self, connection: &Connection) -> Result<(), StoreError> {
        let op = "delete_connection";
        let (user, id) = (connection.user.as_str(), connection.id.as_str());
        tokio::try_join!(
            self.execute(op, &self.st.connection_delete, (user, id)),
            self.execute(op, &self.st.connection_user_delete, (id,)),
        )?;
        Ok(())
    }

    async fn connection_user(&self, id: &str) -> Result<Option<String>, StoreError> {
        let row: Option<UserRow> = self
            .get_row("connection_user", &self.st.connection_user_get, (id,))
            .await?;
        Ok(row.map(|r| r.user))
    }

    async fn connections(&self, users: &[String]) -> Result<Vec<Connection>, StoreError> {
        let reads = users.chunks(IN_VALUES).map(|some| {
            let some: Vec<&str> = some.iter().map(String::as_str).collect();
            async move {
                let op = "connections";
                let rows: Vec<ConnectionRow> = self
                    .get_rows(op, &self.st.connections_of, (some,), usize::MAX)
                    .await?;
                Ok::<_, StoreError>(rows)
            }
        });
        let found = futures::future::try_join_all(reads).await?;
        Ok(found.into_iter().flatten().map(Connection::from).collect())
    }

    async fn put_pulled_connections(
        &self,
        author: &str,
        connections: &[Connection],
    ) -> Result<(), StoreError> {
        let writes: Vec<_> = connections
            .iter()
            .map(|c| {
                let values = (author, connection_bucket(&c.user), &c.user, &c.id);
                self.execute(
                    "put_pulled_connections",
                    &self.st.pulled_connection_put,
                    values,
                )
            })
            .collect();
        run_concurrently(writes).await
    }

    async fn delete_pulled_connections(
        &self,
        author: &str,
        connections: &[Connection],
    ) -> Result<(), StoreError> {
        let writes: Vec<_> = connections
            .iter()
            .map(|c| {
                let values = (author, connection_bucket(&c.user), &c.user, &c.id);
                let op = "delete_pulled_connections";
                self.execute(op, &self.st.pulled_connection_delete, values)
            })
            .collect();
        run_concurrently(writes).await
    }

    async fn pulled_connections(&self, author: &str) -> Result<Vec<Connection>, StoreError> {
        let buckets: Vec<i32> = (0..CONNECTION_BUCKETS).collect();
        let rows: Vec<ConnectionRow> = self
            .get_rows(
                "pulled_connections",
                &self.st.pulled_connections_of,
                (author, buckets),
                usize::MAX,
            )
            .await?;
        Ok(rows.into_iter().map(Connection::from).collect())
    }
}

/// Runs the writes with at most [`WRITE_CONCURRENCY`] in flight; the first error wins.
async fn run_concurrently<F>(writes: Vec<F>) -> Result<(), StoreError>
where
    F: std::future::Future<Output = Result<QueryResult, StoreError>>,
{
    futures::stream::iter(writes)
        .buffer_unordered(WRITE_CONCURRENCY)
        .try_for_each(|_| async { Ok(()) })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::model::ActivityId;
    use crate::settings::Env;
    use crate::store::cassandra::{connect, migrate};

    /// The local test cluster's configuration, in its own keyspace.
    fn test_config() -> CassandraConfig {
        let mut cfg = CassandraConfig::read(&Env::process()).expect("FEEDS_CASSANDRA_* variables");
        cfg.keyspace = "feeds_test".to_owned();
        cfg
    }

    async fn test_store() -> CassandraStore {
        let cfg = test_config();
        let session = match connect(&cfg).await {
            Ok(session) => session,
            Err(e) => panic!(
                "Cassandra is not reachable at {} ({e}).\nStart it with `scripts/cassandra.sh start` \
                 (or point FEEDS_CASSANDRA_NODES at a running node).",
                cfg.nodes.join(",")
            ),
        };
        migrate(&session, &cfg).await.expect("migrate");
        migrate(&session, &cfg)
            .await
            .expect("migrate is idempotent");
        CassandraStore::new(Arc::new(session), &cfg)
            .await
            .expect("prepare statements")
    }

    fn activity(actor: &str, foreign_id: &str) -> Activity {
        let time = crate::model::parse_time("2026-11-29T10:00:00.000001Z").unwrap();
        Activity {
            id: ActivityId::new(time).0,
            actor: actor.to_owned(),
            verb: "post".to_owned(),
            object: "obj_1".to_owned(),
            target: None,
            time,
            foreign_id: Some(foreign_id.to_owned()),
            to: Vec::new(),
            extra: None,
        }
    }

    #[tokio::test]
    async fn a_foreign_id_whose_activity_is_missing_is_taken_over_once_its_claim_is_old() {
        let store = test_store().await;
        let actor = format!("actor_{:016x}", rand::random::<u64>());
        // Makes `id` hold the mapping, claimed at `claimed_us`, as a request that crashed before
        // writing its activity would have left it.
        let claim = |id: String, claimed_us: i64| {
            let (store, actor) = (&store, actor.clone());
            async move {
                let (st, actor, id) = (&store.st, actor.as_str(), id.as_str());
                store
                    .execute(
                        "test",
                        &st.foreign_id_claim,
                        (actor, "post:1", id, claimed_us),
                    )
                    .await
                    .unwrap();
                let holder = store
                    .foreign_id_holder(actor, "post:1")
                    .await
                    .unwrap()
                    .expect("a holder");
                let take_over = (id, claimed_us, actor, "post:1", holder.id.as_str());
                store
                    .execute("test", &st.foreign_id_take_over, take_over)
                    .await
                    .unwrap();
            }
        };

        // A request that claimed the foreign_id a moment ago may still be writing its activity.
        let ghost = ActivityId::new(chrono::Utc::now()).0;
        claim(ghost.clone(), now_us()).await;
        let retry = activity(&actor, "post:1");
        match store.put_activity(&retry).await {
            Err(StoreError::Unavailable(message)) => assert!(message.contains(&ghost), "{message}"),
            other => panic!("a young claim is not taken over: {other:?}"),
        }

        // One that claimed it long ago crashed: the retry takes it over.
        let long_ago = now_us() - Duration::from_secs(3600).as_micros() as i64;
        claim(ghost.clone(), long_ago).await;
        let (stored, created) = store.put_activity(&retry).await.unwrap();
        assert!(created, "the crashed claim is taken over");
        assert_eq!(stored, retry);
        assert_eq!(
            store.get_activity(&retry.id).await.unwrap(),
            Some(retry.clone())
        );
        let again = activity(&actor, "post:1");
        assert_eq!(
            store.put_activity(&again).await.unwrap(),
            (retry.clone(), false)
        );

        // Deleting an activity whose mapping was taken over leaves the new holder's mapping alone.
        let mut old = retry.clone();
        old.id = ghost;
        store.delete_activity(&old).await.unwrap();
        assert_eq!(store.put_activity(&again).await.unwrap(), (retry, false));
    }
}
