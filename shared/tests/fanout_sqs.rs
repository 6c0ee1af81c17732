//! The fan-out function on real SQS messages: jobs go through ElasticMQ, the handler gets them as
//! the `SqsEvent` Lambda would build, and it writes to the real Cassandra.
//! Needs `scripts/cassandra.sh start` and `scripts/elasticmq.sh start` (the test command runs both).

use std::sync::Arc;
use std::time::{Duration, Instant};

use feeds::fanout::{Fanout, FanoutSettings};
use feeds::model::{parse_time, Activity, ActivityId, FollowEdge};
use feeds::queue::FanoutJob;
use feeds::queue::Queue;
use feeds::store::cassandra::CassandraStore;
use feeds::store::{IdRange, Store};
use feeds_testkit::services::{cassandra_store, fresh_queue, handle, receive, send_raw};
use feeds_testkit::unique;
use feeds_testkit::wait::drain_sqs;
use futures::stream::{self, StreamExt};

/// The keyspace of these tests.
const KEYSPACE: &str = "feeds_fanout_test";

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
        to: Vec::new(),
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
    let store = cassandra_store(KEYSPACE).await;
    let queue = fresh_queue("fanout_test").await;
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
    let failed = drain_sqs(&queue, &fanout).await;
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
    let store = cassandra_store(KEYSPACE).await;
    let queue = fresh_queue("fanout_test").await;
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
    let first = receive(&queue, 1).await;
    assert!(!first.is_empty(), "the job");
    assert!(handle(&fanout, &first).await.is_empty());
    assert!(drain_sqs(&queue, &fanout).await.is_empty());
    let once = timelines(&store, &fans).await;
    assert!(once.iter().all(|f| f.as_slice() == [activity.id.clone()]));

    assert!(
        handle(&fanout, &first).await.is_empty(),
        "the redelivery succeeds"
    );
    assert!(drain_sqs(&queue, &fanout).await.is_empty());
    assert_eq!(timelines(&store, &fans).await, once, "and changes nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unparsable_message_is_reported_alone_and_batch_mates_succeed() {
    let store = cassandra_store(KEYSPACE).await;
    let queue = fresh_queue("fanout_test").await;
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
        send_raw(&queue, body).await;
    }
    let mut batch = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while batch.len() < 3 {
        assert!(Instant::now() < deadline, "messages did not arrive");
        batch.extend(receive(&queue, 1).await);
    }
    let poison: Vec<String> = batch
        .iter()
        .filter(|m| !m.body.contains("deliver"))
        .map(|m| m.id.clone())
        .collect();
    let mut reported = handle(&fanout, &batch).await;
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

/// A recount and a notification delivered three times: the count stays exact, and the feed holds
/// the activity once, its group unseen once; a mark made between two deliveries stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recount_and_notify_redelivered_three_times_stay_exact() {
    use feeds::notify;
    use feeds::store::Counted;

    let store = cassandra_store(KEYSPACE).await;
    let queue = fresh_queue("fanout_test").await;
    let fanout = Fanout::new(store.clone(), Arc::new(queue.clone()), Default::default());
    let actor = unique("counted");
    add_followers(&store, &actor, 7).await;
    let reader = unique("reader");
    let mut activity = post(&store, &actor).await;
    store.delete_activity(&activity).await.unwrap();
    activity.id = ActivityId::new(activity.time).0;
    activity.to = vec![reader.clone(), actor.clone()];
    store.put_activity(&activity).await.unwrap();
    queue
        .send(&[
            FanoutJob::recount(&actor, Counted::Followers),
            FanoutJob::Notify {
                activity_id: activity.id.clone(),
                from: 0,
            },
        ])
        .await
        .unwrap();
    let messages = receive(&queue, 2).await;
    assert_eq!(messages.len(), 2);
    assert!(handle(&fanout, &messages).await.is_empty());
    assert_eq!(store.user_counts(&actor).await.unwrap().followers, 7);
    let page = notify::page(store.as_ref(), &reader, None, 10)
        .await
        .unwrap();
    assert_eq!(page.groups.len(), 1);
    assert_eq!((page.unseen, page.unread), (1, 1));
    // Read after the first delivery: the redeliveries do not make it unseen again.
    let marked = notify::Marked::Groups(vec![notify::group_of(&activity)]);
    let counts = notify::mark(store.as_ref(), &reader, &marked, true)
        .await
        .unwrap();
    assert_eq!(counts, (0, 0));
    for round in 2..=3 {
        assert!(
            handle(&fanout, &messages).await.is_empty(),
            "delivery {round}"
        );
        let page = notify::page(store.as_ref(), &reader, None, 10)
            .await
            .unwrap();
        assert_eq!(page.groups.len(), 1, "delivery {round}");
        assert_eq!((page.unseen, page.unread), (0, 0), "delivery {round}");
        assert_eq!(store.user_counts(&actor).await.unwrap().followers, 7);
    }
    let own = notify::page(store.as_ref(), &actor, None, 10)
        .await
        .unwrap();
    assert!(own.groups.is_empty(), "never to the actor");
}
