//! At-least-once delivery through the real queue: a message delivered three times leaves the feeds
//! as one delivery does; a poison message is reported alone and, after `maxReceiveCount` receives,
//! waits in the dead-letter queue while its batch-mates succeed; and follow and unfollow of the same
//! pair, raced over HTTP while the followee posts, leave the feed agreeing with the final edge.
//! Needs Cassandra and ElasticMQ (`scripts/test.sh` starts both). Each test reads every feed it
//! touched.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use feeds::fanout::{Fanout, FanoutSettings};
use feeds::model::{Activity, ActivityId, FollowEdge};
use feeds::queue::embedded::EmbeddedQueue;
use feeds::queue::FanoutJob;
use feeds::queue::Queue;
use feeds::store::cassandra::CassandraStore;
use feeds::store::sqlite::SqliteDb;
use feeds::store::{IdRange, Store};
use feeds_testkit::api::Api;
use feeds_testkit::server::Server;
use feeds_testkit::services::{cassandra_store, handle, receive, send_raw, TestQueue};
use feeds_testkit::wait::{eventually, until_drained, FanoutQueue};
use feeds_testkit::{concurrently, unique};
use reqwest::StatusCode;
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_feeds-server");

const KEYSPACE: &str = "feeds_delivery";

fn activity(actor: &str, object: &str, second: u32) -> Activity {
    let time = feeds::model::parse_time(&format!("2026-11-29T10:00:{second:02}Z")).unwrap();
    Activity {
        id: ActivityId::new(time).0,
        actor: actor.into(),
        verb: "post".into(),
        object: object.into(),
        target: None,
        time,
        foreign_id: None,
        to: Vec::new(),
        extra: None,
    }
}

async fn follow(store: &CassandraStore, follower: &str, following: &str) {
    let edge = FollowEdge {
        follower: follower.into(),
        following: following.into(),
        created_at: chrono::Utc::now(),
    };
    store.follow(&edge).await.unwrap();
}

/// One run of the delivery scenario: an actor with 25 followers (chunks of 10), a late follower
/// and a leaver, each fan-out job's message delivered `deliveries` times.
struct World {
    store: Arc<CassandraStore>,
    queue: TestQueue,
    fanout: Fanout,
    actor: String,
    fans: Vec<String>,
    late: String,
}

impl World {
    async fn new(store: Arc<CassandraStore>) -> World {
        let queue = TestQueue::create("delivery_thrice", 1, 100).await;
        let settings = FanoutSettings {
            chunk_size: 10,
            ..Default::default()
        };
        let fanout = Fanout::new(store.clone(), Arc::new(queue.queue.clone()), settings);
        let actor = unique("actor");
        let fans: Vec<String> = (0..25).map(|i| format!("{actor}_fan{i:02}")).collect();
        for fan in &fans {
            follow(&store, fan, &actor).await;
        }
        World {
            late: format!("{actor}_late"),
            store,
            queue,
            fanout,
            actor,
            fans,
        }
    }

