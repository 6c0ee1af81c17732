//! The rows the store reads and writes: one type per result shape, and what a lightweight
//! transaction sends back when it is not applied.

use scylla::value::MaybeUnset;

use crate::model::{from_micros, Activity};
use crate::store::{GroupSummary, StoreError, StoredGroup};

/// The activity columns of every activity table, in [`ActivityValues`] order.
pub(super) const ACTIVITY_COLUMNS: &str =
    "id, actor, verb, object, target, time_us, foreign_id, extra, recipients";

/// An activity as every activity table stores it.
#[derive(scylla::DeserializeRow)]
pub(super) struct ActivityRow {
    id: String,
    actor: String,
    verb: String,
    object: String,
    target: Option<String>,
    time_us: i64,
    foreign_id: Option<String>,
    extra: Option<String>,
    recipients: Option<Vec<String>>,
}

impl ActivityRow {
    pub(super) fn into_activity(self) -> Result<Activity, StoreError> {
        let extra = match self.extra {
            None => None,
            Some(text) => Some(serde_json::from_str(&text).map_err(|e| {
                StoreError::Internal(format!(
                    "activity {}: `extra` is not a JSON object: {e}",
                    self.id
                ))
            })?),
        };
        Ok(Activity {
            id: self.id,
            actor: self.actor,
            verb: self.verb,
            object: self.object,
            target: self.target,
            time: from_micros(self.time_us),
            foreign_id: self.foreign_id,
            to: self.recipients.unwrap_or_default(),
            extra,
        })
    }
}

/// The columns of an activity row, in [`ACTIVITY_COLUMNS`] order. Absent optional fields are
/// left unset rather than written as null, so they leave no tombstones.
pub(super) type ActivityValues<'a> = (
    &'a str,
    &'a str,
    &'a str,
    &'a str,
    MaybeUnset<Option<&'a str>>,
    i64,
    MaybeUnset<&'a str>,
    MaybeUnset<Option<String>>,
    MaybeUnset<&'a Vec<String>>,
);

pub(super) fn activity_values(a: &Activity) -> ActivityValues<'_> {
    let mut values = rewrite_values(a);
    if a.target.is_none() {
        values.4 = MaybeUnset::Unset;
    }
    if a.extra.is_none() {
        values.7 = MaybeUnset::Unset;
    }
    values
}

/// [`activity_values`] for rewriting a copy after an update: an absent `target` or `extra` is
/// written as null, so that what the update removed is removed from the copy too.
pub(super) fn rewrite_values(a: &Activity) -> ActivityValues<'_> {
    (
        &a.id,
        &a.actor,
        &a.verb,
        &a.object,
        MaybeUnset::Set(a.target.as_deref()),
        a.time.timestamp_micros(),
        MaybeUnset::from_option(a.foreign_id.as_deref()),
        MaybeUnset::Set(
            a.extra
                .as_ref()
                .map(|m| serde_json::Value::Object(m.clone()).to_string()),
        ),
        MaybeUnset::from_option(Some(&a.to).filter(|to| !to.is_empty())),
    )
}

/// An `activities` row with its version (null until the first update).
#[derive(scylla::DeserializeRow)]
pub(super) struct VersionedRow {
    id: String,
    actor: String,
    verb: String,
    object: String,
    target: Option<String>,
    time_us: i64,
    foreign_id: Option<String>,
    extra: Option<String>,
    recipients: Option<Vec<String>>,
    version: Option<i64>,
}

impl VersionedRow {
    pub(super) fn into_versioned(self) -> Result<(Activity, i64), StoreError> {
        let row = ActivityRow {
            id: self.id,
            actor: self.actor,
            verb: self.verb,
            object: self.object,
            target: self.target,
            time_us: self.time_us,
            foreign_id: self.foreign_id,
            extra: self.extra,
            recipients: self.recipients,
        };
        Ok((row.into_activity()?, self.version.unwrap_or(0)))
    }
}

