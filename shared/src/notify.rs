//! Notification feeds: the activities that name a user in `to`, grouped by verb, object and day,
//! each group seen or not, read or not.
//!
//! A user's notification feed is a timeline of its own under a key no user id can take
//! ([`feed_owner`]): the fan-out keeps it as it keeps a flat feed (rows, group marks, trims) and
//! the aggregated feed's machinery serves its groups. Which groups are unseen and which unread is
//! one row per feed, two sets of group ids written with timestamps: a delivery adds its group just
//! before it writes the row, a mark removes as of the time it runs, so a delivery and a mark that
//! race settle in the order they happened, and a redelivered message (whose row is already there)
//! adds nothing. The counts are the sizes of the sets: one single-row read, never a scan. A group
//! left with no activity (a delete, a trim) leaves the sets once a scan of its day finds no row of
//! it ([`prune`]).

use std::collections::HashSet;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::aggregate::{self, GroupPosition, Grouping};
use crate::model::{Activity, ValidationError};
use crate::store::{NotificationMarks, Store, StoreError, TimelineEntry};

/// Notification groups: `"<verb>:<object>:<YYYY-MM-DD>"`.
pub const GROUPING: Grouping = Grouping::VerbObjectDay;

/// Most group ids one mark names.
pub const MAX_MARKED: usize = 100;

/// The timeline key of `user`'s notification feed: `#` is in no user id.
pub fn feed_owner(user: &str) -> String {
    format!("{user}#notifications")
}

/// The user whose notification feed `owner` is, when it is one.
pub fn user_of_feed(owner: &str) -> Option<&str> {
    owner.strip_suffix("#notifications")
}

/// Whom `activity` notifies: its `to`, without its actor.
pub fn recipients(activity: &Activity) -> Vec<String> {
    activity
        .to
        .iter()
        .filter(|u| **u != activity.actor)
        .cloned()
        .collect()
}

/// Marks `activity`'s group unseen and unread in the notification feeds of `users` that do not
/// hold it yet, and answers the timeline rows to write there (after the marks: a mark that runs
/// in between removes what the row then re-adds, never the other way round).
pub async fn prepare_delivery(
    store: &dyn Store,
    activity: &Activity,
    users: &[String],
) -> Result<Vec<TimelineEntry>, StoreError> {
    let rows: Vec<(String, String)> = users
        .iter()
        .map(|u| (feed_owner(u), activity.id.clone()))
        .collect();
    // Redelivered: a feed that holds the row got its marks with it.
    let present: HashSet<String> = store
        .timeline_entries(&rows)
        .await?
        .into_iter()
        .map(|e| e.owner)
        .collect();
    let key = group_of(activity);
    let at = aggregate::now_us();
    let mut entries = Vec::new();
    for (owner, _) in rows {
        if present.contains(&owner) {
            continue;
        }
        store
            .add_notification_marks(&owner, std::slice::from_ref(&key), at)
            .await?;
        entries.push(TimelineEntry {
            owner,
            activity: activity.clone(),
        });
    }
    Ok(entries)
}

/// The group `activity` is in, in a notification feed.
pub fn group_of(activity: &Activity) -> String {
    GROUPING.group_of("", activity).key
}

/// The day a notification group id names (its last 10 characters), as days since 1970.
pub fn day_of_group(key: &str) -> Option<i32> {
    let date = key.get(key.len().checked_sub(10)?..)?;
    chrono::NaiveDate::parse_from_str(date, "%Y-%m-%d")
        .ok()
        .map(aggregate::epoch_day)
}

