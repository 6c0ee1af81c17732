//! Pulled authors end to end, on both backends: with `FEEDS_PULL_THRESHOLD=2`, an actor with a
//! third follower stops being fanned out, and its readers cannot tell: order, grouping, paging,
//! backfill on follow, removal on unfollow, deletion and the maximum length behave as for
//! fanned-out activities.

use std::time::Duration;

use feeds::store::sqlite::{SqliteDb, SqliteStore};
use feeds::store::Store;
use feeds_testkit::api::{ids, Api};
use feeds_testkit::server::Server;
use feeds_testkit::services::{cassandra_store, TestQueue};
use feeds_testkit::tokens::token;
use feeds_testkit::unique;
use feeds_testkit::wait::until_drained;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_feeds-server");
const FANOUT: Duration = Duration::from_secs(60);

const MAX: usize = 6;

fn settings() -> Vec<(&'static str, String)> {
    vec![
        ("FEEDS_PULL_THRESHOLD", "2".to_owned()),
        ("FEEDS_FEED_MAX_LENGTH", MAX.to_string()),
    ]
}

async fn post(api: &Api, actor: &str, verb: &str, minute: u32) -> String {
    post_at(api, actor, verb, &format!("2026-11-29T10:{minute:02}:00Z")).await
}

async fn post_at(api: &Api, actor: &str, verb: &str, time: &str) -> String {
    let minute = &time[14..16];
    let body =
        json!({"actor": actor, "verb": verb, "object": format!("obj_{minute}"), "time": time});
    let answer = api.post(actor, body).await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
    answer.body["id"].as_str().unwrap().to_owned()
}

async fn groups(api: &Api, user: &str, limit: usize) -> Vec<Value> {
    api.walk_by("/feeds/aggregated", &token(user), limit).await
}

/// The store shows what the readers cannot: the pulled activities are recorded as pulled, and
/// are in no follower's timeline.
async fn assert_pulled(store: &dyn Store, star: &str, pulled: &[&String], fans: &[String]) {
    for id in pulled {
        assert!(
            store.get_pulled(star, id).await.unwrap().is_some(),
            "{id} is pulled"
        );
        let rows: Vec<(String, String)> = fans.iter().map(|f| (f.clone(), (*id).clone())).collect();
        assert_eq!(
            store.timeline_entries(&rows).await.unwrap(),
            [],
            "{id} was copied"
        );
    }
}

async fn readers_cannot_tell_a_pulled_author_from_a_fanned_out_one(
    server: &Server,
    store: &dyn Store,
) {
    let api = Api::new(server);
    let queue = server.queue();
    let (star, other) = (unique("star"), unique("other"));
    let fans: Vec<String> = (0..3).map(|i| unique(&format!("fan{i}"))).collect();
    for fan in &fans[..2] {
        api.follow(fan, &star).await;
        api.follow(fan, &other).await;
    }
    until_drained(queue, FANOUT).await;
    // Two followers: fanned out.
    let pushed = post(&api, &star, "post", 1).await;
    until_drained(queue, FANOUT).await;
    // A third follower: from now on the star is pulled. Its backfill copies the fanned-out one.
    api.follow(&fans[2], &star).await;
    api.follow(&fans[2], &other).await;
    until_drained(queue, FANOUT).await;
    let pulled1 = post(&api, &star, "post", 3).await;
    let by_other = post(&api, &other, "post", 2).await;
    let pulled2 = post(&api, &star, "like", 4).await;
    until_drained(queue, FANOUT).await;

    let expected = [
        pulled2.clone(),
        pulled1.clone(),
        by_other.clone(),
        pushed.clone(),
    ];
    for fan in &fans {
        assert_eq!(api.flat_ids(fan).await, expected, "{fan}'s flat feed");
        let walked = ids(&api.walk_by("/feeds/flat", &token(fan), 1).await);
        assert_eq!(
            walked, expected,
            "{fan}: a walk by pages of 1 sees each once"
        );
        let g = groups(&api, fan, 1).await;
        let names: Vec<&str> = g.iter().map(|g| g["group"].as_str().unwrap()).collect();
        assert_eq!(names, ["like:2026-11-29", "post:2026-11-29"], "{fan}");
        assert_eq!(
            ids(g[0]["activities"].as_array().unwrap()),
            std::slice::from_ref(&pulled2)
        );
        let post_group = &g[1];
        assert_eq!(
            ids(post_group["activities"].as_array().unwrap()),
            [pulled1.clone(), by_other.clone(), pushed.clone()],
            "{fan}: pulled and fanned-out activities in one group"
        );
        assert_eq!(post_group["activity_count"], 3);
        assert_eq!(
            post_group["actors"],
            json!([star, other]),
            "most recent actor first"
        );
        assert_eq!(post_group["actor_count"], 2);
        assert_eq!(post_group["created_at"], "2026-11-29T10:01:00Z");
        assert_eq!(post_group["updated_at"], "2026-11-29T10:03:00Z");
    }
    assert_pulled(store, &star, &[&pulled1, &pulled2], &fans).await;
    assert!(store.get_pulled(&star, &pushed).await.unwrap().is_none());
    // The star's own feed has every one.
    assert_eq!(
        api.user_ids(&star).await,
        [pulled2.clone(), pulled1.clone(), pushed.clone()]
    );

    // A new follower of the pulled author: its backfill, as for anyone.
    let late = unique("late");
    api.follow(&late, &star).await;
    until_drained(queue, FANOUT).await;
    assert_eq!(
        api.flat_ids(&late).await,
        [pulled2.clone(), pulled1.clone(), pushed.clone()]
    );
    assert_eq!(groups(&api, &late, 10).await.len(), 2);

    // Unfollowing removes the pulled activities with the rest.
    let gone = api.unfollow(&fans[0], &star).await;
    assert_eq!(gone.status, StatusCode::NO_CONTENT, "{}", gone.body);
    until_drained(queue, FANOUT).await;
    assert_eq!(
        api.flat_ids(&fans[0]).await,
        std::slice::from_ref(&by_other)
    );
    let g = groups(&api, &fans[0], 10).await;
    assert_eq!(g.len(), 1);
    assert_eq!(g[0]["activity_count"], 1);

    // Deleting a pulled activity removes it everywhere.
    let deleted = api
        .send(
            Method::DELETE,
            &format!("/activities/{pulled1}"),
            Some(&token(&star)),
            None,
        )
        .await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT, "{}", deleted.body);
    until_drained(queue, FANOUT).await;
    for fan in &fans[1..] {
        assert_eq!(
            api.flat_ids(fan).await,
            [pulled2.clone(), by_other.clone(), pushed.clone()],
            "{fan}"
        );
        let g = groups(&api, fan, 10).await;
        assert_eq!(g[1]["activity_count"], 2, "{fan}: {}", g[1]);
    }
}