/// A row of `feed_groups`.
#[derive(scylla::DeserializeRow)]
pub(super) struct GroupRow {
    pub(super) day: i32,
    pub(super) group_key: String,
    pub(super) newest_id: Option<String>,
    pub(super) json: Option<String>,
    pub(super) clean_us: Option<i64>,
    pub(super) actors_newest: Option<String>,
    pub(super) dirty_us: Option<i64>,
}

impl GroupRow {
    pub(super) fn into_group(self) -> StoredGroup {
        StoredGroup {
            day: self.day,
            key: self.group_key,
            summary: self
                .newest_id
                .zip(self.json)
                .map(|(newest_id, json)| GroupSummary {
                    newest_id,
                    json,
                    actors_newest: self.actors_newest.unwrap_or_default(),
                }),
            clean_us: self.clean_us.unwrap_or(0),
            dirty_us: self.dirty_us.unwrap_or(0),
        }
    }
}

#[derive(scylla::DeserializeRow)]
pub(super) struct PulledFolloweeRow {
    pub(super) followee: String,
    pub(super) floor: Option<String>,
}

#[derive(scylla::DeserializeRow)]
pub(super) struct UserRow {
    pub(super) user: String,
}

/// A row of `connections` or `pulled_connections`.
#[derive(scylla::DeserializeRow)]
pub(super) struct ConnectionRow {
    pub(super) user: String,
    pub(super) connection_id: String,
}

impl From<ConnectionRow> for crate::store::Connection {
    fn from(row: ConnectionRow) -> Self {
        crate::store::Connection {
            user: row.user,
            id: row.connection_id,
        }
    }
}

/// A user's counts, and when each was last counted.
#[derive(scylla::DeserializeRow)]
pub(super) struct CountsRow {
    pub(super) followers: Option<i64>,
    pub(super) following: Option<i64>,
    pub(super) activities: Option<i64>,
    pub(super) followers_us: Option<i64>,
    pub(super) following_us: Option<i64>,
    pub(super) activities_us: Option<i64>,
}

/// A notification feed's unseen and unread group ids.
#[derive(scylla::DeserializeRow)]
pub(super) struct MarksRow {
    pub(super) unseen: Option<std::collections::HashSet<String>>,
    pub(super) unread: Option<std::collections::HashSet<String>>,
}

#[derive(scylla::DeserializeRow)]
pub(super) struct IdRow {
    pub(super) id: String,
}

#[derive(scylla::DeserializeRow)]
pub(super) struct FollowerRow {
    pub(super) follower: String,
    pub(super) created_us: i64,
}

#[derive(scylla::DeserializeRow)]
pub(super) struct FolloweeRow {
    pub(super) followee: String,
    pub(super) created_us: i64,
}

#[derive(scylla::DeserializeRow)]
pub(super) struct CreatedRow {
    pub(super) created_us: i64,
}

/// A `following` row. Unfollowing keeps the row, with `created_us` negated: `-(since + 1)`. That
/// value is also the write time of the tombstone the unfollow puts on the `followers` row, whose
/// inserts are written at the edge's `since`: so whichever of a follow's row insert and a racing
/// unfollow's delete arrives last, the delete wins, and a later follow (at `since` younger than
/// the tombstone, see `follow`) wins over both. Without the kept row, a follow could not know how
/// young its edge must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum EdgeState {
    Following(i64),
    Unfollowed { tombstone_us: i64 },
}

impl EdgeState {
    pub(super) fn from_column(created_us: i64) -> Self {
        if created_us > 0 {
            EdgeState::Following(created_us)
        } else {
            EdgeState::Unfollowed {
                tombstone_us: -created_us,
            }
        }
    }
}

/// A lightweight transaction's result row.
pub(super) trait CasRow {
    fn applied(&self) -> bool;
}