/// Removes from `owner`'s sets the groups of `day` that no longer hold an activity, and, when
/// `older` is set, every group of an earlier day (a trim cut the feed there). A delivery racing
/// with this writes its row after its marks: a second scan after the removal finds the row, and
/// puts the group back.
pub async fn prune(
    store: &dyn Store,
    owner: &str,
    day: i32,
    older: bool,
) -> Result<(), StoreError> {
    let marks = store.notification_marks(owner).await?;
    let candidates: Vec<&String> = marks
        .unseen
        .union(&marks.unread)
        .filter(|k| match day_of_group(k) {
            Some(d) => d == day || (older && d < day),
            None => true,
        })
        .collect();
    if candidates.is_empty() {
        return Ok(());
    }
    let live = aggregate::live_group_keys(store, owner, GROUPING, day).await?;
    let gone: Vec<String> = candidates
        .into_iter()
        .filter(|k| day_of_group(k) != Some(day) || !live.contains(k.as_str()))
        .cloned()
        .collect();
    if gone.is_empty() {
        return Ok(());
    }
    store
        .remove_notification_marks(owner, Some(&gone), true, aggregate::now_us())
        .await?;
    let now_live = aggregate::live_group_keys(store, owner, GROUPING, day).await?;
    let back: Vec<String> = gone.into_iter().filter(|k| now_live.contains(k)).collect();
    // Delivered while this ran: the new activity makes it unseen and unread again.
    store
        .add_notification_marks(owner, &back, aggregate::now_us())
        .await
}

/// A page of a notification feed: its groups with `is_seen` and `is_read`, where the next page
/// starts, and the feed's counts.
pub struct NotificationPage {
    pub groups: Vec<Box<RawValue>>,
    pub next: Option<GroupPosition>,
    pub unseen: usize,
    pub unread: usize,
}

#[derive(Deserialize)]
struct GroupId<'a> {
    #[serde(borrow)]
    id: std::borrow::Cow<'a, str>,
}

/// `group` (a JSON object) with `"is_seen"` and `"is_read"` added.
fn with_state(group: &RawValue, marks: &NotificationMarks) -> Result<Box<RawValue>, StoreError> {
    let text = group.get();
    let id: GroupId = serde_json::from_str(text)
        .map_err(|e| StoreError::Internal(format!("a stored group has no id: {e}")))?;
    let seen = !marks.unseen.contains(id.id.as_ref());
    let read = !marks.unread.contains(id.id.as_ref());
    let body = text.trim_end();
    let Some(open) = body.strip_suffix('}') else {
        return Err(StoreError::Internal(
            "a stored group is not an object".into(),
        ));
    };
    RawValue::from_string(format!("{open},\"is_seen\":{seen},\"is_read\":{read}}}"))
        .map_err(|e| StoreError::Internal(format!("a notification group: {e}")))
}

/// A page of `user`'s notification feed from `from`.
pub async fn page(
    store: &dyn Store,
    user: &str,
    from: Option<&GroupPosition>,
    limit: usize,
) -> Result<NotificationPage, StoreError> {
    let owner = feed_owner(user);
    let (page, marks) = tokio::try_join!(
        aggregate::page(
            store,
            &owner,
            GROUPING,
            from,
            limit,
            usize::MAX, // trimmed on write: no pulled authors here
            aggregate::scan_time,
        ),
        store.notification_marks(&owner)
    )?;
    let (groups, next) = page;
    let groups = groups
        .into_iter()
        .map(|g| with_state(&g, &marks))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(NotificationPage {
        groups,
        next,
        unseen: marks.unseen.len(),
        unread: marks.unread.len(),
    })
}

/// Which groups a mark names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Marked {
    Groups(Vec<String>),
    All,
}

/// The body of `POST /feeds/notification/seen` and `/read`: `{"groups": [...]}` or
/// `{"all": true}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MarkRequest {
    #[serde(default, deserialize_with = "present")]
    pub groups: Option<Vec<String>>,
    #[serde(default, deserialize_with = "present")]
    pub all: Option<bool>,
}

/// A field that may be left out, but not given as `null`.
fn present<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(d).map(Some)
}

/// Longest group id a mark takes: a verb, an object and a day, with their separators.
const MAX_GROUP_ID: usize = 64 + 1 + 128 + 1 + 10;

