//! The fan-out function on real SQS messages: jobs go through ElasticMQ, the handler gets them as
//! the `SqsEvent` Lambda would build, and it writes to the real Cassandra.
//! Needs `scripts/cassandra.sh start` and `scripts/elasticmq.sh start` (the test command runs both).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_lambda_events::event::sqs::SqsEvent;
use aws_sdk_sqs::Client;
use feeds::fanout::{Fanout, FanoutJob, FanoutSettings};
use feeds::model::{parse_time, Activity, ActivityId, FollowEdge};
use feeds::queue::sqs::{SqsConfig, SqsQueue};
use feeds::queue::Queue;
use feeds::settings::Env;
use feeds::store::cassandra::{self, CassandraConfig, CassandraStore};
use feeds::store::{IdRange, Store};
use futures::stream::{self, StreamExt};
use serde_json::json;
use tokio::sync::OnceCell;

fn unique(prefix: &str) -> String {
    format!("{prefix}_{:012x}", rand::random::<u64>() >> 16)
}

/// A store of its own for each test: a session's connections live on the runtime that made them,
/// and each test has its own runtime. The schema is migrated once.
async fn store() -> Arc<CassandraStore> {
    static MIGRATED: OnceCell<()> = OnceCell::const_new();
    let mut cfg = CassandraConfig::read(&Env::process()).unwrap();
    cfg.keyspace = "feeds_fanout_test".into();
    let session = cassandra::connect(&cfg)
        .await
        .expect("Cassandra on FEEDS_CASSANDRA_NODES (scripts/cassandra.sh start)");
    MIGRATED
        .get_or_init(|| async { cassandra::migrate(&session, &cfg).await.unwrap() })
        .await;
    Arc::new(CassandraStore::new(Arc::new(session), &cfg).await.unwrap())
}

/// A fresh queue on the local SQS server, so tests never see each other's messages.
async fn fresh_queue() -> SqsQueue {
    let endpoint =
        std::env::var("FEEDS_SQS_ENDPOINT").unwrap_or_else(|_| "http://127.0.0.1:9324".into());
    let client: Client = feeds::queue::sqs::client(&SqsConfig {
        queue_url: String::new(),
        endpoint: Some(endpoint),
    })
    .await;
    let name = unique("fanout_test");
    let created = client
        .create_queue()
        .queue_name(&name)
        .send()
        .await
        .expect("ElasticMQ on FEEDS_SQS_ENDPOINT (scripts/elasticmq.sh start)");
    SqsQueue::new(client, created.queue_url.unwrap())
}

/// Receives what the queue holds, as Lambda's event source does, and builds the event Lambda sends.
async fn receive_event(queue: &SqsQueue) -> Option<(SqsEvent, HashMap<String, String>)> {
    let received = queue.receive(1).await.unwrap();
    if received.is_empty() {
        return None;
    }
    let mut receipts = HashMap::new();
    let records: Vec<_> = received
        .into_iter()
        .map(|(m, receipt)| {
            receipts.insert(m.id.clone(), receipt.clone());
            json!({
                "messageId": m.id, "receiptHandle": receipt, "body": m.body,
                "attributes": {"ApproximateReceiveCount": "1", "SentTimestamp": "1795946400150"},
                "messageAttributes": {}, "md5OfBody": "", "eventSource": "aws:sqs",
                "eventSourceARN": "arn:aws:sqs:us-east-1:000000000000:fanout", "awsRegion": "us-east-1"
            })
        })
        .collect();
    Some((
        serde_json::from_value(json!({"Records": records})).unwrap(),
        receipts,
    ))
}

/// Runs the handler on everything the queue delivers until it stays empty; deletes what succeeded
/// (as the event source does) and answers the ids reported failed.
async fn drain(fanout: &Fanout, queue: &SqsQueue) -> Vec<String> {
    let mut failed = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(240);
    let mut empty_polls = 0;
    while empty_polls < 2 {
        assert!(Instant::now() < deadline, "the queue did not drain");
        let Some((event, receipts)) = receive_event(queue).await else {
            empty_polls += 1;
            continue;
        };
        empty_polls = 0;
        let response = fanout.handle_sqs_event(event).await;
        let failures: Vec<String> = response
            .batch_item_failures
            .into_iter()
            .map(|f| f.item_identifier)
            .collect();
        for (id, receipt) in receipts {
            if !failures.contains(&id) {
                queue.delete(&receipt).await.unwrap();
            }
        }
        failed.extend(failures);
    }
    failed
}

async fn post(store: &CassandraStore, actor: &str) -> Activity {
    let time = parse_time("2026-11-29T10:00:00Z").unwrap();
    let activity = Activity {
        id: ActivityId::new(time).0,
        actor: actor.into(),
        verb: "post".into(),
        object: "obj".into(),
        target: None,
        time,
        foreign_id: None,
        extra: None,
    };
    store.put_activity(&activity).await.unwrap();
    activity
}

