//! Aggregated feeds, kept on write. Groups are per UTC day, so every group of a day is built from
//! one contiguous slice of the timeline. Each group has a row in the store holding the group as the
//! API answers it; writers of the timeline never read or rewrite a group, they only mark it
//! (`Store::mark_groups`, after their timeline write). A read serves the stored groups, and first
//! recomputes a day whose groups are marked, from one scan of that day, storing the result as of
//! the scan's start: a mark made after that start keeps the group stale for the next read, and a
//! summary from an earlier scan never replaces a later one. So no update is lost to concurrent
//! writers, redeliveries, deletes, purges or trims, and a page of unchanged groups is one slice.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Days, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::model::{day_of, serialize_time, start_of_day, Activity, ActivityId};
use crate::store::{
    DayRange, GroupRef, GroupSummary, GroupWrite, IdRange, PulledFollowee, Store, StoreError,
    StoredGroup, TimelineEntry,
};

/// Activities listed in a group.
pub const GROUP_ACTIVITIES: usize = 15;
/// Rows read per query while scanning one day of a timeline.
pub const SCAN_PAGE: usize = 1000;
/// Group rows read per query.
pub const GROUP_ROWS: usize = 100;
pub use crate::store::CLOCK_SKEW_US;

/// How activities of one day are grouped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Grouping {
    /// `"<verb>:<YYYY-MM-DD>"`, the default.
    #[default]
    VerbDay,
    /// `"<verb>:<actor>:<YYYY-MM-DD>"`.
    VerbActorDay,
    /// `"<verb>:<object>:<YYYY-MM-DD>"`: notification feeds.
    VerbObjectDay,
}

impl std::str::FromStr for Grouping {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "verb_day" => Ok(Grouping::VerbDay),
            "verb_actor_day" => Ok(Grouping::VerbActorDay),
            other => Err(format!(
                "unknown grouping `{other}` (expected verb_day or verb_actor_day)"
            )),
        }
    }
}

impl Grouping {
    fn key(self, a: &Activity) -> String {
        let day = day_of(a.time).format("%Y-%m-%d");
        match self {
            Grouping::VerbDay => format!("{}:{day}", a.verb),
            Grouping::VerbActorDay => format!("{}:{}:{day}", a.verb, a.actor),
            Grouping::VerbObjectDay => format!("{}:{}:{day}", a.verb, a.object),
        }
    }

    /// The feed's name in the store: each grouping keeps its own groups.
    pub fn feed(self) -> &'static str {
        match self {
            Grouping::VerbDay => "verb_day",
            Grouping::VerbActorDay => "verb_actor_day",
            Grouping::VerbObjectDay => "notification",
        }
    }

    /// The group `activity` belongs to in `owner`'s aggregated feed.
    pub fn group_of(self, owner: &str, activity: &Activity) -> GroupRef {
        GroupRef {
            owner: owner.to_owned(),
            feed: self.feed().to_owned(),
            day: epoch_day(day_of(activity.time)),
            key: self.key(activity),
        }
    }

    /// The groups these timeline rows (`(owner, activity)`) belong to, each once.
    pub fn groups_of<'a>(
        self,
        rows: impl IntoIterator<Item = (&'a str, &'a Activity)>,
    ) -> Vec<GroupRef> {
        let mut groups: Vec<GroupRef> = rows
            .into_iter()
            .map(|(owner, a)| self.group_of(owner, a))
            .collect();
        groups.sort();
        groups.dedup();
        groups
    }
}

/// Writes timeline rows, then marks their groups: after the rows, so that a read recomputing a
/// group before the mark either saw the rows or began before the mark.
pub async fn insert_rows(
    store: &dyn Store,
    grouping: Grouping,
    entries: &[TimelineEntry],
) -> Result<(), StoreError> {
    if entries.is_empty() {
        return Ok(());
    }
    store.insert_timeline(entries).await?;
    mark_rows(store, grouping, entries).await
}

/// Rewrites timeline rows with their activity's current content, then marks their groups.
pub async fn rewrite_rows(
    store: &dyn Store,
    grouping: Grouping,
    entries: &[TimelineEntry],
) -> Result<(), StoreError> {
    if entries.is_empty() {
        return Ok(());
    }
    store.rewrite_timeline(entries).await?;
    mark_rows(store, grouping, entries).await
}