/// A reader of a pulled and a fanned-out author: its feeds hold the newest `MAX` of both together,
/// by any page size, and the aggregated groups count exactly those.
async fn the_maximum_length_counts_pulled_activities(server: &Server) {
    let api = Api::new(server);
    let queue = server.queue();
    let (star, other, reader) = (unique("star"), unique("other"), unique("reader"));
    for fan in [reader.clone(), unique("fan"), unique("fan")] {
        api.follow(&fan, &star).await;
    }
    api.follow(&reader, &other).await;
    until_drained(queue, FANOUT).await;
    // 9 activities over two days, the star's pulled, the other's fanned out; the newest 6 are
    // the second day's 4 and the first day's 2 newest, so the cut falls within a day.
    let mut posted = Vec::new();
    for i in 0..9u32 {
        let (actor, verb) = match i % 3 {
            0 => (&other, "post"),
            1 => (&star, "post"),
            _ => (&star, "like"),
        };
        let time = format!("2026-11-{:02}T10:{i:02}:00Z", 27 + i / 5);
        posted.push(post_at(&api, actor, verb, &time).await);
    }
    until_drained(queue, FANOUT).await;
    let newest: Vec<String> = posted.iter().rev().take(MAX).cloned().collect();
    for size in [1, 2, 4, 25] {
        let walked = ids(&api.walk_by("/feeds/flat", &token(&reader), size).await);
        assert_eq!(walked, newest, "the flat feed by pages of {size}");
        let g = groups(&api, &reader, size).await;
        let mut listed: Vec<String> = g
            .iter()
            .flat_map(|g| ids(g["activities"].as_array().unwrap()))
            .collect();
        listed.sort_unstable_by(|a, b| b.cmp(a));
        assert_eq!(listed, newest, "the aggregated feed by pages of {size}");
        let counted: u64 = g
            .iter()
            .map(|g| g["activity_count"].as_u64().unwrap())
            .sum();
        assert_eq!(counted, MAX as u64, "and its groups count them: {g:?}");
        let oldest = g.last().unwrap();
        assert_eq!(oldest["created_at"], "2026-11-27T10:03:00Z", "{oldest}");
    }
    let page: Value = api.get("/feeds/flat?limit=6", &token(&reader)).await.body;
    assert_eq!(
        page["next"],
        Value::Null,
        "a full feed ends on its last page"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_default() {
    let (server, db) = Server::embedded(BIN, "pulled-embedded", &settings());
    let store = SqliteStore::new(SqliteDb::open(db).unwrap());
    readers_cannot_tell_a_pulled_author_from_a_fanned_out_one(&server, &store).await;
    the_maximum_length_counts_pulled_activities(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cassandra_and_sqs() {
    let queue = TestQueue::create("pulled", 30, 5).await;
    let server = Server::cassandra_sqs(
        BIN,
        "pulled-cassandra",
        "feeds_pulled",
        queue.url(),
        &settings(),
    );
    let store = cassandra_store("feeds_pulled").await;
    readers_cannot_tell_a_pulled_author_from_a_fanned_out_one(&server, store.as_ref()).await;
    the_maximum_length_counts_pulled_activities(&server).await;
}
