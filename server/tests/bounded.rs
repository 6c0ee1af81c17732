//! Bounded feeds end to end, on both backends: a server with `FEEDS_FEED_MAX_LENGTH=5` keeps the
//! newest 5 activities in the flat and aggregated feeds, the user feed keeps everything, and the
//! aggregated groups always agree with the flat feed.

use std::time::Duration;

use feeds_testkit::api::{ids, Api};
use feeds_testkit::server::Server;
use feeds_testkit::services::TestQueue;
use feeds_testkit::tokens::token;
use feeds_testkit::unique;
use feeds_testkit::wait::until_drained;
use reqwest::StatusCode;
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_feeds-server");
const MAX: usize = 5;
const FANOUT: Duration = Duration::from_secs(60);

fn settings() -> Vec<(&'static str, String)> {
    vec![("FEEDS_FEED_MAX_LENGTH", MAX.to_string())]
}

/// The activity ids the aggregated feed holds, newest group first, and its groups' counts.
async fn aggregated(api: &Api, user: &str) -> (Vec<String>, Vec<u64>) {
    let groups = api.walk_by("/feeds/aggregated", &token(user), 2).await;
    let listed = groups
        .iter()
        .flat_map(|g| ids(g["activities"].as_array().unwrap()))
        .collect();
    let counts = groups
        .iter()
        .map(|g| g["activity_count"].as_u64().unwrap())
        .collect();
    (listed, counts)
}

async fn feeds_keep_the_newest_activities_and_the_user_feed_keeps_all(server: &Server) {
    let api = Api::new(server);
    let queue = server.queue();
    let (star, other, fan) = (unique("star"), unique("other"), unique("fan"));
    for followee in [&star, &other] {
        assert_eq!(api.follow(&fan, followee).await.status, StatusCode::CREATED);
    }
    until_drained(queue, FANOUT).await;
    // Over three days and two verbs, oldest first, one at a time so each delivery trims.
    let mut posted: Vec<String> = Vec::new();
    let mut by_star: Vec<String> = Vec::new();
    for i in 0..8 {
        let actor = if i % 4 == 0 { &other } else { &star };
        let verb = if i % 2 == 0 { "post" } else { "like" };
        let time = format!("2026-11-{:02}T10:{i:02}:00Z", 20 + i / 3);
        let body =
            json!({"actor": actor, "verb": verb, "object": format!("obj_{i}"), "time": time});
        let answer = api.post(actor, body).await;
        assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
        posted.push(answer.body["id"].as_str().unwrap().to_owned());
        if actor == &star {
            by_star.push(posted[i].clone());
        }
        until_drained(queue, FANOUT).await;
    }
    let newest: Vec<String> = posted.iter().rev().take(MAX).cloned().collect();
    assert_eq!(
        api.flat_ids(&fan).await,
        newest,
        "the flat feed keeps the newest {MAX}"
    );
    let (listed, counts) = aggregated(&api, &fan).await;
    let mut sorted = listed.clone();
    sorted.sort_unstable_by(|a, b| b.cmp(a));
    assert_eq!(sorted, newest, "the aggregated feed holds the same {MAX}");
    assert_eq!(
        counts.iter().sum::<u64>(),
        MAX as u64,
        "and counts them: {counts:?}"
    );
    let star_own: Vec<String> = api.user_ids(&star).await;
    let all_of_star: Vec<String> = by_star.iter().rev().cloned().collect();
    assert!(all_of_star.len() > MAX);
    assert_eq!(star_own, all_of_star, "the user feed is never trimmed");

    // A delete of one of them: the feeds shrink and stay in agreement.
    let gone = by_star.last().unwrap();
    let deleted = api
        .send(
            reqwest::Method::DELETE,
            &format!("/activities/{gone}"),
            Some(&token(&star)),
            None,
        )
        .await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT, "{}", deleted.body);
    until_drained(queue, FANOUT).await;
    let flat = api.flat_ids(&fan).await;
    assert!(!flat.contains(gone) && flat.len() <= MAX, "{flat:?}");
    let (mut listed, counts) = aggregated(&api, &fan).await;
    listed.sort_unstable_by(|a, b| b.cmp(a));
    assert_eq!(
        listed, flat,
        "groups agree with the flat feed after a delete"
    );
    assert_eq!(counts.iter().sum::<u64>() as usize, flat.len());

    // A new follower's backfill is bounded too.
    let late = unique("late");
    assert_eq!(api.follow(&late, &star).await.status, StatusCode::CREATED);
    until_drained(queue, FANOUT).await;
    let late_flat = api.flat_ids(&late).await;
    let star_now: Vec<String> = api.user_ids(&star).await;
    assert_eq!(
        late_flat,
        star_now[..MAX.min(star_now.len())],
        "backfill keeps the newest"
    );
    let (late_listed, _) = aggregated(&api, &late).await;
    assert_eq!(late_listed.len(), late_flat.len());
    let first: Value = api
        .get("/feeds/aggregated?limit=1", &token(&late))
        .await
        .body;
    assert_eq!(first["results"].as_array().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_default() {
    let (server, _) = Server::embedded(BIN, "bounded-embedded", &settings());
    feeds_keep_the_newest_activities_and_the_user_feed_keeps_all(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cassandra_and_sqs() {
    let queue = TestQueue::create("bounded", 30, 5).await;
    let server = Server::cassandra_sqs(
        BIN,
        "bounded-cassandra",
        "feeds_bounded",
        queue.url(),
        &settings(),
    );
    feeds_keep_the_newest_activities_and_the_user_feed_keeps_all(&server).await;
}
