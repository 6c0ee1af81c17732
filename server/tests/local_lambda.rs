//! The local Lambda stack as a user meets it: the functions under `cargo lambda watch` (every
//! request through its router), ElasticMQ, Cassandra, and `feeds-server local-trigger` standing in
//! for Lambda's SQS trigger. `scripts/local-lambda.sh check` brings the stack up, runs these tests
//! (ignored otherwise: they need the stack) and stops it:
//! `FEEDS_LOCAL_LAMBDA_URL` is the stack's port, `FEEDS_QUEUE_URL` its fan-out queue and
//! `FEEDS_CASSANDRA_KEYSPACE` its keyspace.

use std::time::{Duration, Instant};

use feeds::model::FollowEdge;
use feeds::queue::FanoutJob;
use feeds::store::Store;
use feeds_testkit::api::Api;
use feeds_testkit::services::{cassandra_store, send_raw, var, TestQueue};
use feeds_testkit::snapshot::{assert_unchanged, snapshot};
use feeds_testkit::tokens::token;
use feeds_testkit::trigger::Trigger;
use feeds_testkit::unique;
use feeds_testkit::wait::{enqueue, eventually, FanoutQueue};
use reqwest::StatusCode;
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_feeds-server");

/// How long the fan-out may take to show a post (a cold function start included).
const FANOUT: Duration = Duration::from_secs(60);

/// The stack `scripts/local-lambda.sh` brought up.
struct Stack {
    url: String,
    queue: FanoutQueue,
    keyspace: String,
}

fn stack() -> Stack {
    let url = var("FEEDS_LOCAL_LAMBDA_URL", "");
    assert!(
        !url.is_empty(),
        "FEEDS_LOCAL_LAMBDA_URL is unset: run these tests with scripts/local-lambda.sh check"
    );
    Stack {
        url,
        queue: FanoutQueue::Sqs(var("FEEDS_QUEUE_URL", "")),
        keyspace: var("FEEDS_CASSANDRA_KEYSPACE", "feeds"),
    }
}

fn api(stack: &Stack) -> Api {
    Api {
        base: stack.url.clone(),
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap(),
    }
}

/// `actor` posts; answers the activity's id.
async fn post(api: &Api, actor: &str) -> String {
    let body =
        json!({"actor": actor, "verb": "post", "object": "obj_1", "foreign_id": unique("post")});
    let posted = api.post(actor, body).await;
    assert_eq!(posted.status, StatusCode::CREATED, "{}", posted.body);
    posted.body["id"].as_str().unwrap().to_owned()
}

/// The newest activity of `user`'s flat feed.
async fn newest(api: &Api, user: &str) -> Option<String> {
    let page = api.get("/feeds/flat?limit=1", &token(user)).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    page.body["results"][0]["id"].as_str().map(str::to_owned)
}

/// Whether activity `id` is in a group of `user`'s aggregated feed.
async fn aggregated(api: &Api, user: &str, id: &str) -> bool {
    let page = api.get("/feeds/aggregated?limit=10", &token(user)).await;
    let groups = page.body["results"].as_array().cloned().unwrap_or_default();
    groups.iter().any(|g| {
        g["activities"]
            .as_array()
            .is_some_and(|a| a.iter().any(|a| a["id"] == id))
    })
}

/// A reader follows an author, who posts: answers (author, reader, the post's id) once the post is
/// in the reader's flat feed.
async fn delivered_post(api: &Api) -> (String, String, String) {
    let (author, reader) = (unique("author"), unique("reader"));
    let followed = api.follow(&reader, &author).await;
    assert_eq!(followed.status, StatusCode::CREATED, "{}", followed.body);
    let id = post(api, &author).await;
    eventually(
        "the post is in the follower's flat feed",
        FANOUT,
        || async { newest(api, &reader).await.as_deref() == Some(id.as_str()) },
    )
    .await;
    (author, reader, id)
}

#[tokio::test]
#[ignore = "needs the local Lambda stack: scripts/local-lambda.sh check"]
async fn a_post_reaches_the_followers_flat_and_aggregated_feeds() {
    let api = api(&stack());
    let (_, reader, id) = delivered_post(&api).await;
    eventually(
        "the post is in the follower's aggregated feed",
        FANOUT,
        || aggregated(&api, &reader, &id),
    )
    .await;
}