impl MarkRequest {
    pub fn into_marked(self) -> Result<Marked, ValidationError> {
        let bad = |message: String| ValidationError::new("invalid_mark", message);
        match (self.groups, self.all) {
            (Some(groups), None) => {
                if groups.is_empty() || groups.len() > MAX_MARKED {
                    return Err(bad(format!("`groups` names 1 to {MAX_MARKED} group ids")));
                }
                if let Some(g) = groups
                    .iter()
                    .find(|g| g.is_empty() || g.len() > MAX_GROUP_ID)
                {
                    return Err(bad(format!(
                        "a group id is 1 to {MAX_GROUP_ID} characters, not {}",
                        g.len()
                    )));
                }
                Ok(Marked::Groups(groups))
            }
            (None, Some(true)) => Ok(Marked::All),
            _ => Err(bad(
                "give either `groups` (1 to 100 group ids) or `\"all\": true`".to_owned(),
            )),
        }
    }
}

/// Marks groups of `user`'s notification feed seen (and read, when `read`) and answers the counts
/// after the change: (unseen, unread).
pub async fn mark(
    store: &dyn Store,
    user: &str,
    marked: &Marked,
    read: bool,
) -> Result<(usize, usize), StoreError> {
    let owner = feed_owner(user);
    let keys = match marked {
        Marked::Groups(keys) => Some(keys.as_slice()),
        Marked::All => None,
    };
    store
        .remove_notification_marks(&owner, keys, read, aggregate::now_us())
        .await?;
    let marks = store.notification_marks(&owner).await?;
    Ok((marks.unseen.len(), marks.unread.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_group_key_names_its_day() {
        let day = aggregate::epoch_day(chrono::NaiveDate::from_ymd_opt(2026, 12, 2).unwrap());
        assert_eq!(day_of_group("like:obj:a:b:2026-12-02"), Some(day));
        assert_eq!(day_of_group("2026-12-02"), Some(day));
        assert_eq!(day_of_group("like:obj"), None);
        assert_eq!(day_of_group(""), None);
    }

    #[test]
    fn a_mark_names_groups_or_all() {
        let req = |v: serde_json::Value| serde_json::from_value::<MarkRequest>(v);
        let marked = |v| req(v).unwrap().into_marked();
        assert_eq!(
            marked(serde_json::json!({"groups": ["a"]})),
            Ok(Marked::Groups(vec!["a".into()]))
        );
        assert_eq!(marked(serde_json::json!({"all": true})), Ok(Marked::All));
        for bad in [
            serde_json::json!({}),
            serde_json::json!({"all": false}),
            serde_json::json!({"groups": []}),
            serde_json::json!({"groups": [""]}),
            serde_json::json!({"groups": ["a"], "all": true}),
            serde_json::json!({"groups": vec!["g"; 101]}),
        ] {
            assert!(marked(bad.clone()).is_err(), "{bad}");
        }
        assert!(req(serde_json::json!({"groups": "a"})).is_err());
        assert!(req(serde_json::json!({"all": true, "x": 1})).is_err());
        // A field is left out, not given as null.
        assert!(req(serde_json::json!({"groups": ["a"], "all": null})).is_err());
        assert!(req(serde_json::json!({"groups": null, "all": true})).is_err());
    }

    #[test]
    fn a_feed_key_is_no_user_id() {
        assert!(!crate::model::is_valid_user_id(&feed_owner("usr_1")));
    }

    #[test]
    fn group_state_is_added_to_the_group_object() {
        let marks = NotificationMarks {
            unseen: ["a".to_owned()].into(),
            unread: ["a".to_owned(), "b".to_owned()].into(),
        };
        let group = RawValue::from_string(r#"{"id":"b","x":[1,{"y":"}"}]} "#.into()).unwrap();
        let v: serde_json::Value =
            serde_json::from_str(with_state(&group, &marks).unwrap().get()).unwrap();
        assert_eq!(v["is_seen"], true);
        assert_eq!(v["is_read"], false);
        assert_eq!(v["x"][1]["y"], "}");
    }
}