/// Removes timeline rows, then marks their groups.
pub async fn remove_rows(
    store: &dyn Store,
    grouping: Grouping,
    entries: &[TimelineEntry],
) -> Result<(), StoreError> {
    if entries.is_empty() {
        return Ok(());
    }
    let rows: Vec<(String, String)> = entries
        .iter()
        .map(|e| (e.owner.clone(), e.activity.id.clone()))
        .collect();
    store.delete_timeline(&rows).await?;
    mark_rows(store, grouping, entries).await
}

async fn mark_rows(
    store: &dyn Store,
    grouping: Grouping,
    entries: &[TimelineEntry],
) -> Result<(), StoreError> {
    let groups = grouping.groups_of(entries.iter().map(|e| (e.owner.as_str(), &e.activity)));
    store.mark_groups(&groups, now_us()).await
}

/// Days since 1970-01-01.
pub fn epoch_day(day: NaiveDate) -> i32 {
    (day - NaiveDate::default()).num_days() as i32
}

fn from_epoch_day(day: i32) -> NaiveDate {
    NaiveDate::default() + chrono::Duration::days(i64::from(day))
}

/// The day an activity id's time falls on.
pub fn day_of_id(id: &str) -> Option<i32> {
    let us = i64::from_str_radix(id.get(..16)?, 16).ok()?;
    Some(epoch_day(day_of(crate::model::from_micros(us))))
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AggregatedGroup {
    pub id: String,
    pub group: String,
    pub verb: String,
    pub activity_count: usize,
    pub actor_count: usize,
    pub actors: Vec<String>,
    pub activities: Vec<Activity>,
    #[serde(serialize_with = "serialize_time")]
    pub created_at: DateTime<Utc>,
    #[serde(serialize_with = "serialize_time")]
    pub updated_at: DateTime<Utc>,
    /// The newest activity's id: orders groups (its first digits are `updated_at`).
    #[serde(skip)]
    newest_id: String,
    /// Each actor's newest activity id, in the order of `actors`.
    #[serde(skip)]
    actors_newest: Vec<String>,
}

impl AggregatedGroup {
    fn summary(&self) -> Result<GroupSummary, StoreError> {
        let text = |r: serde_json::Result<String>| {
            r.map_err(|e| StoreError::Internal(format!("cannot serialise a group: {e}")))
        };
        Ok(GroupSummary {
            newest_id: self.newest_id.clone(),
            json: text(serde_json::to_string(self))?,
            actors_newest: text(serde_json::to_string(&self.actors_newest))?,
        })
    }

    fn from_summary(summary: &GroupSummary) -> Result<Self, StoreError> {
        let bad = |e: serde_json::Error| {
            StoreError::Internal(format!("a stored group does not parse: {e}"))
        };
        let mut group: AggregatedGroup = serde_json::from_str(&summary.json).map_err(bad)?;
        group.newest_id = summary.newest_id.clone();
        group.actors_newest = serde_json::from_str(&summary.actors_newest).map_err(bad)?;
        Ok(group)
    }

    /// Adds the activities of `other`, a group of the same key with none of this one's.
    fn absorb(&mut self, other: AggregatedGroup) {
        self.activity_count += other.activity_count;
        let mut activities = std::mem::take(&mut self.activities);
        activities.extend(other.activities);
        activities.sort_by(|a, b| b.id.cmp(&a.id));
        activities.truncate(GROUP_ACTIVITIES);
        self.activities = activities;
        let mut newest: HashMap<String, String> = HashMap::new();
        let pairs = std::mem::take(&mut self.actors)
            .into_iter()
            .zip(std::mem::take(&mut self.actors_newest))
            .chain(other.actors.into_iter().zip(other.actors_newest));
        for (actor, id) in pairs {
            let entry = newest.entry(actor).or_default();
            if id > *entry {
                *entry = id;
            }
        }
        let mut actors: Vec<(String, String)> = newest.into_iter().collect();
        actors.sort_by(|a, b| b.1.cmp(&a.1));
        self.actor_count = actors.len();
        (self.actors, self.actors_newest) = actors.into_iter().unzip();
        self.created_at = self.created_at.min(other.created_at);
        self.updated_at = self.updated_at.max(other.updated_at);
        self.newest_id = self.newest_id.clone().max(other.newest_id);
    }
}

/// Where the next page of groups starts: after the group whose newest activity is `newest_id`.
/// Groups are ordered by their newest activity's id, which sorts as `updated_at` does, so a
/// position is a value, not an offset that new groups could shift.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupPosition {
    pub newest_id: String,
    /// Activities of the days newer than `newest_id`'s, counted against the feed's maximum
    /// length when pulled authors are merged in (0 otherwise).
    pub above: usize,
}

