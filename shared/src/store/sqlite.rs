//! The embedded store: one SQLite file (WAL mode) that also holds the standalone server's durable
//! fan-out queue.

use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension, Row};

use super::{
    Census, Counted, DayRange, EdgeCheck, EdgeSide, GroupRef, GroupSummary, GroupWrite, IdRange,
    NotificationMarks, PulledFollowee, ScanPage, Store, StoreError, StoredGroup, TimelineEntry,
    UserCounts,
};
use crate::model::{from_micros, Activity, FollowEdge, Relation};

const SCHEMA: &str = "
PRAGMA journal_mode = WAL;
PRAGMA synchronous = NORMAL;
CREATE TABLE IF NOT EXISTS follows (
    follower TEXT NOT NULL, following TEXT NOT NULL, created_us INTEGER NOT NULL,
    PRIMARY KEY (follower, following)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS follows_by_following ON follows (following, follower);
CREATE TABLE IF NOT EXISTS activities (
    id TEXT PRIMARY KEY, actor TEXT NOT NULL, verb TEXT NOT NULL, object TEXT NOT NULL, target TEXT,
    time_us INTEGER NOT NULL, foreign_id TEXT, extra TEXT, recipients TEXT,
    version INTEGER NOT NULL DEFAULT 0) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS activities_by_actor ON activities (actor, id);
CREATE UNIQUE INDEX IF NOT EXISTS activities_by_foreign_id ON activities (actor, foreign_id)
    WHERE foreign_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS timeline (
    owner TEXT NOT NULL, id TEXT NOT NULL, actor TEXT NOT NULL, verb TEXT NOT NULL, object TEXT NOT NULL,
    target TEXT, time_us INTEGER NOT NULL, foreign_id TEXT, extra TEXT, recipients TEXT,
    PRIMARY KEY (owner, id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS feed_groups (
    owner TEXT NOT NULL, feed TEXT NOT NULL, day INTEGER NOT NULL, group_key TEXT NOT NULL,
    newest_id TEXT, json TEXT, actors_newest TEXT, clean_us INTEGER NOT NULL DEFAULT 0,
    dirty_us INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (owner, feed, day, group_key)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS pulled_authors (actor TEXT PRIMARY KEY) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS pulled_activities (
    actor TEXT NOT NULL, id TEXT NOT NULL, verb TEXT NOT NULL, object TEXT NOT NULL, target TEXT,
    time_us INTEGER NOT NULL, foreign_id TEXT, extra TEXT, recipients TEXT,
    PRIMARY KEY (actor, id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS notification_marks (
    owner TEXT NOT NULL, kind INTEGER NOT NULL, group_key TEXT NOT NULL,
    added_us INTEGER NOT NULL DEFAULT 0, removed_us INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (owner, kind, group_key)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS notification_clears (
    owner TEXT NOT NULL, kind INTEGER NOT NULL, cleared_us INTEGER NOT NULL,
    PRIMARY KEY (owner, kind)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS user_counts (
    user TEXT PRIMARY KEY, followers INTEGER NOT NULL DEFAULT 0,
    following INTEGER NOT NULL DEFAULT 0, activities INTEGER NOT NULL DEFAULT 0) WITHOUT ROWID;
CREATE TRIGGER IF NOT EXISTS follows_counted AFTER INSERT ON follows BEGIN
    INSERT INTO user_counts (user, followers) VALUES (NEW.following, 1)
        ON CONFLICT DO UPDATE SET followers = followers + 1;
    INSERT INTO user_counts (user, following) VALUES (NEW.follower, 1)
        ON CONFLICT DO UPDATE SET following = following + 1;
END;
CREATE TRIGGER IF NOT EXISTS unfollows_counted AFTER DELETE ON follows BEGIN
    UPDATE user_counts SET followers = followers - 1 WHERE user = OLD.following;
    UPDATE user_counts SET following = following - 1 WHERE user = OLD.follower;
END;
CREATE TRIGGER IF NOT EXISTS activities_counted AFTER INSERT ON activities BEGIN
    INSERT INTO user_counts (user, activities) VALUES (NEW.actor, 1)
        ON CONFLICT DO UPDATE SET activities = activities + 1;
END;
CREATE TRIGGER IF NOT EXISTS deletes_counted AFTER DELETE ON activities BEGIN
    UPDATE user_counts SET activities = activities - 1 WHERE user = OLD.actor;
END;
CREATE TABLE IF NOT EXISTS rate_windows (
    principal TEXT NOT NULL, class TEXT NOT NULL, minute INTEGER NOT NULL, used INTEGER NOT NULL,
    PRIMARY KEY (principal, class, minute)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS pulled_followees (
    user TEXT NOT NULL, followee TEXT NOT NULL, floor TEXT,
    PRIMARY KEY (user, followee)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS connections (
    user TEXT NOT NULL, connection_id TEXT NOT NULL, connected_us INTEGER NOT NULL,
    expires_us INTEGER NOT NULL, PRIMARY KEY (user, connection_id)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS connections_by_expiry ON connections (expires_us);
CREATE TABLE IF NOT EXISTS connection_users (
    connection_id TEXT PRIMARY KEY, user TEXT NOT NULL, expires_us INTEGER NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS connection_users_by_expiry ON connection_users (expires_us);
CREATE TABLE IF NOT EXISTS pulled_connections (
    author TEXT NOT NULL, user TEXT NOT NULL, connection_id TEXT NOT NULL,
    expires_us INTEGER NOT NULL, PRIMARY KEY (author, user, connection_id)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS pulled_connections_by_expiry ON pulled_connections (expires_us);
";

const ACTIVITY_COLUMNS: &str =
    "id, actor, verb, object, target, time_us, foreign_id, extra, recipients";

/// Columns added to tables after their first release, added to an older file when it opens.
const ADDED_COLUMNS: [(&str, &str); 4] = [
    ("activities", "recipients TEXT"),
    ("activities", "version INTEGER NOT NULL DEFAULT 0"),
    ("timeline", "recipients TEXT"),
    ("pulled_activities", "recipients TEXT"),
];

/// Fills `user_counts` from the rows of a file written before it existed.
const COUNT_EXISTING: &str = "
INSERT INTO user_counts (user, followers) SELECT following, COUNT(*) FROM follows WHERE true
    GROUP BY following ON CONFLICT DO UPDATE SET followers = excluded.followers;
INSERT INTO user_counts (user, following) SELECT follower, COUNT(*) FROM follows WHERE true
    GROUP BY follower ON CONFLICT DO UPDATE SET following = excluded.following;
INSERT INTO user_counts (user, activities) SELECT actor, COUNT(*) FROM activities WHERE true
    GROUP BY actor ON CONFLICT DO UPDATE SET activities = excluded.activities;
";

/// `notification_marks.kind`: an unseen group, an unread group.
const UNSEEN: i64 = 0;
const UNREAD: i64 = 1;

/// A shared handle on the database file, used by the store and the embedded queue.
#[derive(Clone)]
pub struct SqliteDb {
    conn: Arc<Mutex<Connection>>,
}

impl SqliteDb {
    /// Opens (creating if needed) the database file and its schema. `:memory:` works for tests.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let path = path.as_ref();
        let conn = Connection::open(path).map_err(|e| {
            StoreError::Unavailable(format!(
                "cannot open SQLite database {}: {e}",
                path.display()
            ))
        })?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(internal)?;
        // Keeps cached statements with a bound LIMIT planned once: without it SQLite prepares
        // them again at each new value, a fifth of a flat read's instructions.
        conn.set_db_config(
            rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
            true,
        )
        .map_err(internal)?;
        let counted = conn
            .prepare("SELECT 1 FROM sqlite_master WHERE name = 'user_counts'")
            .and_then(|mut s| s.exists([]))
            .map_err(internal)?;
        conn.execute_batch(SCHEMA).map_err(internal)?;
        add_columns(&conn, &ADDED_COLUMNS).map_err(internal)?;
        if !counted {
            // A file from before the counts: count what it holds once; triggers keep it since.
            conn.execute_batch(COUNT_EXISTING).map_err(internal)?;
        }
        Ok(SqliteDb {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// Runs blocking SQLite work off the async threads.
    pub async fn run<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            f(&mut guard).map_err(internal)
        })
        .await
        .map_err(|e| StoreError::Internal(format!("SQLite task failed: {e}")))?
    }
}

/// Adds each of `columns` (table, column definition) that its table lacks (a file written by an
/// earlier release).
pub(crate) fn add_columns(conn: &Connection, columns: &[(&str, &str)]) -> rusqlite::Result<()> {
    for (table, column) in columns {
        let name = column.split(' ').next().unwrap_or(column);
        let mut stmt = conn.prepare(&format!(
            "SELECT 1 FROM pragma_table_info('{table}') WHERE name = ?1"
        ))?;
        if !stmt.exists([name])? {
            conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column}"))?;
        }
    }
    Ok(())
}

/// Now and when a connection record written now expires, in microseconds since the epoch: the
/// TTL Cassandra keeps by itself, kept here by reading only unexpired rows.
fn connection_times() -> (i64, i64) {
    let now = chrono::Utc::now().timestamp_micros();
    let ttl = i64::try_from(super::CONNECTION_TTL.as_micros()).unwrap_or(i64::MAX);
    (now, now.saturating_add(ttl))
}

fn internal(e: rusqlite::Error) -> StoreError {
    StoreError::Internal(format!("SQLite: {e}"))
}

fn activity_from_row(row: &Row<'_>) -> rusqlite::Result<Activity> {
    let extra: Option<String> = row.get(7)?;
    let to: Option<String> = row.get(8)?;
    Ok(Activity {
        id: row.get(0)?,
        actor: row.get(1)?,
        verb: row.get(2)?,
        object: row.get(3)?,
        target: row.get(4)?,
        time: from_micros(row.get(5)?),
        foreign_id: row.get(6)?,
        to: to
            .and_then(|text| serde_json::from_str(&text).ok())
            .unwrap_or_default(),
        extra: extra.and_then(|text| serde_json::from_str(&text).ok()),
    })
}

/// `to` as stored: a JSON array, or null when empty.
fn to_text(activity: &Activity) -> Option<String> {
    (!activity.to.is_empty()).then(|| serde_json::Value::from(activity.to.clone()).to_string())
}

fn extra_text(activity: &Activity) -> Option<String> {
    activity
        .extra
        .as_ref()
        .map(|m| serde_json::Value::Object(m.clone()).to_string())
}

pub struct SqliteStore {
    db: SqliteDb,
}

impl SqliteStore {
    pub fn new(db: SqliteDb) -> Self {
        SqliteStore { db }
    }

    pub fn db(&self) -> &SqliteDb {
        &self.db
    }

    async fn relations(
        &self,
        sql: &'static str,
        user: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Relation>, StoreError> {
        let (user, after) = (user.to_owned(), after.unwrap_or("").to_owned());
        self.db
            .run(move |c| {
                let mut stmt = c.prepare_cached(sql)?;
                let rows = stmt.query_map(params![user, after, limit as i64], |r| {
                    Ok(Relation {
                        user: r.get(0)?,
                        since: from_micros(r.get(1)?),
                    })
                })?;
                rows.collect()
            })
            .await
    }

    async fn activities(
        &self,
        sql: &'static str,
        key: &str,
        range: IdRange<'_>,
        limit: usize,
    ) -> Result<Vec<Activity>, StoreError> {
        let key = key.to_owned();
        // Ids are 32 lowercase hex digits, so "g" sorts after every id and "" before.
        let before = range.before.unwrap_or("g").to_owned();
        let not_before = range.not_before.unwrap_or("").to_owned();
        self.db
            .run(move |c| {
                let mut stmt = c.prepare_cached(sql)?;
                let rows = stmt.query_map(
                    params![key, before, not_before, limit as i64],
                    activity_from_row,
                )?;
                rows.collect()
            })
            .await
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn health(&self) -> Result<(), StoreError> {
        self.db
            .run(|c| c.query_row("SELECT 1", [], |_| Ok(())))
            .await
    }

    async fn follow(&self, edge: &FollowEdge) -> Result<(FollowEdge, bool), StoreError> {
        let edge = edge.clone();
        self.db
            .run(move |c| {
                let inserted = c.execute(
                    "INSERT OR IGNORE INTO follows (follower, following, created_us) VALUES (?1, ?2, ?3)",
                    params![edge.follower, edge.following, edge.created_at.timestamp_micros()],
                )?;
                let created_us: i64 = c.query_row(
                    "SELECT created_us FROM follows WHERE follower = ?1 AND following = ?2",
                    params![edge.follower, edge.following],
                    |r| r.get(0),
                )?;
                Ok((FollowEdge { created_at: from_micros(created_us), ..edge }, inserted == 1))
            })
            .await
    }

    async fn unfollow(&self, follower: &str, following: &str) -> Result<(), StoreError> {
        let (a, b) = (follower.to_owned(), following.to_owned());
        self.db
            .run(move |c| {
                c.execute(
                    "DELETE FROM follows WHERE follower = ?1 AND following = ?2",
                    params![a, b],
                )
                .map(drop)
            })
            .await
    }

    async fn is_following(&self, follower: &str, following: &str) -> Result<bool, StoreError> {
        let (a, b) = (follower.to_owned(), following.to_owned());
        self.db
            .run(move |c| {
                c.query_row(
                    "SELECT 1 FROM follows WHERE follower = ?1 AND following = ?2",
                    params![a, b],
                    |_| Ok(()),
                )
                .optional()
                .map(|found| found.is_some())
            })
            .await
    }

    async fn followers(
        &self,
        user: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Relation>, StoreError> {
        const SQL: &str = "SELECT follower, created_us FROM follows WHERE following = ?1 AND follower > ?2 ORDER BY follower LIMIT ?3";
        self.relations(SQL, user, after, limit).await
    }

    async fn following(
        &self,
        user: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Relation>, StoreError> {
        const SQL: &str = "SELECT following, created_us FROM follows WHERE follower = ?1 AND following > ?2 ORDER BY following LIMIT ?3";
        self.relations(SQL, user, after, limit).await
    }

    async fn put_activity(&self, activity: &Activity) -> Result<(Activity, bool), StoreError> {
        let a = activity.clone();
        self.db
            .run(move |c| {
                let tx = c.transaction()?;
                if let Some(foreign_id) = &a.foreign_id {
                    let existing = tx
                        .query_row(
                            &format!("SELECT {ACTIVITY_COLUMNS} FROM activities WHERE actor = ?1 AND foreign_id = ?2"),
                            params![a.actor, foreign_id],
                            activity_from_row,
                        )
                        .optional()?;
                    if let Some(existing) = existing {
                        return Ok((existing, false));
                    }
                }
                tx.execute(
                    &format!("INSERT INTO activities ({ACTIVITY_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"),
                    params![a.id, a.actor, a.verb, a.object, a.target, a.time.timestamp_micros(), a.foreign_id, extra_text(&a), to_text(&a)],
                )?;
                tx.commit()?;
                Ok((a, true))
            })
            .await
    }

    async fn get_activity(&self, id: &str) -> Result<Option<Activity>, StoreError> {
        let id = id.to_owned();
        self.db
            .run(move |c| {
                c.query_row(
                    &format!("SELECT {ACTIVITY_COLUMNS} FROM activities WHERE id = ?1"),
                    params![id],
                    activity_from_row,
                )
                .optional()
            })
            .await
    }

    async fn get_versioned(&self, id: &str) -> Result<Option<(Activity, i64)>, StoreError> {
        let id = id.to_owned();
        self.db
            .run(move |c| {
                c.query_row(
                    &format!("SELECT {ACTIVITY_COLUMNS}, version FROM activities WHERE id = ?1"),
                    params![id],
                    |row| Ok((activity_from_row(row)?, row.get(9)?)),
                )
                .optional()
            })
            .await
    }

    async fn update_activity(&self, activity: &Activity, version: i64) -> Result<bool, StoreError> {
        // The activities row is the actor's feed row here.
        let a = activity.clone();
        self.db
            .run(move |c| {
                c.execute(
                    "UPDATE activities SET target = ?1, extra = ?2, version = version + 1 \
                     WHERE id = ?3 AND version = ?4",
                    params![a.target, extra_text(&a), a.id, version],
                )
                .map(|changed| changed == 1)
            })
            .await
    }

    async fn rewrite_own_copies(
        &self,
        activity: &Activity,
        pulled: bool,
    ) -> Result<(), StoreError> {
        if !pulled {
            return Ok(());
        }
        let a = activity.clone();
        self.db
            .run(move |c| {
                c.execute(
                    "UPDATE pulled_activities SET target = ?1, extra = ?2 WHERE actor = ?3 AND id = ?4",
                    params![a.target, extra_text(&a), a.actor, a.id],
                )
                .map(drop)
            })
            .await
    }

    async fn remove_own_copies(&self, activity: &Activity) -> Result<(), StoreError> {
        // The actor's feed row is the activities row, which a rewrite never brings back.
        self.delete_pulled(&activity.actor, &activity.id).await
    }

    async fn rewrite_timeline(&self, entries: &[TimelineEntry]) -> Result<(), StoreError> {
        let entries = entries.to_vec();
        self.db
            .run(move |c| {
                let tx = c.transaction()?;
                {
                    let mut stmt = tx.prepare_cached(
                        "UPDATE timeline SET target = ?1, extra = ?2 WHERE owner = ?3 AND id = ?4",
                    )?;
                    for TimelineEntry { owner, activity: a } in &entries {
                        stmt.execute(params![a.target, extra_text(a), owner, a.id])?;
                    }
                }
                tx.commit()
            })
            .await
    }

    async fn delete_activity(&self, activity: &Activity) -> Result<(), StoreError> {
        let id = activity.id.clone();
        self.db
            .run(move |c| {
                c.execute("DELETE FROM activities WHERE id = ?1", params![id])
                    .map(drop)
            })
            .await
    }

    async fn user_feed(
        &self,
        actor: &str,
        range: IdRange<'_>,
        limit: usize,
    ) -> Result<Vec<Activity>, StoreError> {
        const SQL: &str =
            "SELECT id, actor, verb, object, target, time_us, foreign_id, extra, recipients FROM activities \
            WHERE actor = ?1 AND id < ?2 AND id >= ?3 ORDER BY id DESC LIMIT ?4";
        self.activities(SQL, actor, range, limit).await
    }

    async fn timeline(
        &self,
        owner: &str,
        range: IdRange<'_>,
        limit: usize,
    ) -> Result<Vec<Activity>, StoreError> {
        const SQL: &str =
            "SELECT id, actor, verb, object, target, time_us, foreign_id, extra, recipients FROM timeline \
            WHERE owner = ?1 AND id < ?2 AND id >= ?3 ORDER BY id DESC LIMIT ?4";
        self.activities(SQL, owner, range, limit).await
    }

    async fn insert_timeline(&self, entries: &[TimelineEntry]) -> Result<(), StoreError> {
        let entries = entries.to_vec();
        self.db
            .run(move |c| {
                let tx = c.transaction()?;
                {
                    let mut stmt = tx.prepare_cached(&format!(
                        "INSERT OR IGNORE INTO timeline (owner, {ACTIVITY_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"
                    ))?;
                    for TimelineEntry { owner, activity: a } in &entries {
                        stmt.execute(params![
                            owner,
                            a.id,
                            a.actor,
                            a.verb,
                            a.object,
                            a.target,
                            a.time.timestamp_micros(),
                            a.foreign_id,
                            extra_text(a),
                            to_text(a)
                        ])?;
                    }
                }
                tx.commit()
            })
            .await
    }

    async fn delete_timeline(&self, rows: &[(String, String)]) -> Result<(), StoreError> {
        let rows = rows.to_vec();
        self.db
            .run(move |c| {
                let tx = c.transaction()?;
                {
                    let mut stmt =
                        tx.prepare_cached("DELETE FROM timeline WHERE owner = ?1 AND id = ?2")?;
                    for (owner, id) in &rows {
                        stmt.execute(params![owner, id])?;
                    }
                }
                tx.commit()
            })
            .await
    }

    async fn timeline_entries(
        &self,
        rows: &[(String, String)],
    ) -> Result<Vec<TimelineEntry>, StoreError> {
        let rows = rows.to_vec();
        self.db
            .run(move |c| {
                let mut stmt = c.prepare_cached(&format!(
                    "SELECT {ACTIVITY_COLUMNS} FROM timeline WHERE owner = ?1 AND id = ?2"
                ))?;
                let mut found = Vec::new();
                for (owner, id) in rows {
                    if let Some(activity) = stmt
                        .query_row(params![owner, id], activity_from_row)
                        .optional()?
                    {
                        found.push(TimelineEntry { owner, activity });
                    }
                }
                Ok(found)
            })
            .await
    }

    async fn timeline_id_at(
        &self,
        owner: &str,
        position: usize,
    ) -> Result<Option<String>, StoreError> {
        let owner = owner.to_owned();
        self.db
            .run(move |c| {
                c.query_row(
                    "SELECT id FROM timeline WHERE owner = ?1 ORDER BY id DESC LIMIT 1 OFFSET ?2",
                    params![owner, position as i64],
                    |row| row.get(0),
                )
                .optional()
            })
            .await
    }

    async fn trim_timeline(&self, owner: &str, through: &str) -> Result<(), StoreError> {
        let (owner, through) = (owner.to_owned(), through.to_owned());
        self.db
            .run(move |c| {
                c.execute(
                    "DELETE FROM timeline WHERE owner = ?1 AND id <= ?2",
                    params![owner, through],
                )
                .map(drop)
            })
            .await
    }

    async fn mark_groups(&self, groups: &[GroupRef], at_us: i64) -> Result<(), StoreError> {
        let groups = groups.to_vec();
        self.db
            .run(move |c| {
                let tx = c.transaction()?;
                {
                    let mut stmt = tx.prepare_cached(
                        "INSERT INTO feed_groups (owner, feed, day, group_key, dirty_us) \
                         VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT DO UPDATE \
                         SET dirty_us = max(dirty_us, excluded.dirty_us)",
                    )?;
                    for g in &groups {
                        stmt.execute(params![g.owner, g.feed, g.day, g.key, at_us])?;
                    }
                }
                tx.commit()
            })
            .await
    }

    async fn groups(
        &self,
        owner: &str,
        feed: &str,
        days: DayRange,
        limit: usize,
    ) -> Result<Vec<StoredGroup>, StoreError> {
        let (owner, feed) = (owner.to_owned(), feed.to_owned());
        let max = days.max.unwrap_or(i32::MAX);
        let min = days.min.unwrap_or(i32::MIN);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.db
            .run(move |c| {
                let mut stmt = c.prepare_cached(
                    "SELECT day, group_key, newest_id, json, clean_us, dirty_us, actors_newest \
                     FROM feed_groups \
                     WHERE owner = ?1 AND feed = ?2 AND day <= ?3 AND day >= ?4 \
                     ORDER BY day DESC, group_key LIMIT ?5",
                )?;
                let rows = stmt.query_map(params![owner, feed, max, min, limit], |row| {
                    let newest_id: Option<String> = row.get(2)?;
                    let json: Option<String> = row.get(3)?;
                    let actors_newest: Option<String> = row.get(6)?;
                    Ok(StoredGroup {
                        day: row.get(0)?,
                        key: row.get(1)?,
                        summary: newest_id.zip(json).map(|(newest_id, json)| GroupSummary {
                            newest_id,
                            json,
                            actors_newest: actors_newest.unwrap_or_default(),
                        }),
                        clean_us: row.get(4)?,
                        dirty_us: row.get(5)?,
                    })
                })?;
                rows.collect()
            })
            .await
    }

    async fn drop_groups(
        &self,
        owner: &str,
        feed: &str,
        day: i32,
        at_us: i64,
    ) -> Result<(), StoreError> {
        let (owner, feed) = (owner.to_owned(), feed.to_owned());
        self.db
            .run(move |c| {
                c.execute(
                    "DELETE FROM feed_groups WHERE owner = ?1 AND feed = ?2 AND day < ?3 \
                     AND dirty_us <= ?4",
                    params![owner, feed, day, at_us],
                )
                .map(drop)
            })
            .await
    }

    async fn put_groups(
        &self,
        owner: &str,
        feed: &str,
        day: i32,
        writes: &[GroupWrite],
        as_of_us: i64,
    ) -> Result<(), StoreError> {
        let (owner, feed, writes) = (owner.to_owned(), feed.to_owned(), writes.to_vec());
        self.db
            .run(move |c| {
                let tx = c.transaction()?;
                {
                    // Only over a summary from an earlier scan; the mark is left as it is. An
                    // empty group keeps its row (no summary) so that an earlier scan's summary
                    // cannot come back over it.
                    let mut put = tx.prepare_cached(
                        "INSERT INTO feed_groups (owner, feed, day, group_key, newest_id, json, clean_us, actors_newest) \
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT DO UPDATE \
                         SET newest_id = excluded.newest_id, json = excluded.json, \
                             clean_us = excluded.clean_us, actors_newest = excluded.actors_newest \
                         WHERE feed_groups.clean_us < excluded.clean_us",
                    )?;
                    for w in &writes {
                        let (newest_id, json, actors) = match &w.summary {
                            Some(s) => (Some(&s.newest_id), Some(&s.json), Some(&s.actors_newest)),
                            None => (None, None, None),
                        };
                        put.execute(params![
                            owner, feed, day, w.key, newest_id, json, as_of_us, actors
                        ])?;
                    }
                }
                tx.commit()
            })
            .await
    }

    async fn is_pulled_author(&self, actor: &str) -> Result<bool, StoreError> {
        let actor = actor.to_owned();
        self.db
            .run(move |c| {
                c.query_row(
                    "SELECT 1 FROM pulled_authors WHERE actor = ?1",
                    params![actor],
                    |_| Ok(()),
                )
                .optional()
                .map(|found| found.is_some())
            })
            .await
    }

    async fn mark_pulled_author(&self, actor: &str) -> Result<(), StoreError> {
        let actor = actor.to_owned();
        self.db
            .run(move |c| {
                c.execute(
                    "INSERT OR IGNORE INTO pulled_authors (actor) VALUES (?1)",
                    params![actor],
                )
                .map(drop)
            })
            .await
    }

    async fn unmark_pulled_author(&self, actor: &str) -> Result<(), StoreError> {
        let actor = actor.to_owned();
        self.db
            .run(move |c| {
                c.execute(
                    "DELETE FROM pulled_authors WHERE actor = ?1",
                    params![actor],
                )
                .map(drop)
            })
            .await
    }

    async fn put_pulled(&self, activity: &Activity) -> Result<(), StoreError> {
        let a = activity.clone();
        self.db
            .run(move |c| {
                c.execute(
                    &format!("INSERT OR IGNORE INTO pulled_activities ({ACTIVITY_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"),
                    params![a.id, a.actor, a.verb, a.object, a.target, a.time.timestamp_micros(), a.foreign_id, extra_text(&a), to_text(&a)],
                )
                .map(drop)
            })
            .await
    }

    async fn get_pulled(&self, actor: &str, id: &str) -> Result<Option<Activity>, StoreError> {
        let (actor, id) = (actor.to_owned(), id.to_owned());
        self.db
            .run(move |c| {
                c.query_row(
                    &format!(
                        "SELECT {ACTIVITY_COLUMNS} FROM pulled_activities WHERE actor = ?1 AND id = ?2"
                    ),
                    params![actor, id],
                    activity_from_row,
                )
                .optional()
            })
            .await
    }

    async fn delete_pulled(&self, actor: &str, id: &str) -> Result<(), StoreError> {
        let (actor, id) = (actor.to_owned(), id.to_owned());
        self.db
            .run(move |c| {
                c.execute(
                    "DELETE FROM pulled_activities WHERE actor = ?1 AND id = ?2",
                    params![actor, id],
                )
                .map(drop)
            })
            .await
    }

    async fn pulled(
        &self,
        actor: &str,
        range: IdRange<'_>,
        limit: usize,
    ) -> Result<Vec<Activity>, StoreError> {
        const SQL: &str =
            "SELECT id, actor, verb, object, target, time_us, foreign_id, extra, recipients FROM pulled_activities \
            WHERE actor = ?1 AND id < ?2 AND id >= ?3 ORDER BY id DESC LIMIT ?4";
        self.activities(SQL, actor, range, limit).await
    }

    async fn put_pulled_followee(
        &self,
        user: &str,
        followee: &str,
        floor: Option<&str>,
    ) -> Result<(), StoreError> {
        let (user, followee, floor) = (
            user.to_owned(),
            followee.to_owned(),
            floor.map(str::to_owned),
        );
        self.db
            .run(move |c| {
                c.execute(
                    "INSERT INTO pulled_followees (user, followee, floor) VALUES (?1, ?2, ?3) \
                     ON CONFLICT DO UPDATE SET floor = excluded.floor",
                    params![user, followee, floor],
                )
                .map(drop)
            })
            .await
    }

    async fn delete_pulled_followee(&self, user: &str, followee: &str) -> Result<(), StoreError> {
        let (user, followee) = (user.to_owned(), followee.to_owned());
        self.db
            .run(move |c| {
                c.execute(
                    "DELETE FROM pulled_followees WHERE user = ?1 AND followee = ?2",
                    params![user, followee],
                )
                .map(drop)
            })
            .await
    }

    async fn pulled_followees(&self, user: &str) -> Result<Vec<PulledFollowee>, StoreError> {
        let user = user.to_owned();
        self.db
            .run(move |c| {
                let mut stmt = c.prepare_cached(
                    "SELECT followee, floor FROM pulled_followees WHERE user = ?1 ORDER BY followee",
                )?;
                let rows = stmt.query_map(params![user], |row| {
                    Ok(PulledFollowee {
                        followee: row.get(0)?,
                        floor: row.get(1)?,
                    })
                })?;
                rows.collect()
            })
            .await
    }

    async fn user_counts(&self, user: &str) -> Result<UserCounts, StoreError> {
        let user = user.to_owned();
        self.db
            .run(move |c| {
                let mut stmt = c.prepare_cached(
                    "SELECT followers, following, activities FROM user_counts WHERE user = ?1",
                )?;
                let n = |v: i64| v.max(0) as u64;
                let counts = stmt
                    .query_row(params![user], |row| {
                        Ok(UserCounts {
                            followers: n(row.get(0)?),
                            following: n(row.get(1)?),
                            activities: n(row.get(2)?),
                        })
                    })
                    .optional()?;
                Ok(counts.unwrap_or_default())
            })
            .await
    }

    /// Kept exact by triggers, in the transaction of each change.
    async fn recount(&self, _: &str, _: Counted, _: i64) -> Result<(), StoreError> {
        Ok(())
    }

    async fn take_allowance(
        &self,
        principal: &str,
        class: &str,
        minute: i64,
        want: u64,
        limit: u64,
    ) -> Result<u64, StoreError> {
        let (principal, class) = (principal.to_owned(), class.to_owned());
        let (want_i, limit_i) = (want as i64, limit as i64);
        self.db
            .run(move |c| {
                let tx = c.transaction()?;
                let used: i64 = tx.query_row(
                    "SELECT used FROM rate_windows WHERE principal = ?1 AND class = ?2 AND minute = ?3",
                    params![principal, class, minute],
                    |row| row.get(0),
                ).optional()?.unwrap_or(0);
                let granted = want_i.min((limit_i - used).max(0));
                if granted > 0 {
                    tx.execute(
                        "INSERT INTO rate_windows (principal, class, minute, used) VALUES (?1, ?2, ?3, ?4) \
                         ON CONFLICT DO UPDATE SET used = used + excluded.used",
                        params![principal, class, minute, granted],
                    )?;
                    tx.execute(
                        "DELETE FROM rate_windows WHERE principal = ?1 AND class = ?2 AND minute < ?3",
                        params![principal, class, minute],
                    )?;
                }
                tx.commit()?;
                Ok(granted as u64)
            })
            .await
    }

    async fn notification_marks(&self, owner: &str) -> Result<NotificationMarks, StoreError> {
        let owner = owner.to_owned();
        self.db
            .run(move |c| {
                let mut stmt = c.prepare_cached(
                    "SELECT m.kind, m.group_key FROM notification_marks m \
                     LEFT JOIN notification_clears k ON k.owner = m.owner AND k.kind = m.kind \
                     WHERE m.owner = ?1 AND m.added_us > m.removed_us \
                     AND m.added_us > COALESCE(k.cleared_us, 0)",
                )?;
                let mut marks = NotificationMarks::default();
                let rows = stmt.query_map(params![owner], |row| {
                    Ok((row.get::<_, i64>(0)?, row.get::<_, String>(1)?))
                })?;
                for row in rows {
                    let (kind, key) = row?;
                    match kind {
                        UNSEEN => marks.unseen.insert(key),
                        _ => marks.unread.insert(key),
                    };
                }
                Ok(marks)
            })
            .await
    }

    async fn add_notification_marks(
        &self,
        owner: &str,
        keys: &[String],
        at_us: i64,
    ) -> Result<(), StoreError> {
        let (owner, keys) = (owner.to_owned(), keys.to_vec());
        self.db
            .run(move |c| {
                let tx = c.transaction()?;
                {
                    let mut stmt = tx.prepare_cached(
                        "INSERT INTO notification_marks (owner, kind, group_key, added_us) \
                         VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO UPDATE \
                         SET added_us = max(added_us, excluded.added_us)",
                    )?;
                    for key in &keys {
                        for kind in [UNSEEN, UNREAD] {
                            stmt.execute(params![owner, kind, key, at_us])?;
                        }
                    }
                }
                tx.commit()
            })
            .await
    }

    async fn erase_notification_marks(&self, owner: &str, at_us: i64) -> Result<(), StoreError> {
        let owner = owner.to_owned();
        self.db
            .run(move |c| {
                let tx = c.transaction()?;
                tx.execute(
                    "DELETE FROM notification_marks WHERE owner = ?1 AND added_us <= ?2",
                    params![owner, at_us],
                )?;
                tx.execute(
                    "DELETE FROM notification_clears WHERE owner = ?1",
                    params![owner],
                )?;
                tx.commit()
            })
            .await
    }

    async fn remove_notification_marks(
        &self,
        owner: &str,
        keys: Option<&[String]>,
        read: bool,
        at_us: i64,
    ) -> Result<(), StoreError> {
        let (owner, keys) = (owner.to_owned(), keys.map(<[String]>::to_vec));
        let kinds: &'static [i64] = if read { &[UNSEEN, UNREAD] } else { &[UNSEEN] };
        self.db
            .run(move |c| {
                let tx = c.transaction()?;
                {
                    let mut remove = tx.prepare_cached(
                        "INSERT INTO notification_marks (owner, kind, group_key, removed_us) \
                         VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO UPDATE \
                         SET removed_us = max(removed_us, excluded.removed_us)",
                    )?;
                    let mut clear = tx.prepare_cached(
                        "INSERT INTO notification_clears (owner, kind, cleared_us) \
                         VALUES (?1, ?2, ?3) ON CONFLICT DO UPDATE \
                         SET cleared_us = max(cleared_us, excluded.cleared_us)",
                    )?;
                    for &kind in kinds {
                        match &keys {
                            Some(keys) => {
                                for key in keys {
                                    remove.execute(params![owner, kind, key, at_us])?;
                                }
                            }
                            None => {
                                clear.execute(params![owner, kind, at_us])?;
                            }
                        }
                    }
                }
                tx.commit()
            })
            .await
    }

    async fn scan_edges(
        &self,
        side: EdgeSide,
        from: Option<&str>,
        page: usize,
    ) -> Result<ScanPage<(String, String)>, StoreError> {
        // Keyset pages: the position is the last key, as a JSON pair.
        let (a, b): (String, String) = match from {
            None => Default::default(),
            Some(text) => serde_json::from_str(text).map_err(|e| {
                StoreError::Internal(format!("not a position of an edge scan: {text:?}: {e}"))
            })?,
        };
        let sql = match side {
            EdgeSide::Following => {
                "SELECT follower, following FROM follows \
                WHERE (follower, following) > (?1, ?2) ORDER BY follower, following LIMIT ?3"
            }
            EdgeSide::Followers => {
                "SELECT follower, following FROM follows \
                WHERE (following, follower) > (?1, ?2) ORDER BY following, follower LIMIT ?3"
            }
        };
        let limit = page.max(1);
        let items: Vec<(String, String)> = self
            .db
            .run(move |c| {
                let mut stmt = c.prepare_cached(sql)?;
                let rows =
                    stmt.query_map(params![a, b, limit as i64], |r| Ok((r.get(0)?, r.get(1)?)))?;
                rows.collect()
            })
            .await?;
        let next = match items.last() {
            Some((follower, followee)) if items.len() == limit => {
                let key = match side {
                    EdgeSide::Following => (follower, followee),
                    EdgeSide::Followers => (followee, follower),
                };
                Some(serde_json::to_string(&key).map_err(|e| StoreError::Internal(e.to_string()))?)
            }
            _ => None,
        };
        Ok(ScanPage { items, next })
    }

    /// One row per edge: its two sides cannot disagree.
    async fn check_edge(&self, _: &str, _: &str, _: bool) -> Result<EdgeCheck, StoreError> {
        Ok(EdgeCheck::InStep)
    }

    async fn scan_activities(
        &self,
        from: Option<&str>,
        page: usize,
    ) -> Result<ScanPage<Activity>, StoreError> {
        let after = from.unwrap_or("").to_owned();
        let limit = page.max(1);
        let items: Vec<Activity> = self
            .db
            .run(move |c| {
                let mut stmt = c.prepare_cached(&format!(
                    "SELECT {ACTIVITY_COLUMNS} FROM activities WHERE id > ?1 ORDER BY id LIMIT ?2"
                ))?;
                let rows = stmt.query_map(params![after, limit as i64], activity_from_row)?;
                rows.collect()
            })
            .await?;
        let next = (items.len() == limit)
            .then(|| items.last().map(|a| a.id.clone()))
            .flatten();
        Ok(ScanPage { items, next })
    }

    async fn census(
        &self,
        what: Census,
        _: Option<&str>,
        _: usize,
    ) -> Result<(u64, Option<String>), StoreError> {
        let sql = match what {
            Census::Users => {
                "SELECT count(*) FROM user_counts \
                WHERE followers > 0 OR following > 0 OR activities > 0"
            }
            Census::Edges | Census::FollowerRows => "SELECT count(*) FROM follows",
            Census::Activities => "SELECT count(*) FROM activities",
        };
        let n: i64 = self
            .db
            .run(move |c| c.query_row(sql, [], |r| r.get(0)))
            .await?;
        Ok((n.max(0) as u64, None))
    }

    async fn put_connection(&self, connection: &super::Connection) -> Result<(), StoreError> {
        let conn = connection.clone();
        let (now, expires) = connection_times();
        self.db
            .run(move |c| {
                let tx = c.transaction()?;
                // Expired rows go as new ones come: what Cassandra's TTL does by itself.
                for table in ["connections", "connection_users", "pulled_connections"] {
                    tx.prepare_cached(&format!("DELETE FROM {table} WHERE expires_us <= ?1"))?
                        .execute(params![now])?;
                }
                tx.prepare_cached(
                    "INSERT INTO connections (user, connection_id, connected_us, expires_us) \
                     VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO UPDATE SET expires_us = excluded.expires_us",
                )?
                .execute(params![conn.user, conn.id, now, expires])?;
                tx.prepare_cached(
                    "INSERT INTO connection_users (connection_id, user, expires_us) VALUES (?1, ?2, ?3) \
                     ON CONFLICT DO UPDATE SET user = excluded.user, expires_us = excluded.expires_us",
                )?
                .execute(params![conn.id, conn.user, expires])?;
                tx.commit()
            })
            .await
    }

    async fn delete_connection(&self, connection: &super::Connection) -> Result<(), StoreError> {
        let conn = connection.clone();
        self.db
            .run(move |c| {
                let tx = c.transaction()?;
                tx.execute(
                    "DELETE FROM connections WHERE user = ?1 AND connection_id = ?2",
                    params![conn.user, conn.id],
                )?;
                tx.execute(
                    "DELETE FROM connection_users WHERE connection_id = ?1",
                    params![conn.id],
                )?;
                tx.commit()
            })
            .await
    }

    async fn connection_user(&self, id: &str) -> Result<Option<String>, StoreError> {
        let id = id.to_owned();
        let (now, _) = connection_times();
        self.db
            .run(move |c| {
                c.prepare_cached(
                    "SELECT user FROM connection_users WHERE connection_id = ?1 AND expires_us > ?2",
                )?
                .query_row(params![id, now], |row| row.get(0))
                .optional()
            })
            .await
    }

    async fn connections(&self, users: &[String]) -> Result<Vec<super::Connection>, StoreError> {
        let users = users.to_vec();
        let (now, _) = connection_times();
        self.db
            .run(move |c| {
                let mut stmt = c.prepare_cached(
                    "SELECT connection_id FROM connections WHERE user = ?1 AND expires_us > ?2 \
                     ORDER BY connection_id",
                )?;
                let mut found = Vec::new();
                for user in users {
                    let ids = stmt.query_map(params![user, now], |row| row.get::<_, String>(0))?;
                    for id in ids {
                        found.push(super::Connection {
                            user: user.clone(),
                            id: id?,
                        });
                    }
                }
                Ok(found)
            })
            .await
    }

    async fn put_pulled_connections(
        &self,
        author: &str,
        connections: &[super::Connection],
    ) -> Result<(), StoreError> {
        let (author, connections) = (author.to_owned(), connections.to_vec());
        let (_, expires) = connection_times();
        self.db
            .run(move |c| {
                let tx = c.transaction()?;
                {
                    let mut stmt = tx.prepare_cached(
                        "INSERT INTO pulled_connections (author, user, connection_id, expires_us) \
                         VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO UPDATE SET expires_us = excluded.expires_us",
                    )?;
                    for conn in &connections {
                        stmt.execute(params![author, conn.user, conn.id, expires])?;
                    }
                }
                tx.commit()
            })
            .await
    }

    async fn delete_pulled_connections(
        &self,
        author: &str,
        connections: &[super::Connection],
    ) -> Result<(), StoreError> {
        let (author, connections) = (author.to_owned(), connections.to_vec());
        self.db
            .run(move |c| {
                let tx = c.transaction()?;
                {
                    let mut stmt = tx.prepare_cached(
                        "DELETE FROM pulled_connections WHERE author = ?1 AND user = ?2 AND connection_id = ?3",
                    )?;
                    for conn in &connections {
                        stmt.execute(params![author, conn.user, conn.id])?;
                    }
                }
                tx.commit()
            })
            .await
    }

    async fn pulled_connections(&self, author: &str) -> Result<Vec<super::Connection>, StoreError> {
        let author = author.to_owned();
        let (now, _) = connection_times();
        self.db
            .run(move |c| {
                let mut stmt = c.prepare_cached(
                    "SELECT user, connection_id FROM pulled_connections \
                     WHERE author = ?1 AND expires_us > ?2 ORDER BY user, connection_id",
                )?;
                let rows = stmt.query_map(params![author, now], |row| {
                    Ok(super::Connection {
                        user: row.get(0)?,
                        id: row.get(1)?,
                    })
                })?;
                rows.collect()
            })
            .await
    }
}