    /// Sends `job`, then works the queue as Lambda does until it is empty, except that the job's
    /// own message is left undeleted (as by a consumer that crashed after its work) until its
    /// `deliveries`-th receipt: SQS delivers it again after the visibility timeout.
    async fn run(&self, job: FanoutJob, deliveries: usize) {
        let head = send_raw(&self.queue.queue, &job.encode()).await;
        let mut received = 0;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            assert!(Instant::now() < deadline, "the queue did not drain");
            let messages = receive(&self.queue.queue, 1).await;
            if messages.is_empty() {
                if received == deliveries && self.queue.depth().await == (0, 0, 0) {
                    return;
                }
                continue;
            }
            let failed = handle(&self.fanout, &messages).await;
            assert!(failed.is_empty(), "failed: {failed:?}");
            for m in &messages {
                if m.id == head {
                    received += 1;
                    if received < deliveries {
                        continue;
                    }
                }
                self.queue.queue.delete(&m.receipt).await.unwrap();
            }
        }
    }

    /// Every feed the scenario touches, as object names (ids differ between runs), by role.
    async fn snapshot(&self) -> BTreeMap<String, Vec<String>> {
        let objects = |feed: Vec<Activity>| feed.into_iter().map(|a| a.object).collect();
        let mut out = BTreeMap::new();
        for (i, fan) in self.fans.iter().enumerate() {
            let feed = self
                .store
                .timeline(fan, IdRange::default(), 100)
                .await
                .unwrap();
            out.insert(format!("fan{i:02}"), objects(feed));
        }
        let late = self
            .store
            .timeline(&self.late, IdRange::default(), 100)
            .await
            .unwrap();
        out.insert("late".into(), objects(late));
        let own = self
            .store
            .user_feed(&self.actor, IdRange::default(), 100)
            .await
            .unwrap();
        out.insert("actor".into(), objects(own));
        out
    }

    /// Deliver, backfill, purge and retract, each through the queue; the feeds after each step.
    async fn scenario(&self, deliveries: usize) -> Vec<BTreeMap<String, Vec<String>>> {
        let mut steps = Vec::new();
        let (a1, a2) = (
            activity(&self.actor, "first", 1),
            activity(&self.actor, "second", 2),
        );
        for a in [&a1, &a2] {
            self.store.put_activity(a).await.unwrap();
            let job = FanoutJob::Deliver {
                activity_id: a.id.clone(),
                actor: self.actor.clone(),
                after: None,
            };
            self.run(job, deliveries).await;
            steps.push(self.snapshot().await);
        }
        follow(&self.store, &self.late, &self.actor).await;
        let backfill = FanoutJob::Backfill {
            follower: self.late.clone(),
            followee: self.actor.clone(),
        };
        self.run(backfill, deliveries).await;
        steps.push(self.snapshot().await);

        let leaver = &self.fans[0];
        self.store.unfollow(leaver, &self.actor).await.unwrap();
        let purge = FanoutJob::Purge {
            follower: leaver.clone(),
            followee: self.actor.clone(),
            before: None,
        };
        self.run(purge, deliveries).await;
        steps.push(self.snapshot().await);

        self.store.delete_activity(&a1).await.unwrap();
        let retract = FanoutJob::Retract {
            activity_id: a1.id.clone(),
            actor: self.actor.clone(),
            after: None,
        };
        self.run(retract, deliveries).await;
        steps.push(self.snapshot().await);
        assert_eq!(self.queue.dead_letters().await, 0);
        steps
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_delivered_three_times_leaves_the_feeds_as_one_delivery_does() {
    let started = Instant::now();
    let store = cassandra_store(KEYSPACE).await;
    let (once, thrice) = (
        World::new(store.clone()).await,
        World::new(store.clone()).await,
    );
    let (once, thrice) = tokio::join!(once.scenario(1), thrice.scenario(3));
    assert_eq!(
        thrice, once,
        "three deliveries of each message changed the feeds otherwise than one"
    );

    // And what one delivery leaves is right: every step's feeds, exactly once each.
    let fans = |n: usize, feed: &[&str]| -> Vec<(String, Vec<String>)> {
        (0..n)
            .map(|i| {
                (
                    format!("fan{i:02}"),
                    feed.iter().map(|s| s.to_string()).collect(),
                )
            })
            .collect()
    };
    let expect = |fan_feeds: Vec<(String, Vec<String>)>, late: &[&str], actor: &[&str]| {
        let mut m: BTreeMap<String, Vec<String>> = fan_feeds.into_iter().collect();
        m.insert("late".into(), late.iter().map(|s| s.to_string()).collect());
        m.insert(
            "actor".into(),
            actor.iter().map(|s| s.to_string()).collect(),
        );
        m
    };
    assert_eq!(once[0], expect(fans(25, &["first"]), &[], &["first"]));
    let both = ["second", "first"];
    assert_eq!(once[1], expect(fans(25, &both), &[], &both));
    assert_eq!(once[2], expect(fans(25, &both), &both, &both));
    let mut after_purge = expect(fans(25, &both), &both, &both);
    after_purge.insert("fan00".into(), vec![]);
    assert_eq!(once[3], after_purge);
    let mut after_retract = expect(fans(25, &["second"]), &["second"], &["second"]);
    after_retract.insert("fan00".into(), vec![]);
    assert_eq!(once[4], after_retract);
    eprintln!("done after {:?}", started.elapsed());
}

/// Bodies no handler can run: not JSON, an unknown kind, an unknown field, a wrong type, and a
/// job that parses but fails in the store every time (a partition key over Cassandra's 64 KiB).
fn poison_bodies() -> Vec<String> {
    vec![
        "not json at all".to_owned(),
        r#"{"kind":"teleport","to":"mars"}"#.to_owned(),
        r#"{"kind":"backfill","follower":"a","followee":"b","color":"red"}"#.to_owned(),
        r#"{"kind":"purge","follower":7,"followee":"b","before":null}"#.to_owned(),
        FanoutJob::encode(&FanoutJob::Backfill {
            follower: "x".repeat(70_000),
            followee: "b".into(),
        }),
    ]
}

/// An actor followed by three fans who posts `n` activities: the deliver jobs, and a check that
/// each fan holds each activity exactly once.
async fn good_jobs(store: &CassandraStore, n: usize) -> (Vec<FanoutJob>, Vec<String>, Vec<String>) {
    let actor = unique("actor");
    let fans: Vec<String> = (0..3).map(|i| format!("{actor}_fan{i}")).collect();
    for fan in &fans {
        follow(store, fan, &actor).await;
    }
    let mut jobs = Vec::new();
    let mut ids = Vec::new();
    for i in 0..n {
        let a = activity(&actor, &format!("o{i}"), i as u32);
        store.put_activity(&a).await.unwrap();
        ids.push(a.id.clone());
        jobs.push(FanoutJob::Deliver {
            activity_id: a.id,
            actor: actor.clone(),
            after: None,
        });
    }
    ids.reverse();
    (jobs, fans, ids)
}

async fn assert_delivered_once(store: &CassandraStore, fans: &[String], ids: &[String]) {
    for fan in fans {
        let feed: Vec<String> = store
            .timeline(fan, IdRange::default(), 100)
            .await
            .unwrap()
            .into_iter()
            .map(|a| a.id)
            .collect();
        assert_eq!(feed, ids, "{fan} holds every good activity exactly once");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_messages_are_reported_alone_and_dead_lettered_after_max_receives() {
    const MAX_RECEIVES: usize = 5;
    let store = cassandra_store(KEYSPACE).await;
    let queue = TestQueue::create("delivery_poison", 1, MAX_RECEIVES as u32).await;
    let fanout = Fanout::new(
        store.clone(),
        Arc::new(queue.queue.clone()),
        FanoutSettings::default(),
    );
    let poison = poison_bodies();
    let (jobs, fans, ids) = good_jobs(&store, 10 - poison.len()).await;
    let mut poison_ids = HashSet::new();
    for (i, body) in poison.iter().enumerate() {
        poison_ids.insert(send_raw(&queue.queue, body).await);
        // The good messages between the poison ones.
        if let Some(job) = jobs.get(i) {
            send_raw(&queue.queue, &job.encode()).await;
        }
    }
    for job in jobs.iter().skip(poison.len()) {
        send_raw(&queue.queue, &job.encode()).await;
    }

    // The first receipt of all ten, in one batch as Lambda's event source may hand them over.
    let mut batch = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while batch.len() < 10 {
        assert!(Instant::now() < deadline, "the messages did not arrive");
        batch.extend(receive(&queue.queue, 1).await);
    }
    let failed: HashSet<String> = handle(&fanout, &batch).await.into_iter().collect();
    assert_eq!(
        failed, poison_ids,
        "exactly the poison messages are reported"
    );
    let mut receipts: HashMap<String, usize> = HashMap::new();
    for m in &batch {
        if failed.contains(&m.id) {
            *receipts.entry(m.id.clone()).or_default() += 1;
        } else {
            queue.queue.delete(&m.receipt).await.unwrap();
        }
    }
    assert_delivered_once(&store, &fans, &ids).await;

    // The receive → handler → delete loop goes on until the poison has left the queue.
    let deadline = Instant::now() + Duration::from_secs(60);
    while queue.depth().await != (0, 0, 0) {
        assert!(Instant::now() < deadline, "the poison never left the queue");
        let messages = receive(&queue.queue, 1).await;
        let failed: HashSet<String> = handle(&fanout, &messages).await.into_iter().collect();
        for m in &messages {
            assert!(poison_ids.contains(&m.id), "a good message came back");
            assert!(failed.contains(&m.id), "a poison message was not reported");
            *receipts.entry(m.id.clone()).or_default() += 1;
        }
    }
    for id in &poison_ids {
        assert_eq!(
            receipts.get(id),
            Some(&MAX_RECEIVES),
            "poison message {id} was received maxReceiveCount times"
        );
    }
    let mut dead = queue.take_dead_letters().await;
    dead.sort();
    let mut expected = poison.clone();
    expected.sort();
    assert_eq!(
        dead, expected,
        "the dead-letter queue holds exactly the poison"
    );
    assert_delivered_once(&store, &fans, &ids).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_worker_loop_dead_letters_poison_and_delivers_its_batch_mates_once() {
    let store = cassandra_store(KEYSPACE).await;
    let queue = TestQueue::create("delivery_worker", 1, 3).await;
    let fanout = Fanout::new(
        store.clone(),
        Arc::new(queue.queue.clone()),
        FanoutSettings::default(),
    );
    let poison = poison_bodies();
    let (jobs, fans, ids) = good_jobs(&store, 5).await;
    for (body, job) in poison.iter().zip(&jobs) {
        send_raw(&queue.queue, body).await;
        queue.queue.send(std::slice::from_ref(job)).await.unwrap();
    }
    // The standalone server's own loop: receive, run the batch, delete what succeeded.
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let worker = {
        let (fanout, queue) = (fanout.clone(), queue.queue.clone());
        tokio::spawn(async move {
            fanout
                .work(&queue, async {
                    let _ = stopped.await;
                })
                .await
        })
    };
    eventually(
        "the poison is dead-lettered",
        Duration::from_secs(60),
        || async { queue.dead_letters().await == poison.len() as u64 },
    )
    .await;
    queue.drained(Duration::from_secs(30)).await;
    let _ = stop.send(());
    worker.await.unwrap();
    let mut dead = queue.take_dead_letters().await;
    dead.sort();
    let mut expected = poison.clone();
    expected.sort();
    assert_eq!(dead, expected);
    assert_delivered_once(&store, &fans, &ids).await;
}

/// Waits until the fan-out has nothing left to do; nothing may have been dead-lettered.
enum Backlog {
    Embedded(FanoutQueue, EmbeddedQueue),
    Sqs(TestQueue),
}

impl Backlog {
    async fn drained(&self) {
        let limit = Duration::from_secs(120);
        match self {
            Backlog::Sqs(q) => {
                q.drained(limit).await;
                assert_eq!(q.dead_letters().await, 0, "nothing was dead-lettered");
            }
            Backlog::Embedded(at, q) => {
                until_drained(at, limit).await;
                let (_, dead) = q.depth().await.unwrap();
                assert_eq!(dead, 0, "nothing was dead-lettered");
            }
        }
    }
}

/// How a race is run.
struct Race {
    /// Followers racing; the last two get a final follow and a final unfollow, so that both
    /// outcomes are always seen.
    pairs: usize,
    /// Activities the star posts while the race runs (their fan-out races the unfollows).
    posts_during: usize,
    /// Whether the star's followers list must agree with each fan's following list.
    check_lists: bool,
}

/// Each follower of one star races follow against unfollow 100 times (a follow and an unfollow at
/// once, 100 rounds, overlapping); once the fan-out has drained, each follower's feed agrees with
/// its final edge: all of the star's activities if it follows, none if not, and the other
/// followee's activities untouched, each exactly once.
async fn follow_unfollow_race(api: &Api, backlog: &Backlog, race: Race) {
    const ROUNDS: usize = 100;
    let started = Instant::now();
    let (star, other) = (unique("star"), unique("other"));
    let fans: Vec<String> = (0..race.pairs)
        .map(|i| unique(&format!("fan{i}")))
        .collect();
    let mut other_ids = Vec::new();
    for fan in &fans {
        assert_eq!(api.follow(fan, &other).await.status, StatusCode::CREATED);
    }
    for i in 0..2 {
        let a = api
            .post(
                &other,
                json!({"actor": other, "object": format!("other_{i}")}),
            )
            .await;
        assert_eq!(a.status, StatusCode::CREATED);
        other_ids.push(a.body["id"].as_str().unwrap().to_owned());
    }
    let mut star_ids = Vec::new();
    for i in 0..5 {
        let a = api
            .post(
                &star,
                json!({"actor": star, "object": format!("before_{i}")}),
            )
            .await;
        assert_eq!(a.status, StatusCode::CREATED);
        star_ids.push(a.body["id"].as_str().unwrap().to_owned());
    }

    let mut rounds: Vec<(String, bool)> = Vec::new();
    for _ in 0..ROUNDS {
        for fan in &fans {
            rounds.push((fan.clone(), rand::random::<bool>()));
        }
    }
    let racing = {
        let (api, star) = (api.clone(), star.clone());
        concurrently(rounds, 8 * race.pairs, move |(fan, follow_first)| {
            let (api, star) = (api.clone(), star.clone());
            async move {
                let f = api.follow(&fan, &star);
                let u = api.unfollow(&fan, &star);
                let (f, u) = if follow_first {
                    tokio::join!(f, u)
                } else {
                    let (u, f) = tokio::join!(u, f);
                    (f, u)
                };
                (f.status, u.status)
            }
        })
    };
    let posting = {
        let (api, star) = (api.clone(), star.clone());
        async move {
            let mut ids = Vec::new();
            for i in 0..race.posts_during {
                let a = api
                    .post(
                        &star,
                        json!({"actor": star, "object": format!("during_{i}")}),
                    )
                    .await;
                assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
                ids.push(a.body["id"].as_str().unwrap().to_owned());
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            ids
        }
    };
    let (statuses, during) = tokio::join!(racing, posting);
    star_ids.extend(during);
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for (f, u) in &statuses {
        *counts.entry(format!("follow {}", f.as_u16())).or_default() += 1;
        *counts
            .entry(format!("unfollow {}", u.as_u16()))
            .or_default() += 1;
    }
    eprintln!(
        "{} races in {:?}: {counts:?}",
        statuses.len(),
        started.elapsed()
    );
    for (f, u) in &statuses {
        assert!(
            matches!(f.as_u16(), 200 | 201) && u.as_u16() == 204,
            "answers {counts:?}"
        );
    }
    let (follows_last, unfollows_last) = (&fans[race.pairs - 2], &fans[race.pairs - 1]);
    assert!(api.follow(follows_last, &star).await.status.is_success());
    assert_eq!(
        api.unfollow(unfollows_last, &star).await.status,
        StatusCode::NO_CONTENT
    );

    backlog.drained().await;
    let followers: HashSet<String> = api.followers(&star).await.into_iter().collect();
    let star_set: HashSet<&String> = star_ids.iter().collect();
    let mut outcomes = Vec::new();
    for fan in &fans {
        let following = api.following(fan).await.contains(&star);
        if race.check_lists {
            assert_eq!(
                followers.contains(fan),
                following,
                "{fan}: the star's followers list and the fan's following list disagree"
            );
        }
        let feed = api.flat_ids(fan).await;
        let unique_ids: HashSet<&String> = feed.iter().collect();
        assert_eq!(unique_ids.len(), feed.len(), "{fan}: a duplicated activity");
        let of_star: HashSet<&String> = feed.iter().filter(|id| star_set.contains(id)).collect();
        let of_other = feed.iter().filter(|id| other_ids.contains(id)).count();
        assert_eq!(of_other, 2, "{fan}: the other followee's activities stay");
        assert_eq!(feed.len(), of_star.len() + 2, "{fan}: nothing else");
        if following {
            assert_eq!(
                of_star.len(),
                star_set.len(),
                "{fan} follows the star: its feed holds all of the star's activities"
            );
        } else {
            assert_eq!(
                of_star.len(),
                0,
                "{fan} does not follow the star, but its feed holds some of its activities"
            );
        }
        outcomes.push(following);
    }
    assert!(outcomes[race.pairs - 2] && !outcomes[race.pairs - 1]);
    eprintln!(
        "final edges {outcomes:?}; checked after {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_unfollow_race_on_the_embedded_default_ends_with_the_feed_agreeing_with_the_edge() {
    let (server, db) = Server::embedded(
        BIN,
        "race-embedded",
        &[("FEEDS_QUEUE_VISIBILITY_SECS", "5".into())],
    );
    let queue = EmbeddedQueue::new(SqliteDb::open(&db).unwrap(), Duration::from_secs(5), 5)
        .await
        .unwrap();
    let race = Race {
        pairs: 3,
        posts_during: 10,
        check_lists: true,
    };
    let backlog = Backlog::Embedded(server.queue().clone(), queue);
    follow_unfollow_race(&Api::new(&server), &backlog, race).await;
}

/// Backfills and purges against the edge (the `following` table), with no posts during the race.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_unfollow_race_on_cassandra_and_sqs_ends_with_the_feed_agreeing_with_the_edge() {
    let queue = TestQueue::create("delivery_race", 2, 5).await;
    let server = Server::cassandra_sqs(BIN, "race-cassandra", KEYSPACE, queue.url(), &[]);
    let race = Race {
        pairs: 3,
        posts_during: 0,
        check_lists: false,
    };
    follow_unfollow_race(&Api::new(&server), &Backlog::Sqs(queue), race).await;
}

/// With posts during the race, whose delivery goes by the `followers` table: it must agree with the
/// edge too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_unfollow_race_on_cassandra_leaves_both_lists_and_the_feed_agreeing() {
    let queue = TestQueue::create("delivery_race_lists", 2, 5).await;
    let server = Server::cassandra_sqs(BIN, "race-cassandra-lists", KEYSPACE, queue.url(), &[]);
    let race = Race {
        pairs: 3,
        posts_during: 10,
        check_lists: true,
    };
    follow_unfollow_race(&Api::new(&server), &Backlog::Sqs(queue), race).await;
}