impl GroupPosition {
    pub fn new(newest_id: String) -> Self {
        GroupPosition {
            newest_id,
            above: 0,
        }
    }

    /// `<id>`, or `<id>.<above>` when `above` is not 0.
    pub fn encode(&self) -> String {
        match self.above {
            0 => self.newest_id.clone(),
            n => format!("{}.{n}", self.newest_id),
        }
    }

    pub fn decode(text: &str) -> Option<Self> {
        let (id, above) = match text.split_once('.') {
            Some((id, n)) => (id, n.parse().ok().filter(|n| *n > 0)?),
            None => (text, 0),
        };
        ActivityId::is_valid(id).then(|| GroupPosition {
            newest_id: id.to_owned(),
            above,
        })
    }
}

/// The groups of one day's activities (given newest first).
fn build_groups(activities: Vec<Activity>, grouping: Grouping) -> Vec<AggregatedGroup> {
    let mut groups: HashMap<String, AggregatedGroup> = HashMap::new();
    let mut actors_seen: HashMap<String, HashSet<String>> = HashMap::new();
    // Newest first: the first activity a group sees is its newest.
    for a in activities {
        let key = grouping.key(&a);
        let group = groups
            .entry(key.clone())
            .or_insert_with(|| AggregatedGroup {
                id: key.clone(),
                group: key.clone(),
                verb: a.verb.clone(),
                activity_count: 0,
                actor_count: 0,
                actors: Vec::new(),
                activities: Vec::new(),
                created_at: a.time,
                updated_at: a.time,
                newest_id: a.id.clone(),
                actors_newest: Vec::new(),
            });
        group.activity_count += 1;
        group.created_at = a.time;
        if actors_seen.entry(key).or_default().insert(a.actor.clone()) {
            group.actors.push(a.actor.clone());
            group.actors_newest.push(a.id.clone());
            group.actor_count += 1;
        }
        if group.activities.len() < GROUP_ACTIVITIES {
            group.activities.push(a);
        }
    }
    groups.into_values().collect()
}

/// Every activity of `day` in `owner`'s timeline, newest first.
async fn scan_day(store: &dyn Store, owner: &str, day: i32) -> Result<Vec<Activity>, StoreError> {
    let (not_before, mut before) = day_bounds(day);
    let mut out = Vec::new();
    loop {
        let range = IdRange {
            before: before.as_deref(),
            not_before: Some(&not_before),
        };
        let page = store.timeline(owner, range, SCAN_PAGE).await?;
        let full = page.len() == SCAN_PAGE;
        before = page.last().map(|a| a.id.clone());
        out.extend(page);
        if !full {
            return Ok(out);
        }
    }
}

/// The bounds of `day` as activity ids: from its first possible id, to before the next day's.
fn day_bounds(day: i32) -> (String, Option<String>) {
    let date = from_epoch_day(day);
    let end = date
        .checked_add_days(Days::new(1))
        .map(|d| ActivityId::floor(start_of_day(d)));
    (ActivityId::floor(start_of_day(date)), end)
}

fn served(summary: GroupSummary) -> Result<Box<RawValue>, StoreError> {
    RawValue::from_string(summary.json)
        .map_err(|e| StoreError::Internal(format!("a stored group is not JSON: {e}")))
}

/// The groups of one day of the timeline: the stored ones, or, when any is stale, all of the
/// day's recomputed from one scan and stored.
async fn day_groups(
    store: &dyn Store,
    owner: &str,
    grouping: Grouping,
    day: i32,
    rows: Vec<StoredGroup>,
    scan_time: impl Fn() -> i64,
) -> Result<Vec<GroupSummary>, StoreError> {
    if !rows.iter().any(StoredGroup::is_stale) {
        return Ok(rows.into_iter().filter_map(|r| r.summary).collect());
    }
    // Taken before the scan: whatever the scan misses was marked after this.
    let as_of = scan_time();
    let built = build_groups(scan_day(store, owner, day).await?, grouping);
    let summaries = built
        .iter()
        .map(AggregatedGroup::summary)
        .collect::<Result<Vec<_>, _>>()?;
    let found: HashSet<&str> = built.iter().map(|g| g.group.as_str()).collect();
    let mut writes: Vec<GroupWrite> = rows
        .iter()
        .filter(|r| !found.contains(r.key.as_str()))
        .map(|r| GroupWrite {
            key: r.key.clone(),
            summary: None,
        })
        .collect();
    for (g, summary) in built.iter().zip(&summaries) {
        writes.push(GroupWrite {
            key: g.group.clone(),
            summary: Some(summary.clone()),
        });
    }
    store
        .put_groups(owner, grouping.feed(), day, &writes, as_of)
        .await?;
    Ok(summaries)
}