async fn add_followers(store: &CassandraStore, actor: &str, n: usize) -> Vec<String> {
    let fans: Vec<String> = (0..n).map(|i| format!("{actor}_fan{i:05}")).collect();
    stream::iter(fans.clone())
        .map(|fan| async move {
            let edge = FollowEdge {
                follower: fan,
                following: actor.to_owned(),
                created_at: chrono::Utc::now(),
            };
            store.follow(&edge).await.unwrap();
        })
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await;
    fans
}

/// Each follower's timeline, read back in full.
async fn timelines(store: &CassandraStore, owners: &[String]) -> Vec<Vec<String>> {
    stream::iter(owners.to_vec())
        .map(|owner| async move {
            store
                .timeline(&owner, IdRange::default(), 100)
                .await
                .unwrap()
                .into_iter()
                .map(|a| a.id)
                .collect()
        })
        .buffered(64)
        .collect()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_fanout_reaches_2500_followers_exactly_once() {
    let store = store().await;
    let queue = fresh_queue().await;
    let settings = FanoutSettings {
        chunk_size: 200,
        ..Default::default()
    };
    let fanout = Fanout::new(store.clone(), Arc::new(queue.clone()), settings);
    let actor = unique("star");
    let fans = add_followers(&store, &actor, 2500).await;
    let activity = post(&store, &actor).await;

    queue
        .send(&[FanoutJob::Deliver {
            activity_id: activity.id.clone(),
            actor: actor.clone(),
            after: None,
        }])
        .await
        .unwrap();
    let failed = drain(&fanout, &queue).await;
    assert!(failed.is_empty(), "failed: {failed:?}");
    let feeds = timelines(&store, &fans).await;
    let missing = feeds
        .iter()
        .filter(|f| f.as_slice() != [activity.id.clone()])
        .count();
    assert_eq!(
        missing, 0,
        "every one of 2,500 followers holds the activity exactly once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redelivered_message_changes_nothing() {
    let store = store().await;
    let queue = fresh_queue().await;
    let fanout = Fanout::new(
        store.clone(),
        Arc::new(queue.clone()),
        FanoutSettings {
            chunk_size: 10,
            ..Default::default()
        },
    );
    let actor = unique("star");
    let fans = add_followers(&store, &actor, 25).await;
    let activity = post(&store, &actor).await;
    queue
        .send(&[FanoutJob::Deliver {
            activity_id: activity.id.clone(),
            actor: actor.clone(),
            after: None,
        }])
        .await
        .unwrap();

    // The first message is handled but not deleted: SQS delivers it again after its visibility timeout.
    let (first, _) = receive_event(&queue).await.expect("the job");
    assert!(fanout
        .handle_sqs_event(first.clone())
        .await
        .batch_item_failures
        .is_empty());
    assert!(drain(&fanout, &queue).await.is_empty());
    let once = timelines(&store, &fans).await;
    assert!(once.iter().all(|f| f.as_slice() == [activity.id.clone()]));

    assert!(
        fanout
            .handle_sqs_event(first)
            .await
            .batch_item_failures
            .is_empty(),
        "the redelivery succeeds"
    );
    assert!(drain(&fanout, &queue).await.is_empty());
    assert_eq!(timelines(&store, &fans).await, once, "and changes nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unparsable_message_is_reported_alone_and_batch_mates_succeed() {
    let store = store().await;
    let queue = fresh_queue().await;
    let fanout = Fanout::new(
        store.clone(),
        Arc::new(queue.clone()),
        FanoutSettings::default(),
    );
    let (actor, fan) = (unique("star"), unique("fan"));
    store
        .follow(&FollowEdge {
            follower: fan.clone(),
            following: actor.clone(),
            created_at: chrono::Utc::now(),
        })
        .await
        .unwrap();
    let activity = post(&store, &actor).await;

    let bodies = [
        "{\"kind\":\"teleport\"}".to_owned(),
        serde_json::to_string(&FanoutJob::Deliver {
            activity_id: activity.id.clone(),
            actor: actor.clone(),
            after: None,
        })
        .unwrap(),
        "not json at all".to_owned(),
    ];
    for body in &bodies {
        queue
            .client()
            .send_message()
            .queue_url(queue.queue_url())
            .message_body(body)
            .send()
            .await
            .unwrap();
    }
    let mut event_records = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while event_records.len() < 3 {
        assert!(Instant::now() < deadline, "messages did not arrive");
        if let Some((event, _)) = receive_event(&queue).await {
            event_records.extend(event.records);
        }
    }
    let poison: Vec<String> = event_records
        .iter()
        .filter(|r| !r.body.as_deref().unwrap_or("").contains("deliver"))
        .map(|r| r.message_id.clone().unwrap())
        .collect();
    let mut event = SqsEvent::default();
    event.records = event_records;
    let response = fanout.handle_sqs_event(event).await;
    let mut reported: Vec<String> = response
        .batch_item_failures
        .into_iter()
        .map(|f| f.item_identifier)
        .collect();
    reported.sort();
    let mut expected = poison.clone();
    expected.sort();
    assert_eq!(
        reported, expected,
        "only the messages that do not parse are reported"
    );
    let timeline = store.timeline(&fan, IdRange::default(), 10).await.unwrap();
    assert_eq!(
        timeline,
        vec![activity],
        "the good batch-mate was delivered"
    );
}
