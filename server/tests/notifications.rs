//! Notification feeds end to end, on both backends: `to` delivers to the named users (never the
//! actor), groups by verb, object and day, seen and read per group with the whole feed's counts,
//! a group re-opened by a new activity, counts adjusted by deletes and by the feed's bound, and
//! every bad mark refused without a change.

use std::time::Duration;

use feeds_testkit::api::{ids, Api};
use feeds_testkit::server::Server;
use feeds_testkit::services::TestQueue;
use feeds_testkit::tokens::token;
use feeds_testkit::unique;
use feeds_testkit::wait::until_drained;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_feeds-server");
const MAX: usize = 6;
const FANOUT: Duration = Duration::from_secs(60);

fn settings() -> Vec<(&'static str, String)> {
    vec![("FEEDS_FEED_MAX_LENGTH", MAX.to_string())]
}

/// The whole notification feed, walked one group a page, and the counts of its first page.
async fn notifications(api: &Api, user: &str) -> (Vec<Value>, (u64, u64)) {
    let groups = api.walk_by("/feeds/notification", &token(user), 1).await;
    let first = api.get("/feeds/notification", &token(user)).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.body);
    let counts = (
        first.body["unseen"].as_u64().unwrap(),
        first.body["unread"].as_u64().unwrap(),
    );
    (groups, counts)
}

fn summary(groups: &[Value]) -> Vec<(String, u64, bool, bool)> {
    groups
        .iter()
        .map(|g| {
            (
                g["group"].as_str().unwrap().to_owned(),
                g["activity_count"].as_u64().unwrap(),
                g["is_seen"].as_bool().unwrap(),
                g["is_read"].as_bool().unwrap(),
            )
        })
        .collect()
}