/// The ids of the groups that `owner`'s timeline holds activities of on `day`, from one scan of
/// its rows (not its stored groups, which lag behind the rows).
pub async fn live_group_keys(
    store: &dyn Store,
    owner: &str,
    grouping: Grouping,
    day: i32,
) -> Result<HashSet<String>, StoreError> {
    let rows = scan_day(store, owner, day).await?;
    Ok(rows.iter().map(|a| grouping.key(a)).collect())
}

/// The activities of the pulled authors a reader follows, read ahead newest first for one page:
/// one read per author and page, more only when an author posted more than a read takes.
struct PulledAhead<'a> {
    store: &'a dyn Store,
    authors: Vec<AuthorAhead<'a>>,
}

struct AuthorAhead<'a> {
    followee: &'a PulledFollowee,
    /// Read and not yet merged, newest first.
    buffer: std::collections::VecDeque<Activity>,
    /// The oldest id read so far: the next read starts below it.
    read_below: Option<String>,
    /// Nothing older is left to read.
    done: bool,
}

/// Pulled activities a read takes per author.
const PULLED_READ: usize = 200;

impl<'a> PulledAhead<'a> {
    fn new(store: &'a dyn Store, pulled: &'a [PulledFollowee]) -> Self {
        let authors = pulled
            .iter()
            .map(|followee| AuthorAhead {
                followee,
                buffer: Default::default(),
                read_below: None,
                done: false,
            })
            .collect();
        PulledAhead { store, authors }
    }

    /// Reads the next activities of each author whose buffer is empty, at or before `max_day`.
    async fn fill(&mut self, max_day: Option<i32>) -> Result<(), StoreError> {
        let day_end = max_day.and_then(|d| day_bounds(d).1);
        let store = self.store;
        let reads = self
            .authors
            .iter_mut()
            .filter(|a| a.buffer.is_empty() && !a.done)
            .map(|a| {
                let before = match (&a.read_below, &day_end) {
                    (Some(x), Some(y)) => Some(x.min(y).clone()),
                    (x, y) => x.clone().or_else(|| y.clone()),
                };
                async move {
                    let range = IdRange {
                        before: before.as_deref(),
                        not_before: a.followee.floor.as_deref(),
                    };
                    let list = store
                        .pulled(&a.followee.followee, range, PULLED_READ)
                        .await?;
                    a.done = list.len() < PULLED_READ;
                    a.read_below = list.last().map(|x| x.id.clone()).or(before);
                    a.buffer.extend(list);
                    Ok::<(), StoreError>(())
                }
            });
        futures::future::try_join_all(reads).await?;
        Ok(())
    }

    /// The newest day at or before `max_day` that holds a pulled activity.
    async fn next_day(&mut self, max_day: Option<i32>) -> Result<Option<i32>, StoreError> {
        self.fill(max_day).await?;
        Ok(self
            .authors
            .iter()
            .filter_map(|a| a.buffer.front())
            .filter_map(|x| day_of_id(&x.id))
            .max())
    }

    /// Every pulled activity of `day` (the newest day left), taken out of the buffers.
    async fn take_day(&mut self, day: i32) -> Result<Vec<Activity>, StoreError> {
        let mut out = Vec::new();
        loop {
            for a in &mut self.authors {
                while a.buffer.front().and_then(|x| day_of_id(&x.id)) == Some(day) {
                    out.extend(a.buffer.pop_front());
                }
            }
            // An author whose buffer ran out within the day may have more of it.
            if self.authors.iter().all(|a| !a.buffer.is_empty() || a.done) {
                return Ok(out);
            }
            self.fill(Some(day)).await?;
        }
    }
}

