//! User erasure end to end, on both backends: `DELETE /users/{user}` answers 202, and once the
//! queue has drained none of the user's activities is in any feed (fanned out, pulled, notified),
//! every edge from or to the user is gone from both sides' lists and counts, the user's own feeds
//! are empty, its `foreign_id`s may be used again, and every table of the store, read whole, holds
//! nothing of the user but what the README lists as kept.

use std::time::Duration;

use feeds::store::sqlite::SqliteDb;
use feeds_testkit::api::{ids, Api};
use feeds_testkit::remains::{self, Remain};
use feeds_testkit::server::Server;
use feeds_testkit::services::{cassandra_store, TestQueue};
use feeds_testkit::tokens::{admin_token, token};
use feeds_testkit::unique;
use feeds_testkit::wait::until_drained;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_feeds-server");
const FANOUT: Duration = Duration::from_secs(120);
const KEYSPACE: &str = "feeds_erase";

/// A pulled author past 2 followers, and chunks of 2, so that every stage of an erasure takes
/// more than one message.
fn settings() -> Vec<(&'static str, String)> {
    vec![
        ("FEEDS_PULL_THRESHOLD", "2".to_owned()),
        ("FEEDS_FANOUT_CHUNK_SIZE", "2".to_owned()),
    ]
}

/// What the README says an erasure keeps: other users' activities that name the user in `to`
/// (their data, untouched), the markers of removed edges on the `following` side (two ids and a
/// time, no content), the count row once it reads zeros, and the current minute's rate window.
fn kept(r: &Remain, user: &str) -> bool {
    let only_in_to = r.row.matches(user).count() == 1 && r.row.contains(&format!("\"{user}\""));
    match r.table.as_str() {
        "activities" | "user_activities" | "timeline" | "pulled_activities" => only_in_to,
        // The edge's time, negated: an unfollowed marker.
        "following" => r.row.contains("BigInt(-"),
        // Counts of zero, beside the times they were counted at.
        "user_counts" => r.row.split(" | ").skip(1).all(|cell| {
            let n: i64 = cell
                .trim_start_matches(|c: char| !c.is_ascii_digit())
                .trim_end_matches(')')
                .parse()
                .unwrap_or(-1);
            n == 0 || n > 1_000_000_000_000_000
        }),
        "rate_windows" => true,
        _ => false,
    }
}

async fn post(api: &Api, actor: &str, body: Value) -> String {
    let answer = api.post(actor, body).await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
    answer.body["id"].as_str().unwrap().to_owned()
}

async fn erase(api: &Api, who: &str, user: &str) -> reqwest::StatusCode {
    let answer = api
        .send(Method::DELETE, &format!("/users/{user}"), Some(who), None)
        .await;
    if answer.status == StatusCode::ACCEPTED {
        assert_eq!(answer.body, json!({"status": "accepted"}));
    } else {
        assert!(answer.body["error"]["code"].is_string(), "{}", answer.body);
    }
    answer.status
}

