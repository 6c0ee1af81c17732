//! Activity updates: the body of `PATCH /activities/{id}`, and how an update reaches every copy.
//!
//! The `activities` row holds a version, raised by one compare-and-set per update, so two updates
//! of one activity never lose each other's changes. Copies (the actor's feed row, followers'
//! timelines, the pulled record, notification feeds) are rewritten by the `Update` message, which
//! reads the current activity, rewrites the copies that exist, then reads the version again and
//! goes round once more when it moved. Whatever order updates and their messages run in, the last
//! rewrite of each copy is the newest version: a rewrite with an older one is followed by the
//! re-read that sees the newer one, or by the newer version's own message.

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::model::{check_user_id, Activity, ValidationError, MAX_EXTRA_BYTES};

/// The body of `PATCH /activities/{id}`: `{"set": {...}, "unset": [...]}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActivityPatch {
    #[serde(default)]
    pub set: Map<String, Value>,
    #[serde(default)]
    pub unset: Vec<String>,
}

/// A field an update may change.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Field {
    Target,
    Extra,
    ExtraKey(String),
}

/// Longest key of `extra` a patch may name.
const MAX_KEY: usize = 256;

fn bad(message: impl Into<String>) -> ValidationError {
    ValidationError::new("invalid_patch", message)
}

fn field(name: &str) -> Result<Field, ValidationError> {
    match name {
        "target" => Ok(Field::Target),
        "extra" => Ok(Field::Extra),
        _ => match name.strip_prefix("extra.") {
            Some(key) if !key.is_empty() && key.len() <= MAX_KEY => {
                Ok(Field::ExtraKey(key.to_owned()))
            }
            Some(_) => Err(bad(format!(
                "`extra.<key>` names a key of 1 to {MAX_KEY} bytes"
            ))),
            None => Err(bad(format!(
                "`{name}` cannot be changed: an update takes `target`, `extra` or `extra.<key>`"
            ))),
        },
    }
}

/// A checked patch: each change once, none contradicting another.
#[derive(Debug, Clone, PartialEq)]
pub struct Changes {
    set: Vec<(Field, Value)>,
    unset: Vec<Field>,
}

impl ActivityPatch {
    /// Checks the names and values, before anything is read.
    pub fn check(self) -> Result<Changes, ValidationError> {
        if self.set.is_empty() && self.unset.is_empty() {
            return Err(bad("an update changes something: give `set` or `unset`"));
        }
        let mut seen = std::collections::HashSet::new();
        let mut whole_extra = false;
        let mut extra_keys = false;
        let mut note = |f: &Field, name: &str| {
            match f {
                Field::Extra => whole_extra = true,
                Field::ExtraKey(_) => extra_keys = true,
                Field::Target => {}
            }
            if seen.insert(f.clone()) {
                Ok(())
            } else {
                Err(bad(format!(
                    "`{name}` is named twice (in `set`, `unset` or both)"
                )))
            }
        };
        let mut set = Vec::with_capacity(self.set.len());
        for (name, value) in self.set {
            let f = field(&name)?;
            note(&f, &name)?;
            match (&f, &value) {
                (Field::Target, Value::String(t)) => check_user_id("target", t)?,
                (Field::Target, _) => {
                    return Err(bad("`target` is set to a user id (unset it to remove it)"))
                }
                (Field::Extra, Value::Object(_)) => {}
                (Field::Extra, _) => {
                    return Err(bad("`extra` is set to an object (unset it to remove it)"))
                }
                (Field::ExtraKey(_), _) => {}
            }
            set.push((f, value));
        }
        let mut unset = Vec::with_capacity(self.unset.len());
        for name in self.unset {
            let f = field(&name)?;
            note(&f, &name)?;
            unset.push(f);
        }
        if whole_extra && extra_keys {
            return Err(bad(
                "`extra` and `extra.<key>` in one update: change the whole object or its keys",
            ));
        }
        Ok(Changes { set, unset })
    }
}