/// `groups` of a day with that day's pulled `activities` merged in.
fn merge_pulled(
    mut activities: Vec<Activity>,
    grouping: Grouping,
    groups: Vec<GroupSummary>,
) -> Result<Vec<GroupSummary>, StoreError> {
    if activities.is_empty() {
        return Ok(groups);
    }
    activities.sort_by(|a, b| b.id.cmp(&a.id));
    let mut merged: HashMap<String, AggregatedGroup> = HashMap::new();
    for summary in &groups {
        let g = AggregatedGroup::from_summary(summary)?;
        merged.insert(g.group.clone(), g);
    }
    for g in build_groups(activities, grouping) {
        match merged.get_mut(&g.group) {
            Some(stored) => stored.absorb(g),
            None => {
                merged.insert(g.group.clone(), g);
            }
        }
    }
    merged.values().map(AggregatedGroup::summary).collect()
}

/// Group rows of whole days at or before `max_day`, newest day first, from one read (or two, when
/// one day has more groups than a read takes).
async fn stored_days(
    store: &dyn Store,
    owner: &str,
    feed: &str,
    max_day: Option<i32>,
) -> Result<Vec<(i32, Vec<StoredGroup>)>, StoreError> {
    let days = DayRange {
        max: max_day,
        min: None,
    };
    let rows = store.groups(owner, feed, days, GROUP_ROWS).await?;
    let full = rows.len() == GROUP_ROWS;
    let mut by_day: Vec<(i32, Vec<StoredGroup>)> = Vec::new();
    for row in rows {
        match by_day.last_mut() {
            Some((day, list)) if *day == row.day => list.push(row),
            _ => by_day.push((row.day, vec![row])),
        }
    }
    if full {
        // The last day may go on past this read: take it whole, now or on the next read.
        let (last_day, _) = by_day.pop().expect("a full read has a day");
        if by_day.is_empty() {
            let whole = DayRange {
                max: Some(last_day),
                min: Some(last_day),
            };
            by_day.push((
                last_day,
                store.groups(owner, feed, whole, usize::MAX).await?,
            ));
        }
    }
    Ok(by_day)
}

/// One page of `owner`'s aggregated feed, each group as its JSON, and the position of the next
/// page (`None` at the end). The groups of the timeline are stored; the activities of the pulled
/// authors `owner` follows are merged into them, day by day, and then the feed ends at its
/// `max_length` newest activities (the timeline alone is trimmed on write). `scan_time` answers
/// the time a timeline scan starting now is stored as of: [`scan_time`] in production.
pub async fn page(
    store: &dyn Store,
    owner: &str,
    grouping: Grouping,
    from: Option<&GroupPosition>,
    limit: usize,
    max_length: usize,
    scan_time: impl Fn() -> i64 + Copy,
) -> Result<(Vec<Box<RawValue>>, Option<GroupPosition>), StoreError> {
    let feed = grouping.feed();
    let mut max_day = match from {
        Some(p) => Some(day_of_id(&p.newest_id).ok_or_else(|| {
            StoreError::Internal("a group position is not an activity id".into())
        })?),
        None => None,
    };
    let (first, pulled) = tokio::try_join!(
        stored_days(store, owner, feed, max_day),
        store.pulled_followees(owner)
    )?;
    let mut buffer: std::collections::VecDeque<(i32, Vec<StoredGroup>)> = first.into();
    let mut stored_left = !buffer.is_empty();
    let mut ahead = PulledAhead::new(store, &pulled);
    // Activities of the days already walked, counted when pulled activities are merged in.
    let bounded = !pulled.is_empty();
    let mut above = from.map_or(0, |p| p.above);
    let mut out = Vec::with_capacity(limit);
    let mut last: Option<GroupPosition> = None;
    loop {
        if bounded && above >= max_length {
            return Ok((out, None));
        }
        if buffer.is_empty() && stored_left {
            buffer = stored_days(store, owner, feed, max_day).await?.into();
            stored_left = !buffer.is_empty();
        }
        let stored_day = buffer.front().map(|(day, _)| *day);
        let pulled_day = ahead.next_day(max_day).await?;
        let Some(day) = stored_day.max(pulled_day) else {
            return Ok((out, None));
        };
        let rows = match stored_day == Some(day) {
            true => buffer.pop_front().map(|(_, rows)| rows).unwrap_or_default(),
            false => Vec::new(),
        };
        let mut groups = day_groups(store, owner, grouping, day, rows, scan_time).await?;
        let pulled = match pulled_day == Some(day) {
            true => ahead.take_day(day).await?,
            false => Vec::new(),
        };
        let day_above = above;
        if bounded {
            // Merging adds each pulled activity to exactly one group: the day's count is known
            // before the merge, which a cut day does not need.
            let count = day_count(&groups)? + pulled.len();
            groups = if above + count > max_length {
                // The feed ends within this day: its newest activities only, regrouped.
                let keep = max_length - above;
                cut_day(store, owner, grouping, day, pulled, keep).await?
            } else {
                merge_pulled(pulled, grouping, groups)?
            };
            above += count;
        }
        groups.sort_by(|a, b| b.newest_id.cmp(&a.newest_id));
        for summary in groups {
            if from.is_some_and(|p| summary.newest_id >= p.newest_id) {
                continue;
            }
            if out.len() == limit {
                return Ok((out, last));
            }
            last = Some(GroupPosition {
                newest_id: summary.newest_id.clone(),
                above: day_above,
            });
            out.push(served(summary)?);
        }
        max_day = Some(day - 1);
    }
}

