//! The body of `PATCH /activities/{id}`: any bytes either fail to parse, fail the checks, or give
//! changes that, applied to an activity, touch only `target` and `extra`, keep every rule of the
//! contract, do what they name, and give the same activity when applied again.

#![no_main]

use feeds::model::{is_valid_user_id, parse_time, Activity, MAX_EXTRA_BYTES};
use feeds::update::ActivityPatch;
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};

fn activity(extra: Option<Value>) -> Activity {
    Activity {
        id: "000661535fa6b800a1b2c3d4e5f60718".into(),
        actor: "usr_1".into(),
        verb: "post".into(),
        object: "obj_1".into(),
        target: Some("usr_2".into()),
        time: parse_time("2026-11-30T10:00:00Z").expect("a fixed time"),
        foreign_id: Some("f_1".into()),
        to: vec!["usr_3".into()],
        extra: extra.and_then(|v| v.as_object().cloned()),
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(patch) = serde_json::from_slice::<ActivityPatch>(data) else {
        return;
    };
    let named: Vec<String> = patch.set.keys().cloned().collect();
    let unset = patch.unset.clone();
    let set = patch.set.clone();
    let Ok(changes) = patch.check() else {
        return;
    };
    assert!(!named.is_empty() || !unset.is_empty(), "an update changes something");
    for base in [activity(None), activity(Some(json!({"k": 1, "draft": true})))] {
        let Ok(updated) = changes.apply(&base) else {
            continue;
        };
        // Only `target` and `extra` move.
        assert_eq!(
            (&updated.id, &updated.actor, &updated.verb, &updated.object),
            (&base.id, &base.actor, &base.verb, &base.object)
        );
        assert_eq!(
            (updated.time, &updated.foreign_id, &updated.to),
            (base.time, &base.foreign_id, &base.to)
        );
        assert!(updated.target.as_deref().is_none_or(is_valid_user_id));
        if let Some(extra) = &updated.extra {
            assert!(serde_json::to_vec(extra).unwrap().len() <= MAX_EXTRA_BYTES);
        }
        // What is set is there, what is unset is gone.
        for (name, value) in &set {
            match name.strip_prefix("extra.") {
                Some(key) => assert_eq!(updated.extra.as_ref().unwrap().get(key), Some(value)),
                None if name == "target" => assert_eq!(updated.target.as_ref(), value.as_str().map(str::to_owned).as_ref()),
                None => assert_eq!(updated.extra.as_ref().map(|m| Value::Object(m.clone())).as_ref(), Some(value)),
            }
        }
        for name in &unset {
            match name.strip_prefix("extra.") {
                Some(key) => assert!(updated.extra.as_ref().is_none_or(|m| !m.contains_key(key))),
                None if name == "target" => assert_eq!(updated.target, None),
                None => assert_eq!(updated.extra, None),
            }
        }
        // Idempotent: a redelivered or retried update changes nothing more.
        assert_eq!(changes.apply(&updated).as_ref(), Ok(&updated));
    }
});