impl Changes {
    /// `activity` with the changes made; an `extra` over the limit is refused.
    pub fn apply(&self, activity: &Activity) -> Result<Activity, ValidationError> {
        let mut out = activity.clone();
        for f in &self.unset {
            match f {
                Field::Target => out.target = None,
                Field::Extra => out.extra = None,
                Field::ExtraKey(key) => {
                    if let Some(extra) = &mut out.extra {
                        extra.remove(key);
                    }
                }
            }
        }
        for (f, value) in &self.set {
            match (f, value) {
                (Field::Target, Value::String(t)) => out.target = Some(t.clone()),
                (Field::Extra, Value::Object(map)) => out.extra = Some(map.clone()),
                (Field::ExtraKey(key), v) => {
                    out.extra
                        .get_or_insert_with(Map::new)
                        .insert(key.clone(), v.clone());
                }
                _ => unreachable!("checked in ActivityPatch::check"),
            }
        }
        if let Some(extra) = &out.extra {
            let size = serde_json::to_vec(extra).map_or(usize::MAX, |v| v.len());
            if size > MAX_EXTRA_BYTES {
                return Err(ValidationError::new(
                    "extra_too_large",
                    format!("the updated `extra` is {size} bytes of compact JSON; at most {MAX_EXTRA_BYTES} are accepted"),
                ));
            }
        }
        Ok(out)
    }
}

/// Whether two reads of an activity agree on what an update may change.
pub fn same_content(a: &Activity, b: &Activity) -> bool {
    a.target == b.target && a.extra == b.extra
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::parse_time;
    use serde_json::json;

    fn patch(v: Value) -> Result<Changes, ValidationError> {
        serde_json::from_value::<ActivityPatch>(v).unwrap().check()
    }

    fn activity(extra: Option<Value>) -> Activity {
        Activity {
            id: "0".into(),
            actor: "usr_1".into(),
            verb: "post".into(),
            object: "obj".into(),
            target: Some("usr_2".into()),
            time: parse_time("2026-11-01T10:00:00Z").unwrap(),
            foreign_id: None,
            to: Vec::new(),
            extra: extra.map(|v| v.as_object().unwrap().clone()),
        }
    }

    #[test]
    fn changes_apply_in_place() {
        let a = activity(Some(json!({"likes": 1, "draft": true})));
        let c =
            patch(json!({"set": {"target": "usr_9", "extra.likes": 3}, "unset": ["extra.draft"]}))
                .unwrap();
        let b = c.apply(&a).unwrap();
        assert_eq!(b.target.as_deref(), Some("usr_9"));
        assert_eq!(b.extra, json!({"likes": 3}).as_object().cloned());
        assert_eq!(
            (b.id, b.verb, b.time),
            (a.id.clone(), a.verb.clone(), a.time)
        );
        // A key on an activity without `extra` creates it; unsetting its last key leaves `{}`.
        let none = activity(None);
        let c = patch(json!({"set": {"extra.k": [1]}})).unwrap();
        assert_eq!(
            c.apply(&none).unwrap().extra,
            json!({"k": [1]}).as_object().cloned()
        );
        let c = patch(json!({"unset": ["extra.k"]})).unwrap();
        let one = activity(Some(json!({"k": 1})));
        assert_eq!(c.apply(&one).unwrap().extra, Some(Map::new()));
        let c = patch(json!({"unset": ["target", "extra"]})).unwrap();
        let cleared = c.apply(&one).unwrap();
        assert_eq!((cleared.target, cleared.extra), (None, None));
    }

    #[test]
    fn bad_patches_are_refused_before_anything_is_read() {
        for bad in [
            json!({}),
            json!({"set": {}, "unset": []}),
            json!({"set": {"actor": "usr_3"}}),
            json!({"set": {"verb": "like"}}),
            json!({"unset": ["time"]}),
            json!({"unset": ["id"]}),
            json!({"set": {"foreign_id": "x"}}),
            json!({"set": {"to": []}}),
            json!({"set": {"object": "o"}}),
            json!({"set": {"extra.a": 1}, "unset": ["extra.a"]}),
            json!({"set": {"target": "usr_3"}, "unset": ["target"]}),
            json!({"set": {"extra": {}, "extra.a": 1}}),
            json!({"set": {"target": 3}}),
            json!({"set": {"target": null}}),
            json!({"set": {"target": "bad id with spaces"}}),
            json!({"set": {"extra": [1]}}),
            json!({"set": {"extra.": 1}}),
            json!({"unset": ["extra", "extra"]}),
        ] {
            assert!(patch(bad.clone()).is_err(), "{bad}");
        }
        assert!(serde_json::from_value::<ActivityPatch>(json!({"set": {}, "x": 1})).is_err());
        assert!(serde_json::from_value::<ActivityPatch>(json!({"unset": "target"})).is_err());
    }

    #[test]
    fn an_extra_over_the_limit_is_refused() {
        let big = "x".repeat(MAX_EXTRA_BYTES);
        let c = patch(json!({"set": {"extra.big": big}})).unwrap();
        assert_eq!(
            c.apply(&activity(None)).unwrap_err().code,
            "extra_too_large"
        );
    }
}