async fn mark(api: &Api, user: &str, what: &str, body: Value) -> (u64, u64) {
    let answer = api
        .send(
            Method::POST,
            &format!("/feeds/notification/{what}"),
            Some(&token(user)),
            Some(body),
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{what}: {}", answer.body);
    (
        answer.body["unseen"].as_u64().unwrap(),
        answer.body["unread"].as_u64().unwrap(),
    )
}

async fn to_fills_notification_feeds_with_seen_and_read(server: &Server) {
    let api = Api::new(server);
    let queue = server.queue();
    let (actor, r1, r2) = (unique("actor"), unique("r1"), unique("r2"));
    let day = "2026-11-30";
    let post = |verb: &str, object: &str, minute: u32, to: Vec<&String>| {
        json!({"actor": actor, "verb": verb, "object": object,
               "time": format!("{day}T10:{minute:02}:00Z"), "to": to})
    };
    let like1 = api
        .post(&actor, post("like", "o1", 1, vec![&r1, &r2, &actor]))
        .await;
    assert_eq!(like1.status, StatusCode::CREATED, "{}", like1.body);
    api.post(&actor, post("like", "o1", 2, vec![&r1])).await;
    api.post(&actor, post("comment", "o1", 3, vec![&r1])).await;
    until_drained(queue, FANOUT).await;

    let like = format!("like:o1:{day}");
    let comment = format!("comment:o1:{day}");
    let (groups, counts) = notifications(&api, &r1).await;
    assert_eq!(
        summary(&groups),
        [
            (comment.clone(), 1, false, false),
            (like.clone(), 2, false, false)
        ]
    );
    assert_eq!(counts, (2, 2));
    assert_eq!(groups[0]["id"], json!(comment));
    let (groups2, counts2) = notifications(&api, &r2).await;
    assert_eq!(summary(&groups2), [(like.clone(), 1, false, false)]);
    assert_eq!(counts2, (1, 1));
    let (own, own_counts) = notifications(&api, &actor).await;
    assert!(own.is_empty(), "never to the actor itself: {own:?}");
    assert_eq!(own_counts, (0, 0));

    // Seen, then read; ids the feed does not hold are ignored.
    assert_eq!(
        mark(
            &api,
            &r1,
            "seen",
            json!({"groups": [like, "post:nothing:2026-11-30"]})
        )
        .await,
        (1, 2)
    );
    let (groups, _) = notifications(&api, &r1).await;
    assert_eq!(
        summary(&groups),
        [
            (comment.clone(), 1, false, false),
            (like.clone(), 2, true, false)
        ]
    );
    assert_eq!(
        mark(&api, &r1, "read", json!({"groups": [comment]})).await,
        (0, 1)
    );
    assert_eq!(mark(&api, &r1, "read", json!({"all": true})).await, (0, 0));
    assert_eq!(
        notifications(&api, &r2).await.1,
        (1, 1),
        "another feed is untouched"
    );

    // A new activity re-opens its group; a delete that empties a group takes its count along.
    api.post(&actor, post("like", "o1", 4, vec![&r1])).await;
    let share = api.post(&actor, post("share", "o2", 5, vec![&r1])).await;
    until_drained(queue, FANOUT).await;
    let (groups, counts) = notifications(&api, &r1).await;
    let share_group = format!("share:o2:{day}");
    assert_eq!(
        summary(&groups),
        [
            (share_group, 1, false, false),
            (like.clone(), 3, false, false),
            (comment.clone(), 1, true, true)
        ]
    );
    assert_eq!(counts, (2, 2));
    let id = share.body["id"].as_str().unwrap();
    let deleted = api
        .send(
            Method::DELETE,
            &format!("/activities/{id}"),
            Some(&token(&actor)),
            None,
        )
        .await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    until_drained(queue, FANOUT).await;
    let (groups, counts) = notifications(&api, &r1).await;
    assert_eq!(groups.len(), 2, "{groups:?}");
    assert_eq!(counts, (1, 1), "the deleted group's count is gone");
    assert_eq!(
        ids(groups[0]["activities"].as_array().unwrap()).len(),
        3,
        "the like group lists its activities"
    );

    // The feed's bound: older groups leave with their activities, and their counts with them.
    for minute in 10..10 + MAX as u32 {
        api.post(
            &actor,
            post("follow", &format!("p{minute}"), minute, vec![&r1]),
        )
        .await;
        until_drained(queue, FANOUT).await;
    }
    let (groups, counts) = notifications(&api, &r1).await;
    let held: u64 = groups
        .iter()
        .map(|g| g["activity_count"].as_u64().unwrap())
        .sum();
    assert!(held <= MAX as u64 + 1, "bounded: {held}");
    let unseen = groups
        .iter()
        .filter(|g| g["is_seen"] == json!(false))
        .count() as u64;
    assert_eq!(counts.0, unseen, "counts are the feed's own: {groups:?}");
}

async fn bad_marks_are_refused(server: &Server) {
    let api = Api::new(server);
    let me = unique("me");
    let mine = token(&me);
    for body in [
        json!({}),
        json!({"all": false}),
        json!({"groups": []}),
        json!({"groups": [""]}),
        json!({"groups": "like:o:2026-11-30"}),
        json!({"groups": ["a"], "all": true}),
        json!({"groups": vec!["g"; 101]}),
        json!({"all": true, "extra": 1}),
    ] {
        for what in ["seen", "read"] {
            let answer = api
                .send(
                    Method::POST,
                    &format!("/feeds/notification/{what}"),
                    Some(&mine),
                    Some(body.clone()),
                )
                .await;
            assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{what} {body}");
            assert!(answer.body["error"]["code"].is_string(), "{}", answer.body);
        }
    }
    let anonymous = api
        .send(
            Method::POST,
            "/feeds/notification/seen",
            None,
            Some(json!({"all": true})),
        )
        .await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
    let wrong_method = api
        .send(Method::GET, "/feeds/notification/read", Some(&mine), None)
        .await;
    assert_eq!(wrong_method.status, StatusCode::METHOD_NOT_ALLOWED);
    let bad_limit = api.get("/feeds/notification?limit=0", &mine).await;
    assert_eq!(bad_limit.status, StatusCode::BAD_REQUEST);
    let other_cursor = api.get("/feeds/aggregated?limit=1", &mine).await;
    assert_eq!(other_cursor.status, StatusCode::OK);
    let empty = api.get("/feeds/notification", &mine).await;
    assert_eq!(
        empty.body,
        json!({"results": [], "next": null, "unseen": 0, "unread": 0})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_default() {
    let (server, _) = Server::embedded(BIN, "notifications-embedded", &settings());
    to_fills_notification_feeds_with_seen_and_read(&server).await;
    bad_marks_are_refused(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cassandra_and_sqs() {
    let queue = TestQueue::create("notifications", 30, 5).await;
    let server = Server::cassandra_sqs(
        BIN,
        "notifications-cassandra",
        "feeds_notifications",
        queue.url(),
        &settings(),
    );
    to_fills_notification_feeds_with_seen_and_read(&server).await;
    bad_marks_are_refused(&server).await;
}