/// [`CasRow`] for row types whose `applied` field reads `[applied]`.
macro_rules! cas_rows {
    ($($row:ty),+) => {
        $(impl CasRow for $row {
            fn applied(&self) -> bool {
                self.applied
            }
        })+
    };
}

cas_rows!(EdgeCasRow, SwapCasRow, ForeignIdCasRow, AppliedRow);

// The two rejected edge transactions send back different columns, and the derive refuses a column
// it does not name as well as a field with no column: hence two near-twin types.

/// What a rejected `INSERT INTO following ... IF NOT EXISTS` sends back.
#[derive(scylla::DeserializeRow)]
pub(super) struct EdgeCasRow {
    #[scylla(rename = "[applied]")]
    applied: bool,
    #[allow(dead_code)]
    user: String,
    #[allow(dead_code)]
    followee: String,
    pub(super) created_us: Option<i64>,
}

/// What a rejected `UPDATE following ... IF created_us = ?` sends back.
#[derive(scylla::DeserializeRow)]
pub(super) struct SwapCasRow {
    #[scylla(rename = "[applied]")]
    applied: bool,
    created_us: Option<i64>,
}

impl SwapCasRow {
    /// The edge as the transaction found it (`None`: no row).
    pub(super) fn state(self) -> Option<EdgeState> {
        self.created_us.map(EdgeState::from_column)
    }
}

/// Who holds an `(actor, foreign_id)` mapping, and since when.
#[derive(scylla::DeserializeRow)]
pub(super) struct ForeignIdRow {
    pub(super) id: String,
    pub(super) claimed_us: Option<i64>,
}

/// What a rejected `INSERT INTO activity_foreign_ids ... IF NOT EXISTS` sends back.
#[derive(scylla::DeserializeRow)]
pub(super) struct ForeignIdCasRow {
    #[scylla(rename = "[applied]")]
    applied: bool,
    #[allow(dead_code)]
    actor: String,
    #[allow(dead_code)]
    foreign_id: String,
    id: String,
    claimed_us: Option<i64>,
}

impl ForeignIdCasRow {
    /// The mapping as the transaction found it.
    pub(super) fn holder(self) -> ForeignIdRow {
        ForeignIdRow {
            id: self.id,
            claimed_us: self.claimed_us,
        }
    }
}

/// A row type for lightweight transactions that send back only `[applied]`.
#[derive(scylla::DeserializeRow)]
pub(super) struct AppliedRow {
    #[scylla(rename = "[applied]")]
    applied: bool,
}

/// A keyspace as Amazon Keyspaces lists it once it is ready.
#[derive(scylla::DeserializeRow)]
pub(super) struct KeyspaceRow {
    #[allow(dead_code)]
    keyspace_name: String,
}

/// A table's state on Amazon Keyspaces (`ACTIVE` once ready).
#[derive(scylla::DeserializeRow)]
pub(super) struct TableStatusRow {
    pub(super) status: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unfollowed_edge_keeps_its_tombstone_time_negated() {
        assert_eq!(EdgeState::from_column(5), EdgeState::Following(5));
        assert_eq!(
            EdgeState::from_column(-6),
            EdgeState::Unfollowed { tombstone_us: 6 }
        );
    }

    #[test]
    fn an_activity_row_whose_extra_is_not_an_object_is_an_error() {
        let row = |extra: &str| ActivityRow {
            id: "a1".to_owned(),
            actor: "u1".to_owned(),
            verb: "post".to_owned(),
            object: "o1".to_owned(),
            target: None,
            time_us: 1,
            foreign_id: None,
            extra: Some(extra.to_owned()),
            recipients: None,
        };
        let activity = row(r#"{"n": 1}"#).into_activity().unwrap();
        assert_eq!(activity.extra.unwrap()["n"], 1);
        match row("[1]").into_activity() {
            Err(StoreError::Internal(message)) => assert!(message.contains("a1"), "{message}"),
            other => panic!("{other:?}"),
        }
    }
}