/// The activities `groups` count together.
fn day_count(groups: &[GroupSummary]) -> Result<usize, StoreError> {
    #[derive(Deserialize)]
    struct Count {
        activity_count: usize,
    }
    groups.iter().try_fold(0, |sum, g| {
        let c: Count = serde_json::from_str(&g.json)
            .map_err(|e| StoreError::Internal(format!("a stored group does not parse: {e}")))?;
        Ok(sum + c.activity_count)
    })
}

/// The groups of `day` holding only its `keep` newest activities, from the timeline's rows of
/// the day and the day's `pulled` activities.
async fn cut_day(
    store: &dyn Store,
    owner: &str,
    grouping: Grouping,
    day: i32,
    pulled: Vec<Activity>,
    keep: usize,
) -> Result<Vec<GroupSummary>, StoreError> {
    let mut all = scan_day(store, owner, day).await?;
    all.extend(pulled);
    all.sort_by(|a, b| b.id.cmp(&a.id));
    all.dedup_by(|a, b| a.id == b.id);
    all.truncate(keep);
    build_groups(all, grouping)
        .iter()
        .map(AggregatedGroup::summary)
        .collect()
}

/// Microseconds since the epoch, by this machine's clock.
pub fn now_us() -> i64 {
    Utc::now().timestamp_micros()
}

