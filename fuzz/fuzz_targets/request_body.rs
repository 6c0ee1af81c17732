//! Request bodies of `POST /activities` and `POST /follow`: any bytes either fail to parse, fail
//! validation, or give an activity (follow request) that keeps every rule of the contract.

#![no_main]

use chrono::{DateTime, Utc};
use feeds::model::{
    check_user_id, check_verb, is_valid_user_id, Activity, ActivityId, FollowRequest, NewActivity,
    MAX_EXTRA_BYTES,
};
use libfuzzer_sys::fuzz_target;

fn now() -> DateTime<Utc> {
    DateTime::from_timestamp(1_795_946_400, 123_456_789).expect("a fixed instant")
}

fuzz_target!(|data: &[u8]| {
    if let Ok(new) = serde_json::from_slice::<NewActivity>(data) {
        let had_time = new.time.is_some();
        if let Ok(activity) = new.into_activity(now()) {
            check_activity(&activity, had_time);
        }
    }
    if let Ok(req) = serde_json::from_slice::<FollowRequest>(data) {
        let valid = check_user_id("follower", &req.follower).is_ok()
            && check_user_id("following", &req.following).is_ok();
        assert_eq!(
            valid,
            is_valid_user_id(&req.follower) && is_valid_user_id(&req.following)
        );
        if valid {
            assert!(req.follower.len() <= 128 && req.following.len() <= 128);
        }
    }
});

fn check_activity(a: &Activity, had_time: bool) {
    assert!(ActivityId::is_valid(&a.id), "id {:?}", a.id);
    assert!(is_valid_user_id(&a.actor) && is_valid_user_id(&a.object));
    assert!(a.target.as_deref().is_none_or(is_valid_user_id));
    assert!(a.foreign_id.as_deref().is_none_or(is_valid_user_id));
    assert!(check_verb(&a.verb).is_ok());
    assert!(a.time.timestamp() >= 0, "no time before 1970");
    assert_eq!(a.time.timestamp_subsec_nanos() % 1000, 0, "microseconds");
    if !had_time {
        assert_eq!(a.time.timestamp_micros(), now().timestamp_micros());
    }
    // The id sorts with the time: its first 16 hex digits are the time in microseconds.
    assert_eq!(
        u64::from_str_radix(&a.id[..16], 16).unwrap(),
        a.time.timestamp_micros() as u64
    );
    if let Some(extra) = &a.extra {
        assert!(serde_json::to_vec(extra).unwrap().len() <= MAX_EXTRA_BYTES);
    }
    // What the API answers parses back to the same activity (the stores keep `extra` as JSON text).
    let served = serde_json::to_string(a).expect("an activity serialises");
    let back: Activity = serde_json::from_str(&served).expect("a served activity parses");
    assert_eq!(
        (&back.id, &back.actor, &back.verb, &back.object),
        (&a.id, &a.actor, &a.verb, &a.object)
    );
    assert_eq!(
        (&back.target, back.time, &back.foreign_id),
        (&a.target, a.time, &a.foreign_id)
    );
    let again = serde_json::to_string(&back).unwrap();
    let back2: Activity = serde_json::from_str(&again).unwrap();
    assert_eq!(back2, back, "serialising is stable after one round trip");
}