/// From a post's `201` to the follower's flat feed showing it, one post at a time: prints the
/// percentiles (the number the README's local Lambda section quotes).
#[tokio::test]
#[ignore = "needs the local Lambda stack: scripts/local-lambda.sh check"]
async fn delivery_latency_from_201_to_the_followers_feed() {
    const POSTS: usize = 20;
    let stack = stack();
    let api = api(&stack);
    let (author, reader) = (unique("author"), unique("reader"));
    assert_eq!(
        api.follow(&reader, &author).await.status,
        StatusCode::CREATED
    );
    let mut latencies = Vec::new();
    for _ in 0..POSTS {
        let id = post(&api, &author).await;
        let answered = Instant::now();
        while newest(&api, &reader).await.as_deref() != Some(id.as_str()) {
            assert!(answered.elapsed() < FANOUT, "post {id} did not arrive");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        latencies.push(answered.elapsed());
    }
    latencies.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "local Lambda stack, post 201 -> follower's flat feed, {POSTS} posts: p50 {:.0} ms, p90 {:.0} ms, max {:.0} ms",
        ms(latencies[POSTS / 2 - 1]),
        ms(latencies[POSTS * 9 / 10 - 1]),
        ms(latencies[POSTS - 1])
    );
}

/// A message the fan-out function cannot read, in one batch with good ones, on a queue of the
/// test's (the template's `maxReceiveCount`, a visibility timeout of 1 s instead of the template's,
/// so that redeliveries come quickly) with a trigger of its own, invoking the stack's function.
#[tokio::test]
#[ignore = "needs the local Lambda stack: scripts/local-lambda.sh check"]
async fn a_poison_message_is_dead_lettered_after_max_receive_count_while_its_batch_mates_are_delivered(
) {
    let stack = stack();
    let api = api(&stack);
    let (author, reader) = (unique("author"), unique("reader"));
    // Posted before the reader follows, so that the stack's own fan-out delivers them to no one.
    let mut posted = Vec::new();
    for _ in 0..4 {
        posted.push(post(&api, &author).await);
    }
    // The edge written straight to the store: no backfill, only the messages below fill the feed.
    let store = cassandra_store(&stack.keyspace).await;
    let edge = FollowEdge {
        follower: reader.clone(),
        following: author.clone(),
        created_at: chrono::Utc::now(),
    };
    store.follow(&edge).await.unwrap();

    // Created with a redrive after 100 receives: the trigger sets the template's instead.
    let queue = TestQueue::create("local_lambda_poison", 1, 100).await;
    let mut mates = Vec::new();
    for id in &posted {
        let job = FanoutJob::Deliver {
            activity_id: id.clone(),
            actor: author.clone(),
            after: None,
        };
        mates.push(send_raw(&queue.queue, &job.encode()).await);
    }
    let poison = send_raw(&queue.queue, "not a fan-out job").await;
    let trigger = Trigger::start(
        BIN,
        queue.url(),
        &["--endpoint", &stack.url, "--visibility-timeout", "1"],
    );
    let max_receive_count = trigger.settings().unwrap()["max_receive_count"]
        .as_u64()
        .unwrap();
    eventually("the poison message is dead-lettered", FANOUT, || async {
        queue.dead_letters().await == 1
    })
    .await;
    queue.drained(FANOUT).await;

    let batches = trigger.batches();
    let first = &batches[0];
    assert_eq!(first.messages.len(), 5, "one batch: {first:?}");
    assert!(first.answered, "{first:?}");
    assert_eq!(
        first.failed,
        std::slice::from_ref(&poison),
        "the poison alone reported"
    );
    assert_eq!(first.deleted, 4, "its batch-mates deleted");
    let receives: Vec<u32> = batches
        .iter()
        .flat_map(|b| b.messages.iter().filter(|(m, _)| *m == poison))
        .map(|(_, count)| *count)
        .collect();
    let expected: Vec<u32> = (1..=max_receive_count as u32).collect();
    assert_eq!(
        receives, expected,
        "received maxReceiveCount times: {batches:?}"
    );
    for mate in &mates {
        let deliveries = batches.iter().filter(|b| b.holds(mate)).count();
        assert_eq!(deliveries, 1, "batch-mate {mate} delivered once");
    }
    assert_eq!(queue.take_dead_letters().await, ["not a fan-out job"]);
    let mut expected_feed = posted.clone();
    expected_feed.reverse();
    assert_eq!(api.flat_ids(&reader).await, expected_feed, "newest first");
}

/// The delivery a post made, delivered twice more through the stack's own queue and trigger,
/// changes nothing anyone can read.
#[tokio::test]
#[ignore = "needs the local Lambda stack: scripts/local-lambda.sh check"]
async fn the_same_message_delivered_twice_changes_nothing() {
    let stack = stack();
    let api = api(&stack);
    let (author, reader, id) = delivered_post(&api).await;
    let users = [author.as_str(), reader.as_str()];
    let before: Vec<Value> = snapshot(&api, &stack.queue, &users).await;
    let job = FanoutJob::Deliver {
        activity_id: id,
        actor: author.clone(),
        after: None,
    };
    enqueue(&stack.queue, &[job.clone(), job]).await;
    assert_unchanged(
        &api,
        &stack.queue,
        &users,
        &before,
        "delivering a post twice more",
    )
    .await;
}
