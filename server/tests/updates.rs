//! Activity updates end to end, on both backends: `PATCH /activities/{id}` changes the actor's
//! feed at once and every copy afterwards (flat, aggregated, notification, a pulled author's
//! record), in place; a read notification group stays read; the same update message delivered
//! three more times changes nothing; and every refused update changes nothing.

use std::time::Duration;

use feeds::queue::FanoutJob;
use feeds_testkit::api::{ids, Answer, Api};
use feeds_testkit::server::Server;
use feeds_testkit::services::TestQueue;
use feeds_testkit::tokens::token;
use feeds_testkit::unique;
use feeds_testkit::wait::{enqueue, until_drained};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_feeds-server");
const FANOUT: Duration = Duration::from_secs(60);

fn settings() -> Vec<(&'static str, String)> {
    vec![("FEEDS_PULL_THRESHOLD", "2".to_owned())]
}

async fn patch(api: &Api, who: Option<&str>, id: &str, body: Value) -> Answer {
    let token = who.map(token);
    let path = format!("/activities/{id}");
    api.send(Method::PATCH, &path, token.as_deref(), Some(body))
        .await
}

/// The activity `id` as `user`'s flat feed, aggregated feed and notification feed show it.
async fn copies(api: &Api, user: &str, id: &str) -> Vec<(&'static str, Value)> {
    let mut out = Vec::new();
    let find = |list: &[Value]| list.iter().find(|a| a["id"] == id).cloned();
    let flat = api.walk("/feeds/flat", &token(user)).await;
    out.extend(find(&flat).map(|a| ("flat", a)));
    for (name, path) in [
        ("aggregated", "/feeds/aggregated"),
        ("notification", "/feeds/notification"),
    ] {
        for g in api.walk(path, &token(user)).await {
            out.extend(find(g["activities"].as_array().unwrap()).map(|a| (name, a)));
        }
    }
    out
}