/// Erases a user with a bit of everything, and answers the user's id for the table check.
async fn an_erased_user_leaves_nothing(server: &Server) -> String {
    let api = Api::new(server);
    let queue = server.queue();
    let u = unique("erased");
    let (v, w, x, y, r, p) = (
        unique("v"),
        unique("w"),
        unique("x"),
        unique("y"),
        unique("r"),
        unique("p"),
    );
    // u follows v and the pulled author p; w and x follow u.
    for (a, b) in [(&u, &v), (&u, &p), (&w, &u), (&x, &u), (&w, &p), (&x, &p)] {
        assert_eq!(api.follow(a, b).await.status, StatusCode::CREATED);
    }
    until_drained(queue, FANOUT).await;
    let fanned = post(&api, &u, json!({"actor": u, "object": "o1", "to": [r]})).await;
    let with_fid = post(
        &api,
        &u,
        json!({"actor": u, "object": "o2", "foreign_id": "fid"}),
    )
    .await;
    // A third follower: what u posts from now on is pulled.
    api.follow(&y, &u).await;
    until_drained(queue, FANOUT).await;
    let pulled = post(&api, &u, json!({"actor": u, "object": "o3"})).await;
    let by_v = post(&api, &v, json!({"actor": v, "object": "o4", "to": [u]})).await;
    let by_p = post(&api, &p, json!({"actor": p, "object": "o5"})).await;
    until_drained(queue, FANOUT).await;
    assert_eq!(api.flat_ids(&w).await.len(), 4, "w holds u's three and p's");
    assert_eq!(api.flat_ids(&u).await, [by_p.clone(), by_v.clone()]);

    // Refused: someone else, a bad id. Nothing changes.
    assert_eq!(erase(&api, &token(&w), &u).await, StatusCode::FORBIDDEN);
    assert_eq!(
        erase(&api, &token(&u), "bad id").await,
        StatusCode::BAD_REQUEST
    );
    until_drained(queue, FANOUT).await;
    assert_eq!(api.user_ids(&u).await.len(), 3);

    assert_eq!(erase(&api, &token(&u), &u).await, StatusCode::ACCEPTED);
    until_drained(queue, FANOUT).await;

    let only_p = vec![by_p.clone()];
    for (reader, left) in [(&w, &only_p), (&x, &only_p), (&y, &Vec::new())] {
        let flat = api.flat_ids(reader).await;
        assert_eq!(&flat, left, "{reader} holds none of u's activities");
        let groups = api.walk("/feeds/aggregated", &token(reader)).await;
        let listed: Vec<String> = groups
            .iter()
            .flat_map(|g| ids(g["activities"].as_array().unwrap()))
            .collect();
        assert_eq!(&listed, left, "{reader}'s groups");
    }
    let notified = api.walk("/feeds/notification", &token(&r)).await;
    assert!(
        notified.is_empty(),
        "r's notification of u's post: {notified:?}"
    );
    for feed in ["/feeds/flat", "/feeds/aggregated", "/feeds/notification"] {
        assert!(api.walk(feed, &token(&u)).await.is_empty(), "u's {feed}");
    }
    assert!(api.user_ids(&u).await.is_empty());
    for (user, followers, following) in [(&u, 0, 0), (&v, 0, 0), (&p, 2, 0), (&w, 0, 1), (&x, 0, 1)]
    {
        let counts = api.get(&format!("/users/{user}"), &token(&w)).await.body;
        assert_eq!(
            (&counts["followers"], &counts["following"]),
            (&json!(followers), &json!(following)),
            "{user}'s counts: {counts}"
        );
    }
    assert!(api.followers(&v).await.is_empty());
    assert!(!api.followers(&p).await.contains(&u));
    assert!(api.following(&w).await == [p.clone()]);
    assert!(api.following(&u).await.is_empty() && api.followers(&u).await.is_empty());
    for gone in [&fanned, &with_fid, &pulled] {
        let again = api.delete_activity(&u, gone).await;
        assert_eq!(again.status, StatusCode::NOT_FOUND, "{gone} is deleted");
    }
    // An admin may erase anyone; erasing an erased user changes nothing.
    assert_eq!(erase(&api, &admin_token(), &u).await, StatusCode::ACCEPTED);
    until_drained(queue, FANOUT).await;
    u
}

/// The same id may post again afterwards, as a new user, with a `foreign_id` it used before.
async fn the_id_starts_again(server: &Server, u: &str) {
    let api = Api::new(server);
    let answer = api
        .post(u, json!({"actor": u, "object": "o2", "foreign_id": "fid"}))
        .await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
}

fn assert_only_kept(remains: Vec<Remain>, user: &str) {
    let left: Vec<&Remain> = remains.iter().filter(|r| !kept(r, user)).collect();
    assert!(
        left.is_empty(),
        "the store still holds of {user}: {left:#?}"
    );
    eprintln!("kept of {user}: {remains:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_default() {
    let (server, db) = Server::embedded(BIN, "erase-embedded", &settings());
    let u = an_erased_user_leaves_nothing(&server).await;
    let db = SqliteDb::open(db).unwrap();
    assert_only_kept(remains::sqlite(&db, &u).await, &u);
    the_id_starts_again(&server, &u).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cassandra_and_sqs() {
    let queue = TestQueue::create("erase", 30, 5).await;
    let server = Server::cassandra_sqs(BIN, "erase-cassandra", KEYSPACE, queue.url(), &settings());
    let u = an_erased_user_leaves_nothing(&server).await;
    let store = cassandra_store(KEYSPACE).await;
    assert_only_kept(remains::cassandra(&store, KEYSPACE, &u).await, &u);
    the_id_starts_again(&server, &u).await;
}
