//! Aggregated feeds, computed from the timeline at read time. Groups are per UTC day, so every group
//! of a day is built from one contiguous slice of the timeline and a page never splits a group.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Days, NaiveDate, Utc};
use serde::Serialize;

use crate::model::{day_of, serialize_time, start_of_day, Activity, ActivityId};
use crate::store::{IdRange, Store, StoreError};

/// Activities listed in a group.
pub const GROUP_ACTIVITIES: usize = 15;
/// Rows read per query while scanning one day of a timeline.
const SCAN_PAGE: usize = 1000;

/// How activities of one day are grouped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Grouping {
    /// `"<verb>:<YYYY-MM-DD>"`, the default.
    #[default]
    VerbDay,
    /// `"<verb>:<actor>:<YYYY-MM-DD>"`.
    VerbActorDay,
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
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
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
    /// The newest activity's id: orders groups whose `updated_at` ties.
    #[serde(skip)]
    newest_id: String,
}

/// Where a page of groups starts: a day, and how many of its groups earlier pages took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupPosition {
    pub day: NaiveDate,
    pub skip: usize,
}

impl GroupPosition {
    pub fn encode(&self) -> String {
        format!("{}|{}", self.day.format("%Y-%m-%d"), self.skip)
    }

    pub fn decode(text: &str) -> Option<Self> {
        let (day, skip) = text.split_once('|')?;
        Some(GroupPosition {
            day: NaiveDate::parse_from_str(day, "%Y-%m-%d").ok()?,
            skip: skip.parse().ok()?,
        })
    }
}

/// The groups of one day of `owner`'s timeline, newest `updated_at` first.
async fn groups_of_day(
    store: &dyn Store,
    owner: &str,
    day: NaiveDate,
    grouping: Grouping,
) -> Result<Vec<AggregatedGroup>, StoreError> {
    let not_before = ActivityId::floor(start_of_day(day));
    let end = day
        .checked_add_days(Days::new(1))
        .map(|d| ActivityId::floor(start_of_day(d)));
    let mut before = end;
    let mut groups: HashMap<String, AggregatedGroup> = HashMap::new();
    let mut actors_seen: HashMap<String, HashSet<String>> = HashMap::new();
    loop {
        let range = IdRange {
            before: before.as_deref(),
            not_before: Some(&not_before),
        };
        let page = store.timeline(owner, range, SCAN_PAGE).await?;
        let full = page.len() == SCAN_PAGE;
        before = page.last().map(|a| a.id.clone());
        // Newest first: the first activity a group sees is its newest.
        for a in page {
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
                });
            group.activity_count += 1;
            group.created_at = a.time;
            if actors_seen.entry(key).or_default().insert(a.actor.clone()) {
                group.actors.push(a.actor.clone());
                group.actor_count += 1;
            }
            if group.activities.len() < GROUP_ACTIVITIES {
                group.activities.push(a);
            }
        }
        if !full {
            break;
        }
    }
    let mut groups: Vec<AggregatedGroup> = groups.into_values().collect();
    groups.sort_by(|a, b| {
        b.updated_at
            .cmp(&a.updated_at)
            .then_with(|| b.newest_id.cmp(&a.newest_id))
    });
    Ok(groups)
}

/// One page of `owner`'s aggregated feed and the position of the next page (`None` at the end).
pub async fn page(
    store: &dyn Store,
    owner: &str,
    from: Option<GroupPosition>,
    limit: usize,
    grouping: Grouping,
) -> Result<(Vec<AggregatedGroup>, Option<GroupPosition>), StoreError> {
    let mut position = match from {
        Some(p) => p,
        None => match store.timeline(owner, IdRange::default(), 1).await?.first() {
            Some(newest) => GroupPosition {
                day: day_of(newest.time),
                skip: 0,
            },
            None => return Ok((Vec::new(), None)),
        },
    };
    let mut out = Vec::with_capacity(limit);
    loop {
        let groups = groups_of_day(store, owner, position.day, grouping).await?;
        let remaining: Vec<AggregatedGroup> = groups.into_iter().skip(position.skip).collect();
        let wanted = limit - out.len();
        if remaining.len() > wanted {
            out.extend(remaining.into_iter().take(wanted));
            return Ok((
                out,
                Some(GroupPosition {
                    day: position.day,
                    skip: position.skip + wanted,
                }),
            ));
        }
        out.extend(remaining);
        let day_start = ActivityId::floor(start_of_day(position.day));
        let older = store
            .timeline(
                owner,
                IdRange {
                    before: Some(&day_start),
                    not_before: None,
                },
                1,
            )
            .await?;
        let Some(older) = older.first() else {
            return Ok((out, None));
        };
        position = GroupPosition {
            day: day_of(older.time),
            skip: 0,
        };
        if out.len() == limit {
            return Ok((out, Some(position)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::parse_time;
    use crate::store::sqlite::{SqliteDb, SqliteStore};
    use crate::store::TimelineEntry;

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
            extra: None,
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
        let entries: Vec<TimelineEntry> = acts
            .iter()
            .map(|a| TimelineEntry {
                owner: "r".into(),
                activity: a.clone(),
            })
            .collect();
        store.insert_timeline(&entries).await.unwrap();

        let mut seen = Vec::new();
        let mut from = None;
        loop {
            let (groups, next) = page(&store, "r", from, 5, Grouping::VerbDay).await.unwrap();
            seen.extend(groups);
            match next {
                Some(p) => from = Some(p),
                None => break,
            }
        }
        assert_eq!(seen.len(), 12, "4 days × 3 verbs, each exactly once");
        let names: Vec<&str> = seen.iter().map(|g| g.group.as_str()).collect();
        assert_eq!(
            &names[..3],
            ["share:2026-11-04", "like:2026-11-04", "post:2026-11-04"]
        );
        assert!(
            seen.windows(2).all(|w| w[0].updated_at >= w[1].updated_at),
            "newest updated_at first"
        );
        let share = &seen[0];
        assert_eq!(share.activity_count, 21);
        assert_eq!(share.activities.len(), GROUP_ACTIVITIES);
        assert_eq!(share.actor_count, 3);
        assert_eq!(
            share.actors,
            ["usr_2", "usr_1", "usr_0"],
            "most recent actor first"
        );
        assert_eq!(
            share.created_at,
            parse_time("2026-11-04T11:00:00Z").unwrap()
        );
        assert_eq!(
            share.updated_at,
            parse_time("2026-11-04T11:20:00Z").unwrap()
        );
        assert!(share.activities.windows(2).all(|w| w[0].id > w[1].id));
        let total: usize = seen.iter().map(|g| g.activity_count).sum();
        assert_eq!(total, acts.len(), "no activity in two groups");
    }

    #[tokio::test]
    async fn an_exactly_full_last_page_has_no_next() {
        let store = SqliteStore::new(SqliteDb::open(":memory:").unwrap());
        let a = act("u", "post", "2026-11-01T10:00:00Z");
        let b = act("u", "like", "2026-11-01T11:00:00Z");
        let entries = [a, b].map(|a| TimelineEntry {
            owner: "r".into(),
            activity: a,
        });
        store.insert_timeline(&entries).await.unwrap();
        let (groups, next) = page(&store, "r", None, 2, Grouping::VerbDay).await.unwrap();
        assert_eq!(groups.len(), 2);
        assert_eq!(next, None);
        assert_eq!(
            page(&store, "nobody", None, 2, Grouping::VerbDay)
                .await
                .unwrap()
                .0
                .len(),
            0
        );
    }
}