/// The time a timeline scan starting now is stored as of: now, less the clock skew allowed.
pub fn scan_time() -> i64 {
    now_us() - CLOCK_SKEW_US
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::parse_time;
    use crate::store::sqlite::{SqliteDb, SqliteStore};
    use crate::store::TimelineEntry;
    use serde_json::Value;

    fn act(actor: &str, verb: &str, time: &str) -> Activity {
        let time = parse_time(time).unwrap();
        Activity {
            id: ActivityId::new(time).0,
            actor: actor.into(),
            verb: verb.into(),
            object: "o".into(),
            target: None,
            time,
            foreign_id: None,
            to: Vec::new(),
            extra: None,
        }
    }

    /// What the fan-out does: the rows, then their groups' marks.
    async fn deliver(store: &SqliteStore, owner: &str, acts: &[Activity]) {
        let entries: Vec<TimelineEntry> = acts
            .iter()
            .map(|a| TimelineEntry {
                owner: owner.into(),
                activity: a.clone(),
            })
            .collect();
        insert_rows(store, Grouping::VerbDay, &entries)
            .await
            .unwrap();
    }

    async fn walk(store: &SqliteStore, owner: &str, limit: usize) -> Vec<Value> {
        let mut seen = Vec::new();
        let mut from = None;
        loop {
            let (groups, next) = page(
                store,
                owner,
                Grouping::VerbDay,
                from.as_ref(),
                limit,
                usize::MAX,
                now_us,
            )
            .await
            .unwrap();
            assert!(groups.len() <= limit);
            seen.extend(
                groups
                    .iter()
                    .map(|g| serde_json::from_str::<Value>(g.get()).unwrap()),
            );
            match next {
                Some(p) => from = Some(p),
                None => return seen,
            }
        }
    }

    #[tokio::test]
    async fn groups_by_verb_and_day_and_pages_each_group_once() {
        let store = SqliteStore::new(SqliteDb::open(":memory:").unwrap());
        let mut acts = Vec::new();
        for day in 1..=4 {
            for (i, verb) in ["post", "like", "share"].iter().enumerate() {
                for n in 0..(i + 1) * 7 {
                    acts.push(act(
                        &format!("usr_{}", n % 3),
                        verb,
                        &format!("2026-11-0{day}T{:02}:{:02}:00Z", 1 + i * 5, n),
                    ));
                }
            }
        }
        deliver(&store, "r", &acts).await;

        for limit in [1, 2, 5, 12, 100] {
            let seen = walk(&store, "r", limit).await;
            assert_eq!(seen.len(), 12, "4 days × 3 verbs, each exactly once");
            let names: Vec<&str> = seen.iter().map(|g| g["group"].as_str().unwrap()).collect();
            assert_eq!(
                &names[..3],
                ["share:2026-11-04", "like:2026-11-04", "post:2026-11-04"]
            );
            let updated: Vec<&str> = seen
                .iter()
                .map(|g| g["updated_at"].as_str().unwrap())
                .collect();
            assert!(
                updated.windows(2).all(|w| w[0] >= w[1]),
                "newest updated_at first"
            );
            let share = &seen[0];
            assert_eq!(share["activity_count"], 21);
            assert_eq!(
                share["activities"].as_array().unwrap().len(),
                GROUP_ACTIVITIES
            );
            assert_eq!(share["actor_count"], 3);
            assert_eq!(
                share["actors"],
                serde_json::json!(["usr_2", "usr_1", "usr_0"])
            );
            assert_eq!(share["created_at"], "2026-11-04T11:00:00Z");
            assert_eq!(share["updated_at"], "2026-11-04T11:20:00Z");
            let total: u64 = seen
                .iter()
                .map(|g| g["activity_count"].as_u64().unwrap())
                .sum();
            assert_eq!(total as usize, acts.len(), "no activity in two groups");
        }
    }

    #[tokio::test]
    async fn an_exactly_full_last_page_has_no_next() {
        let store = SqliteStore::new(SqliteDb::open(":memory:").unwrap());
        let a = act("u", "post", "2026-11-01T10:00:00Z");
        let b = act("u", "like", "2026-11-01T11:00:00Z");
        deliver(&store, "r", &[a, b]).await;
        let first_page = |owner| {
            page(
                &store,
                owner,
                Grouping::VerbDay,
                None,
                2,
                usize::MAX,
                scan_time,
            )
        };
        let (groups, next) = first_page("r").await.unwrap();
        assert_eq!(groups.len(), 2);
        assert_eq!(next, None);
        let (groups, _) = first_page("nobody").await.unwrap();
        assert!(groups.is_empty());
    }

    #[tokio::test]
    async fn an_unchanged_feed_is_served_from_the_stored_groups() {
        let store = SqliteStore::new(SqliteDb::open(":memory:").unwrap());
        let a = act("u", "post", "2026-11-01T10:00:00Z");
        deliver(&store, "r", std::slice::from_ref(&a)).await;
        let first = walk(&store, "r", 10).await;
        // Rows changed behind the groups' back, without a mark, are not seen: the read did not
        // scan the timeline again.
        let b = act("v", "post", "2026-11-01T11:00:00Z");
        let entry = TimelineEntry {
            owner: "r".into(),
            activity: b.clone(),
        };
        store.insert_timeline(&[entry]).await.unwrap();
        assert_eq!(walk(&store, "r", 10).await, first);
        // Once marked, the day is scanned again.
        deliver(&store, "r", &[b]).await;
        let after = walk(&store, "r", 10).await;
        assert_eq!(after[0]["activity_count"], 2);
        assert_eq!(after[0]["actors"], serde_json::json!(["v", "u"]));
    }

    #[tokio::test]
    async fn a_group_whose_activities_all_left_is_gone() {
        let store = SqliteStore::new(SqliteDb::open(":memory:").unwrap());
        let a = act("u", "post", "2026-11-01T10:00:00Z");
        let b = act("u", "like", "2026-11-01T11:00:00Z");
        deliver(&store, "r", &[a.clone(), b]).await;
        assert_eq!(walk(&store, "r", 10).await.len(), 2);
        store
            .delete_timeline(&[("r".into(), a.id.clone())])
            .await
            .unwrap();
        let groups = Grouping::VerbDay.groups_of([("r", &a)]);
        store.mark_groups(&groups, now_us()).await.unwrap();
        let left = walk(&store, "r", 10).await;
        assert_eq!(left.len(), 1);
        assert_eq!(left[0]["group"], "like:2026-11-01");
    }
}
