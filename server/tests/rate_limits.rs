//! Rate limits end to end: per principal and class, `429` with `Retry-After` and nothing changed,
//! checked after authentication and before the request's validity, admins exempt; and on
//! Cassandra, two server processes drawing on one allowance never admit more than the limit.

use feeds_testkit::api::Api;
use feeds_testkit::server::Server;
use feeds_testkit::services::TestQueue;
use feeds_testkit::tokens::{admin_token, token};
use feeds_testkit::unique;
use reqwest::{Method, StatusCode};
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_feeds-server");

/// Waits out the end of a minute: a window that turns in the middle of a test doubles its allowance.
async fn within_one_window() {
    let second = chrono::Utc::now().timestamp() % 60;
    if second > 45 {
        tokio::time::sleep(std::time::Duration::from_secs((61 - second) as u64)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_limit_is_429_with_retry_after_and_changes_nothing() {
    let settings = vec![
        ("FEEDS_RATE_READS", "4".to_owned()),
        ("FEEDS_RATE_WRITES", "2".to_owned()),
        ("FEEDS_RATE_LEASE", "1".to_owned()),
    ];
    let (server, _) = Server::embedded(BIN, "rate-limits", &settings);
    let api = Api::new(&server);
    let me = unique("me");
    let mine = token(&me);
    within_one_window().await;
    for i in 0..4 {
        let answer = api.get("/feeds/flat", &mine).await;
        assert_eq!(answer.status, StatusCode::OK, "read {i}: {}", answer.body);
    }
    let refused = api
        .send(Method::GET, "/feeds/flat", Some(&mine), None)
        .await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.body["error"]["code"], "rate_limited");
    let retry: u64 = refused.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "Retry-After: {retry}");
    // Authentication first, then the limit, then the request's validity.
    let bad_token = api.get("/feeds/flat", "not.a.jwt").await;
    assert_eq!(bad_token.status, StatusCode::UNAUTHORIZED);
    let bad_limit = api.get("/feeds/flat?limit=0", &mine).await;
    assert_eq!(bad_limit.status, StatusCode::TOO_MANY_REQUESTS);

    // Writes have their own allowance; a refused write stores nothing.
    for i in 0..2 {
        let posted = api
            .post(&me, json!({"actor": me, "object": format!("o{i}")}))
            .await;
        assert_eq!(posted.status, StatusCode::CREATED, "{}", posted.body);
    }
    let refused = api.post(&me, json!({"actor": me, "object": "o2"})).await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
    let refused_bad = api.post(&me, json!({"actor": me})).await;
    assert_eq!(refused_bad.status, StatusCode::TOO_MANY_REQUESTS);
    let own = api.walk(&format!("/feeds/user/{me}"), &admin_token()).await;
    assert_eq!(own.len(), 2, "the refused post changed nothing");

    // Admins are not limited, and another principal has its own allowance.
    for _ in 0..10 {
        let answer = api.get("/feeds/flat", &admin_token()).await;
        assert_eq!(answer.status, StatusCode::OK);
    }
    let other = unique("other");
    assert_eq!(
        api.get("/feeds/flat", &token(&other)).await.status,
        StatusCode::OK
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_on_one_cassandra_never_admit_more_than_the_limit() {
    const LIMIT: usize = 20;
    const LEASE: usize = 3;
    let settings = vec![
        ("FEEDS_RATE_READS", LIMIT.to_string()),
        ("FEEDS_RATE_LEASE", LEASE.to_string()),
    ];
    let queue = TestQueue::create("rate_limits", 30, 5).await;
    let servers = [
        Server::cassandra_sqs(BIN, "rate-a", "feeds_rates", queue.url(), &settings),
        Server::cassandra_sqs(BIN, "rate-b", "feeds_rates", queue.url(), &settings),
    ];
    let me = unique("reader");
    let mine = token(&me);
    within_one_window().await;
    let mut tasks = Vec::new();
    for i in 0..3 * LIMIT {
        let api = Api::new(&servers[i % 2]);
        let mine = mine.clone();
        tasks.push(tokio::spawn(async move {
            api.get("/feeds/flat", &mine).await.status
        }));
    }
    let mut admitted = 0;
    for t in tasks {
        match t.await.unwrap() {
            StatusCode::OK => admitted += 1,
            StatusCode::TOO_MANY_REQUESTS => {}
            other => panic!("unexpected {other}"),
        }
    }
    assert!(admitted <= LIMIT, "{admitted} admitted, over {LIMIT}");
    // Each process may leave part of a lease unused: at most LEASE - 1 each.
    assert!(
        admitted >= LIMIT - 2 * (LEASE - 1),
        "{admitted} admitted: the allowance is wasted"
    );
}