async fn updates_reach_every_copy_in_place(server: &Server) {
    let api = Api::new(server);
    let queue = server.queue();
    let (star, big, fan, friend) = (
        unique("star"),
        unique("big"),
        unique("fan"),
        unique("friend"),
    );
    api.follow(&fan, &star).await;
    // Three followers: `big` is a pulled author.
    for follower in [fan.clone(), unique("f"), unique("f")] {
        api.follow(&follower, &big).await;
    }
    until_drained(queue, FANOUT).await;
    let body = json!({"actor": star, "object": "obj_1", "target": "usr_t", "to": [friend],
        "time": "2026-11-30T10:00:00Z", "extra": {"likes": 1, "draft": true}});
    let a = api.post(&star, body).await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    let id = a.body["id"].as_str().unwrap().to_owned();
    let other = api
        .post(
            &star,
            json!({"actor": star, "object": "obj_2", "time": "2026-11-30T11:00:00Z"}),
        )
        .await;
    let pulled = api
        .post(
            &big,
            json!({"actor": big, "object": "obj_3", "time": "2026-11-30T09:00:00Z"}),
        )
        .await;
    let pulled_id = pulled.body["id"].as_str().unwrap().to_owned();
    until_drained(queue, FANOUT).await;
    let order = api.flat_ids(&fan).await;
    assert_eq!(order.len(), 3);
    let read = api
        .send(
            Method::POST,
            "/feeds/notification/read",
            Some(&token(&friend)),
            Some(json!({"all": true})),
        )
        .await;
    assert_eq!(
        read.body,
        json!({"unseen": 0, "unread": 0}),
        "{}",
        read.body
    );

    let change = json!({"set": {"target": "usr_9", "extra.likes": 3}, "unset": ["extra.draft"]});
    let answer = patch(&api, Some(&star), &id, change).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    let mut expected = a.body.clone();
    expected["target"] = json!("usr_9");
    expected["extra"] = json!({"likes": 3});
    assert_eq!(
        answer.body, expected,
        "the updated activity, nothing else changed"
    );
    // At once in the actor's own feed.
    let own = api
        .walk(&format!("/feeds/user/{star}"), &token(&star))
        .await;
    assert_eq!(own.iter().find(|x| x["id"] == id.as_str()), Some(&expected));

    until_drained(queue, FANOUT).await;
    let mut seen = copies(&api, &fan, &id).await;
    let notified = copies(&api, &friend, &id).await;
    assert_eq!(
        (seen.len(), notified.len()),
        (2, 1),
        "{seen:?} {notified:?}"
    );
    seen.extend(notified);
    for (feed, copy) in &seen {
        assert_eq!(copy, &expected, "the copy in a {feed} feed");
    }
    assert_eq!(api.flat_ids(&fan).await, order, "in place: same positions");
    let n = api.get("/feeds/notification", &token(&friend)).await.body;
    assert_eq!(
        (n["unseen"].clone(), n["unread"].clone()),
        (json!(0), json!(0))
    );
    assert_eq!(
        n["results"][0]["is_read"], true,
        "an update re-opens no group"
    );

    // A pulled author's activity: its record is every follower's copy.
    let answer = patch(
        &api,
        Some(&big),
        &pulled_id,
        json!({"set": {"extra": {"x": 1}}}),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    until_drained(queue, FANOUT).await;
    for (feed, copy) in copies(&api, &fan, &pulled_id).await {
        assert_eq!(
            copy["extra"],
            json!({"x": 1}),
            "the pulled copy in the {feed} feed"
        );
    }

    // The same update message three more times: nothing moves.
    let again = FanoutJob::Update {
        activity_id: id.clone(),
        after: None,
    };
    enqueue(queue, &[again.clone(), again.clone(), again]).await;
    until_drained(queue, FANOUT).await;
    for (feed, copy) in copies(&api, &fan, &id).await {
        assert_eq!(copy, expected, "the {feed} copy after redeliveries");
    }
    assert_eq!(api.flat_ids(&fan).await, order);

    // Refused updates change nothing.
    let unknown = other.body["id"]
        .as_str()
        .unwrap()
        .replace(|c: char| c != '0', "0");
    let refusals: Vec<(Option<&str>, &str, Value, StatusCode)> = vec![
        (
            None,
            &id,
            json!({"set": {"target": "usr_1"}}),
            StatusCode::UNAUTHORIZED,
        ),
        (Some(&star), &id, json!({}), StatusCode::BAD_REQUEST),
        (
            Some(&star),
            &id,
            json!({"set": {"actor": "usr_1"}}),
            StatusCode::BAD_REQUEST,
        ),
        (
            Some(&star),
            &id,
            json!({"unset": ["verb"]}),
            StatusCode::BAD_REQUEST,
        ),
        (
            Some(&star),
            &id,
            json!({"set": {"extra.a": 1}, "unset": ["extra.a"]}),
            StatusCode::BAD_REQUEST,
        ),
        (
            Some(&star),
            &id,
            json!({"set": {"extra.big": "x".repeat(8 * 1024)}}),
            StatusCode::BAD_REQUEST,
        ),
        // The body is checked before who may change the activity.
        (
            Some(&fan),
            &id,
            json!({"set": {"time": "x"}}),
            StatusCode::BAD_REQUEST,
        ),
        (
            Some(&fan),
            &id,
            json!({"set": {"target": "usr_1"}}),
            StatusCode::FORBIDDEN,
        ),
        (
            Some(&star),
            &unknown,
            json!({"set": {"target": "usr_1"}}),
            StatusCode::NOT_FOUND,
        ),
        (
            Some(&star),
            "not-an-id",
            json!({"set": {"target": "usr_1"}}),
            StatusCode::NOT_FOUND,
        ),
    ];
    for (who, target, body, status) in refusals {
        let answer = patch(&api, who, target, body.clone()).await;
        assert_eq!(answer.status, status, "{body}: {}", answer.body);
        assert!(answer.body["error"]["code"].is_string(), "{}", answer.body);
    }
    until_drained(queue, FANOUT).await;
    let own = api
        .walk(&format!("/feeds/user/{star}"), &token(&star))
        .await;
    assert_eq!(own.iter().find(|x| x["id"] == id.as_str()), Some(&expected));
    for (feed, copy) in copies(&api, &fan, &id).await {
        assert_eq!(copy, expected, "the {feed} copy after the refusals");
    }

    // An update, then a delete: the activity leaves every feed.
    let gone = api.delete_activity(&star, &id).await;
    assert_eq!(gone.status, StatusCode::NO_CONTENT, "{}", gone.body);
    until_drained(queue, FANOUT).await;
    assert!(copies(&api, &fan, &id).await.is_empty());
    assert!(copies(&api, &friend, &id).await.is_empty());
    assert!(!ids(&api
        .walk(&format!("/feeds/user/{star}"), &token(&star))
        .await)
    .contains(&id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_default() {
    let (server, _) = Server::embedded(BIN, "updates-embedded", &settings());
    updates_reach_every_copy_in_place(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cassandra_and_sqs() {
    let queue = TestQueue::create("updates", 30, 5).await;
    let server = Server::cassandra_sqs(
        BIN,
        "updates-cassandra",
        "feeds_updates",
        queue.url(),
        &settings(),
    );
    updates_reach_every_copy_in_place(&server).await;
}
