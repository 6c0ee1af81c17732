//! Faults of the production-like stack, on the real server binary (Cassandra and SQS): Cassandra
//! stopped in the middle of a large fan-out, and the queue server stopped while a client posts.
//! Each test checks that nothing was lost and nothing duplicated by reading every affected feed.
//!
//! These tests stop and start the local services through `scripts/cassandra.sh` and
//! `scripts/elasticmq.sh`, so they run one at a time (cargo runs the tests of one binary in
//! parallel, but never two test binaries at once), and a guard starts each service again when a
//! test ends, also when it fails.

use std::time::{Duration, Instant};

use feeds::model::FollowEdge;
use feeds::store::{IdRange, Store};
use feeds_testkit::api::Api;
use feeds_testkit::server::Server;
use feeds_testkit::services::{cassandra_store, script_async, KeepRunning, TestQueue};
use feeds_testkit::wait::eventually;
use feeds_testkit::{concurrently, unique};
use reqwest::{Method, StatusCode};
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_feeds-server");

/// The keyspace of these tests.
const KEYSPACE: &str = "feeds_faults";

/// One test at a time: each stops a service the others need.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cassandra_stopped_mid_fanout_to_5000_followers_delivers_each_activity_exactly_once() {
    let _serial = SERIAL.lock().await;
    let _cassandra = KeepRunning("cassandra");
    let started = Instant::now();
    let store = cassandra_store(KEYSPACE).await;
    // Redelivery after 2 s; a message may fail many times while Cassandra is down, and must not
    // reach the dead-letter queue for that.
    let queue = TestQueue::create("faults_cassandra", 2, 1000).await;
    let server = Server::cassandra_sqs(
        BIN,
        "faults-cassandra",
        KEYSPACE,
        queue.url(),
        &[("FEEDS_FANOUT_CHUNK_SIZE", "40".into())],
    );
    let api = Api::new(&server);

    let star = unique("star");
    let fans: Vec<String> = (0..5000).map(|i| format!("{star}_fan{i:05}")).collect();
    concurrently(fans.clone(), 64, |fan| {
        let store = store.clone();
        let edge = FollowEdge {
            follower: fan,
            following: star.clone(),
            created_at: chrono::Utc::now(),
        };
        async move { store.follow(&edge).await.unwrap() }
    })
    .await;
    eprintln!("5,000 followers seeded after {:?}", started.elapsed());

    let mut posted = Vec::new();
    for i in 0..4 {
        let a = api
            .post(
                &star,
                json!({"actor": star, "object": format!("obj_{i}"), "foreign_id": format!("post:{i}")}),
            )
            .await;
        assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
        posted.push(a.body["id"].as_str().unwrap().to_owned());
    }
    // Newest first, as feeds are read.
    posted.reverse();

    // Followers are worked in id order: once the first holds an activity, the fan-out is under way.
    eventually(
        "the fan-out is under way",
        Duration::from_secs(30),
        || async { !api.flat_ids(&fans[0]).await.is_empty() },
    )
    .await;
    let stopping = Instant::now();
    assert!(
        script_async("cassandra", "stop").await,
        "scripts/cassandra.sh stop"
    );
    let (waiting, in_flight, _) = queue.depth().await;
    eprintln!(
        "Cassandra stopped after {:?}: {waiting} fan-out messages waiting, {in_flight} in flight",
        stopping.elapsed()
    );
    assert!(
        waiting + in_flight > 0,
        "the fan-out had already finished when Cassandra stopped: nothing was tested"
    );
    let health = api.send(Method::GET, "/health", None, None).await;
    assert_eq!(health.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        health.body["failing"]["store"].is_string(),
        "{}",
        health.body
    );
    let refused = api
        .post(&star, json!({"actor": star, "object": "while_down"}))
        .await;
    assert_eq!(
        refused.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        refused.body
    );
    assert_eq!(refused.body["error"]["code"], json!("unavailable"));
    // Let messages fail and come back a few times while the node is down.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        script_async("cassandra", "start").await,
        "scripts/cassandra.sh start"
    );
    eprintln!("Cassandra back after {:?}", stopping.elapsed());

    queue.drained(Duration::from_secs(300)).await;
    eprintln!("queue drained after {:?}", stopping.elapsed());
    assert_eq!(
        queue.dead_letters().await,
        0,
        "no message was dead-lettered"
    );
    assert!(
        server.log_text().contains("fan-out message failed"),
        "the outage made fan-out messages fail (and come back)"
    );

    // Every follower's timeline, read from the store (5,000 signed requests would take minutes in
    // a debug build), and every 100th also as served.
    let feeds = concurrently(fans.clone(), 64, |fan| {
        let store = store.clone();
        async move {
            let feed = store.timeline(&fan, IdRange::default(), 100).await.unwrap();
            feed.into_iter().map(|a| a.id).collect::<Vec<String>>()
        }
    })
    .await;
    let wrong: Vec<(&String, &Vec<String>)> = fans
        .iter()
        .zip(&feeds)
        .filter(|(_, feed)| **feed != posted)
        .collect();
    assert!(
        wrong.is_empty(),
        "{} of 5,000 followers do not hold the 4 activities exactly once, e.g. {} holds {:?} (expected {posted:?})",
        wrong.len(),
        wrong[0].0,
        wrong[0].1
    );
    for fan in fans.iter().step_by(100) {
        assert_eq!(api.flat_ids(fan).await, posted, "{fan}'s feed as served");
    }
    assert_eq!(
        api.user_ids(&star).await,
        posted,
        "the actor's own feed holds each activity once"
    );
    eprintln!("checked 5,000 feeds after {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn queue_stopped_while_posting_answers_503_and_the_retry_stores_and_fans_out_once() {
    let _serial = SERIAL.lock().await;
    let _elasticmq = KeepRunning("elasticmq");
    let started = Instant::now();
    let queue = TestQueue::create("faults_queue", 2, 5).await;
    let server = Server::cassandra_sqs(BIN, "faults-queue", KEYSPACE, queue.url(), &[]);
    let api = Api::new(&server);

    let star = unique("star");
    let fans: Vec<String> = (0..3).map(|i| unique(&format!("fan{i}"))).collect();
    for fan in &fans {
        assert_eq!(api.follow(fan, &star).await.status, StatusCode::CREATED);
    }
    let earlier = api
        .post(&star, json!({"actor": star, "object": "earlier"}))
        .await;
    assert_eq!(earlier.status, StatusCode::CREATED);
    let earlier_id = earlier.body["id"].as_str().unwrap().to_owned();
    queue.drained(Duration::from_secs(60)).await;
    for fan in &fans {
        assert_eq!(api.flat_ids(fan).await, vec![earlier_id.clone()]);
    }

    assert!(
        script_async("elasticmq", "stop").await,
        "scripts/elasticmq.sh stop"
    );
    let body =
        json!({"actor": star, "verb": "post", "object": "obj_1", "foreign_id": "post:retry"});
    let refused = api.post(&star, body.clone()).await;
    assert_eq!(
        refused.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        refused.body
    );
    assert_eq!(refused.body["error"]["code"], json!("unavailable"));
    assert!(
        refused.body["error"]["message"].is_string(),
        "{}",
        refused.body
    );
    let health = api.send(Method::GET, "/health", None, None).await;
    assert_eq!(health.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        health.body["failing"]["queue"].is_string(),
        "{}",
        health.body
    );
    assert_eq!(
        api.user_ids(&star).await,
        vec![earlier_id.clone()],
        "the refused activity was not kept"
    );

    assert!(
        script_async("elasticmq", "start").await,
        "scripts/elasticmq.sh start"
    );
    // ElasticMQ keeps queues in memory: the test's queue comes back empty, at the same URL.
    queue.recreate().await;
    let retry = api.post(&star, body.clone()).await;
    assert!(
        retry.status == StatusCode::CREATED || retry.status == StatusCode::OK,
        "the retry: {} {}",
        retry.status,
        retry.body
    );
    let id = retry.body["id"].as_str().unwrap().to_owned();
    let again = api.post(&star, body).await;
    assert_eq!(again.status, StatusCode::OK, "a second retry finds it");
    assert_eq!(again.body, retry.body);

    queue.drained(Duration::from_secs(60)).await;
    assert_eq!(queue.dead_letters().await, 0);
    let expected = vec![id.clone(), earlier_id.clone()];
    assert_eq!(
        api.user_ids(&star).await,
        expected,
        "stored exactly once in the actor's own feed"
    );
    for fan in &fans {
        assert_eq!(
            api.flat_ids(fan).await,
            expected,
            "{fan} holds the activity exactly once"
        );
    }
    eprintln!("done after {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cassandra_stopped_mid_erasure_then_restarted_the_erasure_completes() {
    let _serial = SERIAL.lock().await;
    let _cassandra = KeepRunning("cassandra");
    let store = cassandra_store(KEYSPACE).await;
    let queue = TestQueue::create("faults_erase", 2, 1000).await;
    // Chunks of 5: the erasure of 300 activities and 100 edges takes about 80 messages.
    let server = Server::cassandra_sqs(
        BIN,
        "faults-erase",
        KEYSPACE,
        queue.url(),
        &[("FEEDS_FANOUT_CHUNK_SIZE", "5".into())],
    );
    let api = Api::new(&server);
    let user = unique("erased");
    // Names apart from the user's: the table check below looks for the user's id in every cell.
    let fans: Vec<String> = (0..100).map(|_| unique("fan")).collect();
    concurrently(fans.clone(), 32, |fan| {
        let store = store.clone();
        let edge = FollowEdge {
            follower: fan,
            following: user.clone(),
            created_at: chrono::Utc::now(),
        };
        async move { store.follow(&edge).await.unwrap() }
    })
    .await;
    // Three posted through the API, fanned out to every follower; the rest seeded in the store.
    let mut fanned = Vec::new();
    for i in 0..3 {
        let a = api
            .post(&user, json!({"actor": user, "object": format!("obj_{i}")}))
            .await;
        assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
        fanned.push(a.body["id"].as_str().unwrap().to_owned());
    }
    queue.drained(Duration::from_secs(120)).await;
    assert_eq!(api.flat_ids(&fans[0]).await.len(), 3);
    concurrently((0..297).collect::<Vec<u32>>(), 32, |i| {
        let store = store.clone();
        let user = user.clone();
        async move {
            let new = feeds::model::NewActivity {
                actor: user.clone(),
                verb: None,
                object: format!("seeded_{i}"),
                target: None,
                time: None,
                foreign_id: Some(format!("seed:{i}")),
                to: None,
                extra: None,
            };
            let a = new.into_activity(chrono::Utc::now()).unwrap();
            store.put_activity(&a).await.unwrap();
        }
    })
    .await;
    let own = |store: std::sync::Arc<feeds::store::cassandra::CassandraStore>, user: String| async move {
        store
            .user_feed(&user, IdRange::default(), 1000)
            .await
            .unwrap()
            .len()
    };
    assert_eq!(own(store.clone(), user.clone()).await, 300);

    let erased = api
        .send(
            Method::DELETE,
            &format!("/users/{user}"),
            Some(&feeds_testkit::tokens::token(&user)),
            None,
        )
        .await;
    assert_eq!(erased.status, StatusCode::ACCEPTED, "{}", erased.body);
    eventually("the erasure is under way", Duration::from_secs(60), || {
        let (store, user) = (store.clone(), user.clone());
        async move { own(store, user).await < 290 }
    })
    .await;
    assert!(
        script_async("cassandra", "stop").await,
        "scripts/cassandra.sh stop"
    );
    let (waiting, in_flight, _) = queue.depth().await;
    assert!(
        waiting + in_flight > 0,
        "the erasure had already finished when Cassandra stopped: nothing was tested"
    );
    eprintln!("Cassandra stopped mid-erasure: {waiting} messages waiting, {in_flight} in flight");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        script_async("cassandra", "start").await,
        "scripts/cassandra.sh start"
    );
    queue.drained(Duration::from_secs(300)).await;
    assert_eq!(
        queue.dead_letters().await,
        0,
        "no message was dead-lettered"
    );
    assert!(
        server.log_text().contains("fan-out message failed"),
        "the outage made erasure messages fail (and come back)"
    );

    let store = cassandra_store(KEYSPACE).await;
    assert_eq!(
        own(store.clone(), user.clone()).await,
        0,
        "no activity left"
    );
    assert!(store.followers(&user, None, 10).await.unwrap().is_empty());
    for fan in fans.iter().step_by(10) {
        assert!(
            !store.is_following(fan, &user).await.unwrap(),
            "{fan} still follows the erased user"
        );
        assert!(api.flat_ids(fan).await.is_empty(), "{fan}'s feed");
    }
    let left: Vec<_> = feeds_testkit::remains::cassandra(&store, KEYSPACE, &user)
        .await
        .into_iter()
        .filter(|r| {
            !matches!(
                r.table.as_str(),
                "following" | "user_counts" | "rate_windows"
            )
        })
        .collect();
    assert!(left.is_empty(), "left of the erased user: {left:#?}");
    // A foreign id of the erased user is free again.
    let again = api
        .post(
            &user,
            json!({"actor": user, "object": "again", "foreign_id": "seed:7"}),
        )
        .await;
    assert_eq!(again.status, StatusCode::CREATED, "{}", again.body);
}
