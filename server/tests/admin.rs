//! `feeds-server admin`: each command run as the real binary on both backends (the embedded
//! SQLite store and queue; Cassandra and ElasticMQ), beside a running server on the same store
//! and queue. Each test breaks something on purpose (a dead-lettered job, one side of an edge
//! written alone, timeline rows deleted or stray), shows that `--dry-run` changes nothing, and
//! that the command repairs it, and that running it again finds nothing left to do.

use std::collections::BTreeSet;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use feeds::model::{Activity, ActivityId};
use feeds::queue::embedded::EmbeddedQueue;
use feeds::queue::{FanoutJob, QueueAdmin};
use feeds::store::sqlite::{SqliteDb, SqliteStore};
use feeds::store::{DayRange, GroupSummary, GroupWrite, Store, TimelineEntry};
use feeds_testkit::api::{ids, Api};
use feeds_testkit::server::{cassandra_sqs_envs, Server};
use feeds_testkit::services::{cassandra_store, sqs_client, TestQueue};
use feeds_testkit::tokens::token;
use feeds_testkit::unique;
use feeds_testkit::wait::{enqueue, eventually, until_drained};
use reqwest::StatusCode;
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_feeds-server");
const FANOUT: Duration = Duration::from_secs(120);

/// A server, the settings its admin commands read (the same store and queue), and the store
/// itself, to break things with.
struct Setup {
    server: Server,
    envs: Vec<(&'static str, String)>,
    store: Arc<dyn Store>,
    cassandra: bool,
}

impl Setup {
    async fn embedded(name: &str, extra: &[(&'static str, String)]) -> Setup {
        let (server, db) = Server::embedded(BIN, name, extra);
        let mut envs = vec![("FEEDS_SQLITE_PATH", db.display().to_string())];
        envs.extend(extra.iter().cloned());
        let store = Arc::new(SqliteStore::new(SqliteDb::open(&db).unwrap()));
        Setup {
            server,
            envs,
            store,
            cassandra: false,
        }
    }

    /// On `keyspace`, with a fresh queue that dead-letters after `max_receives` receives, each
    /// redelivered after a second.
    async fn cassandra(
        name: &str,
        keyspace: &str,
        max_receives: u32,
        extra: &[(&'static str, String)],
    ) -> (Setup, TestQueue) {
        let queue = TestQueue::create(name, 1, max_receives).await;
        let server = Server::cassandra_sqs(BIN, name, keyspace, queue.url(), extra);
        let mut envs = cassandra_sqs_envs(keyspace, queue.url());
        envs.push(("FEEDS_DLQ_URL", queue.dlq.queue_url().to_owned()));
        // Migrated by the server already.
        envs.push(("FEEDS_CASSANDRA_MIGRATE", "false".to_owned()));
        envs.extend(extra.iter().cloned());
        let store = cassandra_store(keyspace).await;
        let setup = Setup {
            server,
            envs,
            store,
            cassandra: true,
        };
        (setup, queue)
    }

    async fn admin(&self, args: &[&str]) -> Run {
        admin(&self.envs, args).await
    }

    async fn drained(&self) {
        until_drained(self.server.queue(), FANOUT).await;
    }

    async fn stats(&self) -> Value {
        stats(&self.envs).await
    }
}

/// What a command printed.
struct Run {
    stdout: String,
    stderr: String,
}

impl Run {
    /// Standard output holds `text`.
    fn says(&self, text: &str) {
        assert!(self.stdout.contains(text), "{}", self.stdout);
    }

    /// Standard error (progress) holds `text`.
    fn says_stderr(&self, text: &str) {
        assert!(self.stderr.contains(text), "{}", self.stderr);
    }

    /// The lines of standard output that name `who`.
    fn lines_naming(&self, who: &[&str]) -> BTreeSet<String> {
        self.stdout
            .lines()
            .filter(|l| who.iter().any(|w| l.split('\t').any(|cell| cell == *w)))
            .map(str::to_owned)
            .collect()
    }

    /// The JSON object standard output ends with.
    fn json(&self) -> Value {
        let start = self.stdout.find('{').expect("a JSON object");
        serde_json::from_str(&self.stdout[start..]).unwrap()
    }
}

/// Runs `feeds-server admin <args>` with `envs`; it must succeed.
async fn admin(envs: &[(&'static str, String)], args: &[&str]) -> Run {
    let run = try_admin(envs, args).await;
    assert!(
        run.0,
        "admin {args:?} failed:\n{}\n{}",
        run.1.stdout, run.1.stderr
    );
    run.1
}

/// Runs `feeds-server admin <args>` with `envs`: whether it succeeded, and what it printed.
async fn try_admin(envs: &[(&'static str, String)], args: &[&str]) -> (bool, Run) {
    let mut cmd = Command::new(BIN);
    cmd.arg("admin")
        .args(args)
        .env("FEEDS_LOG_FORMAT", "text")
        .env("RUST_LOG", "warn")
        .envs(envs.iter().map(|(k, v)| (k, v)));
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .expect("the binary runs");
    let run = Run {
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    (out.status.success(), run)
}

async fn stats(envs: &[(&'static str, String)]) -> Value {
    admin(envs, &["stats", "--json"]).await.json()
}

fn activity(actor: &str, object: &str) -> Activity {
    let time = chrono::Utc::now();
    Activity {
        id: ActivityId::new(time).0,
        actor: actor.to_owned(),
        verb: "post".to_owned(),
        object: object.to_owned(),
        target: None,
        time,
        foreign_id: None,
        to: Vec::new(),
        extra: None,
    }
}

async fn post(api: &Api, actor: &str, body: Value) -> String {
    let answer = api.post(actor, body).await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
    answer.body["id"].as_str().unwrap().to_owned()
}

async fn follow(api: &Api, follower: &str, followee: &str) {
    let answer = api.follow(follower, followee).await;
    assert!(answer.status.is_success(), "{}", answer.body);
}

// --- --help ------------------------------------------------------------------------------------

#[test]
fn every_admin_command_has_help() {
    let help = |args: &[&str]| {
        let out = Command::new(BIN).args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let top = help(&["admin", "--help"]);
    for command in ["redrive-dlq", "rebuild-feed", "reconcile-follows", "stats"] {
        assert!(
            top.contains(command),
            "admin --help lists {command}:\n{top}"
        );
    }
    let cases: [(&str, &[&str]); 4] = [
        (
            "redrive-dlq",
            &["--dry-run", "--max", "FEEDS_DLQ_URL", "attributes"],
        ),
        (
            "rebuild-feed",
            &[
                "<USER>",
                "--dry-run",
                "--skip-notifications",
                "seen or read",
            ],
        ),
        (
            "reconcile-follows",
            &["--dry-run", "safe while the service runs"],
        ),
        ("stats", &["--json", "dead-letter"]),
    ];
    for (command, words) in cases {
        let text = help(&["admin", command, "--help"]).replace('\n', " ");
        let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
        for word in words {
            assert!(
                text.contains(word),
                "admin {command} --help says {word:?}:\n{text}"
            );
        }
    }
}

// --- redrive-dlq -------------------------------------------------------------------------------

/// A job that fails until its cause is fixed (an `Adopt` of an author not yet marked as pulled)
/// reaches the dead-letter queue; listed by a dry run, which changes nothing; once the author is
/// marked, the redrive moves it back and the fan-out runs it.
async fn a_dead_letter_runs_once_its_cause_is_fixed(s: &Setup) {
    let api = Api::new(&s.server);
    let (star, fan) = (unique("star"), unique("fan"));
    follow(&api, &fan, &star).await;
    s.drained().await;
    let pulled = activity(&star, "o1");
    s.store.put_activity(&pulled).await.unwrap();
    s.store.put_pulled(&pulled).await.unwrap();
    let adopt = FanoutJob::Adopt {
        author: star.clone(),
        after: None,
    };
    enqueue(s.server.queue(), &[adopt]).await;
    let envs = s.envs.clone();
    eventually("the job is dead-lettered", FANOUT, || {
        let envs = envs.clone();
        async move { stats(&envs).await["queue"]["dead"] == json!(1) }
    })
    .await;
    assert!(api.flat_ids(&fan).await.is_empty());

    let dry = s.admin(&["redrive-dlq", "--dry-run"]).await;
    let listed: Vec<&str> = dry.stdout.lines().filter(|l| l.contains('\t')).collect();
    assert_eq!(listed.len(), 1, "{}", dry.stdout);
    let cells: Vec<&str> = listed[0].split('\t').collect();
    assert_eq!(cells[1], "adopt", "{}", dry.stdout);
    assert!(cells[2].contains(&star), "the body: {}", dry.stdout);
    assert!(dry.stdout.contains("1 messages dead-lettered"));
    s.drained().await;
    assert_eq!(
        s.stats().await["queue"]["dead"],
        json!(1),
        "a dry run moves nothing"
    );
    assert!(api.flat_ids(&fan).await.is_empty());

    s.store.mark_pulled_author(&star).await.unwrap();
    let moved = s.admin(&["redrive-dlq"]).await;
    moved.says("1 messages moved back");
    moved.says("\tadopt");
    s.drained().await;
    assert_eq!(
        api.flat_ids(&fan).await,
        std::slice::from_ref(&pulled.id),
        "the adopted activity is merged"
    );
    assert_eq!(s.stats().await["queue"]["dead"], json!(0));
    let again = s.admin(&["redrive-dlq"]).await;
    again.says("0 messages moved back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redrive_embedded() {
    let extra = [
        ("FEEDS_QUEUE_VISIBILITY_SECS", "1".to_owned()),
        ("FEEDS_QUEUE_MAX_RECEIVES", "2".to_owned()),
    ];
    let s = Setup::embedded("admin-redrive", &extra).await;
    a_dead_letter_runs_once_its_cause_is_fixed(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redrive_cassandra_sqs() {
    let (s, _queue) = Setup::cassandra("admin_redrive", "feeds_admin_redrive", 2, &[]).await;
    a_dead_letter_runs_once_its_cause_is_fixed(&s).await;
}

/// Three dead letters of the embedded queue, no server: `--max` bounds what moves, the bodies
/// arrive unchanged and in order, nothing is lost or doubled.
#[tokio::test]
async fn redrive_moves_at_most_max_embedded() {
    let path = std::env::temp_dir().join(format!("feeds-{}.db", unique("admin-dlq")));
    let db = SqliteDb::open(&path).unwrap();
    let queue = EmbeddedQueue::new(db.clone(), Duration::from_secs(30), 5)
        .await
        .unwrap();
    let bodies = dead_bodies();
    let dead = bodies.clone();
    db.run(move |c| {
        for (i, body) in dead.iter().enumerate() {
            c.execute(
                "INSERT INTO fanout_dead_letters (id, body, receives, dead_at_ms) VALUES (?1, ?2, 5, 0)",
                (i as i64 + 1, body),
            )?;
        }
        Ok(())
    })
    .await
    .unwrap();
    let envs = vec![("FEEDS_SQLITE_PATH", path.display().to_string())];
    redrive_in_two_runs(&envs).await;
    let waiting: Vec<String> = queue
        .receive(10)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.body)
        .collect();
    assert_eq!(waiting, bodies);
    let depths = queue.depths().await.unwrap();
    assert_eq!((depths.in_flight, depths.dead), (3, Some(0)));
}

/// The same on SQS, where the message attributes come along too; without `FEEDS_DLQ_URL` the
/// commands say what is missing.
#[tokio::test]
async fn redrive_moves_at_most_max_sqs() {
    let queue = TestQueue::create("admin_dlq", 30, 5).await;
    let client = sqs_client().await;
    let bodies = dead_bodies();
    for (i, body) in bodies.iter().enumerate() {
        let attribute = aws_sdk_sqs::types::MessageAttributeValue::builder()
            .data_type("String")
            .string_value(format!("trace-{i}"))
            .build()
            .unwrap();
        client
            .send_message()
            .queue_url(queue.dlq.queue_url())
            .message_body(body)
            .message_attributes("traceparent", attribute)
            .send()
            .await
            .unwrap();
    }
    // The SQLite store, SQS as the queue.
    let db = std::env::temp_dir().join(format!("feeds-{}.db", unique("admin-dlq")));
    let mut envs = cassandra_sqs_envs("unused", queue.url());
    envs.retain(|(k, _)| !k.starts_with("FEEDS_CASSANDRA") && *k != "FEEDS_STORE");
    envs.push(("FEEDS_SQLITE_PATH", db.display().to_string()));

    let (ok, refused) = try_admin(&envs, &["redrive-dlq"]).await;
    assert!(
        !ok && refused.stderr.contains("FEEDS_DLQ_URL"),
        "{}",
        refused.stderr
    );
    assert_eq!(stats(&envs).await["queue"]["dead"], Value::Null);

    envs.push(("FEEDS_DLQ_URL", queue.dlq.queue_url().to_owned()));
    redrive_in_two_runs(&envs).await;
    let mut received: Vec<(String, String)> = Vec::new();
    while received.len() < bodies.len() {
        let got = client
            .receive_message()
            .queue_url(queue.url())
            .max_number_of_messages(10)
            .message_attribute_names("All")
            .wait_time_seconds(1)
            .send()
            .await
            .unwrap()
            .messages
            .unwrap_or_default();
        assert!(!got.is_empty(), "only {received:?} arrived");
        for m in got {
            let trace = m.message_attributes.as_ref().unwrap()["traceparent"]
                .string_value()
                .unwrap()
                .to_owned();
            received.push((m.body.unwrap(), trace));
        }
    }
    received.sort();
    let mut expected: Vec<(String, String)> = bodies
        .iter()
        .enumerate()
        .map(|(i, b)| (b.clone(), format!("trace-{i}")))
        .collect();
    expected.sort();
    assert_eq!(
        received, expected,
        "bodies and attributes unchanged, each once"
    );
}

/// Two parsable jobs and one that is not.
fn dead_bodies() -> Vec<String> {
    let recount = |user: &str| {
        FanoutJob::Recount {
            user: user.to_owned(),
            what: feeds::store::Counted::Followers,
            asked_us: 1,
        }
        .encode()
    };
    vec![
        recount(&unique("u")),
        "{not json".to_owned(),
        recount(&unique("v")),
    ]
}

/// Three dead letters: a dry run of two, which moves nothing; a redrive of two; a redrive of the
/// rest.
async fn redrive_in_two_runs(envs: &[(&'static str, String)]) {
    let dry = admin(envs, &["redrive-dlq", "--dry-run", "--max", "2"]).await;
    let kinds: Vec<&str> = dry
        .stdout
        .lines()
        .filter_map(|l| l.split('\t').nth(1))
        .collect();
    assert_eq!(kinds.len(), 2, "{}", dry.stdout);
    assert!(
        kinds.iter().all(|k| ["recount", "unparsable"].contains(k)),
        "{kinds:?}"
    );
    assert_eq!(
        stats(envs).await["queue"]["dead"],
        json!(3),
        "the dry run moved nothing"
    );

    let first = admin(envs, &["redrive-dlq", "--max", "2"]).await;
    first.says("2 messages moved back");
    let after = stats(envs).await;
    assert_eq!(
        (&after["queue"]["dead"], &after["queue"]["waiting"]),
        (&json!(1), &json!(2))
    );

    let rest = admin(envs, &["redrive-dlq"]).await;
    rest.says("1 messages moved back");
    let last = stats(envs).await;
    assert_eq!(
        (&last["queue"]["dead"], &last["queue"]["waiting"]),
        (&json!(0), &json!(3))
    );
}

// --- reconcile-follows -------------------------------------------------------------------------

/// SQLite keeps one row per edge: the scan finds every edge on both sides and nothing to repair.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_embedded_finds_nothing_to_repair() {
    let s = Setup::embedded("admin-reconcile", &[]).await;
    let api = Api::new(&s.server);
    let star = unique("star");
    for i in 0..3 {
        follow(&api, &format!("{star}_fan{i}"), &star).await;
    }
    for args in [
        &["reconcile-follows", "--dry-run"][..],
        &["reconcile-follows"],
    ] {
        let run = s.admin(args).await;
        // Both sides of 3 edges, none out of step.
        match args.len() {
            2 => run.says("6 rows scanned; followers rows missing: 0, stray: 0"),
            _ => run.says("6 rows scanned; followers rows added: 0, removed: 0"),
        }
        run.says_stderr("following side");
    }
    assert_eq!(api.followers(&star).await.len(), 3);
}

/// On Cassandra: the three ways a process can leave an edge's two rows apart, written by hand;
/// the fan-out meanwhile delivers by the `followers` side. A dry run lists them and changes
/// nothing; the repair, with the server running, makes the `followers` side agree with the edges,
/// and the jobs it enqueues fix the feeds and counts. A second run finds nothing.
/// Run on threads with 16 MiB stacks: in a debug build, this test's futures overflow tokio's
/// default 2 MiB.
#[test]
fn reconcile_cassandra_repairs_both_sides() {
    std::thread::Builder::new()
        .stack_size(16 << 20)
        .spawn(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(4)
                .thread_stack_size(16 << 20)
                .enable_all()
                .build()
                .expect("a runtime")
                .block_on(reconcile_cassandra_repairs_both_sides_body())
        })
        .expect("a thread")
        .join()
        .expect("the test passes");
}

async fn reconcile_cassandra_repairs_both_sides_body() {
    let keyspace = "feeds_admin_reconcile";
    let (s, _queue) = Setup::cassandra("admin_reconcile", keyspace, 5, &[]).await;
    let api = Api::new(&s.server);
    let star = unique("star");
    let (missing, unfollowed, stray, good) = (
        format!("{star}_missing"),
        format!("{star}_unfollowed"),
        format!("{star}_stray"),
        format!("{star}_good"),
    );
    follow(&api, &good, &star).await;
    s.drained().await;
    let session = cassandra_store(keyspace).await.session();
    let t = chrono::Utc::now().timestamp_micros() - 60_000_000;
    let cql = |q: &str| q.replace("{ks}", keyspace);
    // A follow that stopped after its edge; an unfollow that stopped after its edge; a copy
    // whose edge was never written.
    session
        .query_unpaged(
            cql("INSERT INTO {ks}.following (user, followee, created_us) VALUES (?, ?, ?)"),
            (&missing, &star, t),
        )
        .await
        .unwrap();
    session
        .query_unpaged(
            cql("INSERT INTO {ks}.following (user, followee, created_us) VALUES (?, ?, ?)"),
            (&unfollowed, &star, -(t + 1)),
        )
        .await
        .unwrap();
    for fan in [&unfollowed, &stray] {
        session
            .query_unpaged(
                cql("INSERT INTO {ks}.followers (user, follower, created_us) VALUES (?, ?, ?) USING TIMESTAMP ?"),
                (&star, fan, t, t),
            )
            .await
            .unwrap();
    }
    let posted = post(&api, &star, json!({"actor": star, "object": "o1"})).await;
    s.drained().await;
    let mut followers = api.followers(&star).await;
    followers.sort();
    assert_eq!(followers, [good.clone(), stray.clone(), unfollowed.clone()]);
    assert_eq!(
        api.following(&missing).await,
        std::slice::from_ref(&star),
        "the edge exists"
    );
    assert!(
        api.flat_ids(&missing).await.is_empty(),
        "but the fan-out missed it"
    );
    assert_eq!(api.flat_ids(&stray).await, std::slice::from_ref(&posted));

    let names = [&missing[..], &unfollowed, &stray, &good, &star];
    let dry = s.admin(&["reconcile-follows", "--dry-run"]).await;
    let expected = |added: &str, removed: &str| -> BTreeSet<String> {
        [
            format!("{added}\t{missing}\t{star}"),
            format!("{removed}\t{unfollowed}\t{star}"),
            format!("{removed}\t{stray}\t{star}"),
        ]
        .into_iter()
        .collect()
    };
    assert_eq!(
        dry.lines_naming(&names),
        expected("missing", "stray"),
        "{}",
        dry.stdout
    );
    assert!(
        dry.stderr.contains("followers side"),
        "progress: {}",
        dry.stderr
    );
    let mut unchanged = api.followers(&star).await;
    unchanged.sort();
    assert_eq!(unchanged, followers, "a dry run changes nothing");

    let fixed = s.admin(&["reconcile-follows"]).await;
    assert_eq!(
        fixed.lines_naming(&names),
        expected("added", "removed"),
        "{}",
        fixed.stdout
    );
    s.drained().await;
    let mut now = api.followers(&star).await;
    now.sort();
    assert_eq!(now, [good.clone(), missing.clone()]);
    assert_eq!(
        api.flat_ids(&missing).await,
        std::slice::from_ref(&posted),
        "backfilled"
    );
    assert!(api.flat_ids(&stray).await.is_empty(), "purged");
    assert!(api.flat_ids(&unfollowed).await.is_empty(), "purged");
    let counts = |user: String| {
        let api = api.clone();
        async move { api.get(&format!("/users/{user}"), &token(&user)).await.body }
    };
    assert_eq!(counts(star.clone()).await["followers"], json!(2));
    assert_eq!(counts(missing.clone()).await["following"], json!(1));
    assert_eq!(counts(unfollowed.clone()).await["following"], json!(0));

    let again = s.admin(&["reconcile-follows"]).await;
    assert!(again.lines_naming(&names).is_empty(), "{}", again.stdout);

    // Beside the service: follows and unfollows of another user keep coming while the repair
    // runs twice; afterwards each edge is as its last request left it, on both sides.
    let busy = unique("busy");
    let fans: Vec<String> = (0..6).map(|i| format!("{busy}_fan{i}")).collect();
    // Each fan follows and unfollows in turn, 4 to 6 times, all fans at once.
    let traffic = {
        let (api, busy, fans) = (api.clone(), busy.clone(), fans.clone());
        tokio::spawn(async move {
            let each = fans.iter().enumerate().map(|(i, fan)| {
                let (api, busy) = (api.clone(), busy.clone());
                async move {
                    let rounds = 4 + i % 3;
                    for round in 0..rounds {
                        match round % 2 {
                            0 => follow(&api, fan, &busy).await,
                            _ => assert!(api.unfollow(fan, &busy).await.status.is_success()),
                        }
                    }
                    (fan.clone(), rounds % 2 == 1)
                }
            });
            futures::future::join_all(each).await
        })
    };
    for _ in 0..2 {
        s.admin(&["reconcile-follows"]).await;
    }
    let last = traffic.await.unwrap();
    s.drained().await;
    let mut expected_followers: Vec<String> = last
        .iter()
        .filter(|(_, following)| *following)
        .map(|(fan, _)| fan.clone())
        .collect();
    expected_followers.sort();
    assert_eq!(api.followers(&busy).await, expected_followers);
    let check = s.admin(&["reconcile-follows", "--dry-run"]).await;
    assert!(check.lines_naming(&[&busy]).is_empty(), "{}", check.stdout);
}

// --- rebuild-feed ------------------------------------------------------------------------------

/// Pulled authors past 2 followers; feeds of 6 activities.
fn rebuild_settings() -> Vec<(&'static str, String)> {
    vec![
        ("FEEDS_PULL_THRESHOLD", "2".to_owned()),
        ("FEEDS_FEED_MAX_LENGTH", "6".to_owned()),
    ]
}

/// The three feeds of `user`, as served.
async fn feeds_of(api: &Api, user: &str) -> [Vec<Value>; 3] {
    let t = token(user);
    [
        api.walk("/feeds/flat", &t).await,
        api.walk("/feeds/aggregated", &t).await,
        api.walk("/feeds/notification", &t).await,
    ]
}

/// A user following two authors (8 activities: more than its feed holds) and a pulled author,
/// notified by a followed author and by someone else; then its timeline loses its two newest
/// rows, gains one of a user it does not follow, holds an old copy of an updated activity and a
/// made-up aggregated group, loses its pulled author's row and a notification. A dry run reports
/// it all and changes nothing; the rebuild serves the three feeds exactly as before; a second run
/// changes nothing.
async fn a_broken_feed_is_rebuilt(s: &Setup) {
    let api = Api::new(&s.server);
    let fan = unique("fan");
    let (s1, s2, p, other) = (unique("s1"), unique("s2"), unique("p"), unique("other"));
    for followee in [&s1, &s2, &p] {
        follow(&api, &fan, followee).await;
    }
    for i in 0..2 {
        follow(&api, &format!("{p}_f{i}"), &p).await;
    }
    s.drained().await;
    for i in 0..4 {
        let mut body = json!({"actor": s1, "object": format!("o{i}")});
        if i == 1 {
            body["to"] = json!([fan]);
        }
        post(&api, &s1, body).await;
    }
    let mut by_s2 = Vec::new();
    for i in 0..4 {
        let body = json!({"actor": s2, "verb": "like", "object": format!("l{i}")});
        by_s2.push(post(&api, &s2, body).await);
    }
    for i in 0..2 {
        post(&api, &p, json!({"actor": p, "object": format!("p{i}")})).await;
    }
    let note = post(
        &api,
        &other,
        json!({"actor": other, "object": "n", "to": [fan]}),
    )
    .await;
    s.drained().await;
    let before = feeds_of(&api, &fan).await;
    assert_eq!(before[0].len(), 6, "{:?}", ids(&before[0]));
    assert_eq!(before[2].len(), 2, "two notification groups");

    // Broken, as a lost write or a bad hand would leave it.
    let store = s.store.as_ref();
    let rows = |ids: &[&String]| -> Vec<(String, String)> {
        ids.iter().map(|id| (fan.clone(), (*id).clone())).collect()
    };
    store
        .delete_timeline(&rows(&[&by_s2[3], &by_s2[2]]))
        .await
        .unwrap();
    let not_followed = store.get_activity(&note).await.unwrap().unwrap();
    let mut stale = store.get_activity(&by_s2[1]).await.unwrap().unwrap();
    stale.extra = Some(serde_json::from_value(json!({"old": true})).unwrap());
    let entry = |a: &Activity| TimelineEntry {
        owner: fan.clone(),
        activity: a.clone(),
    };
    store
        .insert_timeline(&[entry(&not_followed)])
        .await
        .unwrap();
    store.rewrite_timeline(&[entry(&stale)]).await.unwrap();
    let groups = store
        .groups(&fan, "verb_day", DayRange::default(), 10)
        .await
        .unwrap();
    let bogus = GroupWrite {
        key: groups[0].key.clone(),
        summary: Some(GroupSummary {
            newest_id: groups[0].summary.as_ref().unwrap().newest_id.clone(),
            json: json!({"id": groups[0].key, "activity_count": 99}).to_string(),
            actors_newest: "[]".to_owned(),
        }),
    };
    let later = chrono::Utc::now().timestamp_micros() + 1_000_000;
    store
        .put_groups(&fan, "verb_day", groups[0].day, &[bogus], later)
        .await
        .unwrap();
    store.delete_pulled_followee(&fan, &p).await.unwrap();
    // Its group marked too, so that reads recompute it without the row.
    let lost = TimelineEntry {
        owner: feeds::notify::feed_owner(&fan),
        activity: not_followed.clone(),
    };
    feeds::aggregate::remove_rows(store, feeds::notify::GROUPING, &[lost])
        .await
        .unwrap();
    let broken = feeds_of(&api, &fan).await;
    for (feed, (was, now)) in before.iter().zip(&broken).enumerate() {
        assert_ne!(was, now, "feed {feed} is broken");
    }

    let dry = s.admin(&["rebuild-feed", &fan, "--dry-run"]).await;
    let report = dry.json();
    assert_eq!(
        report["flat"],
        json!({"kept": 3, "added": 2, "removed": 1, "rewritten": 1}),
        "{report}"
    );
    assert_eq!(report["pulled_added"], json!(1), "{report}");
    assert_eq!(
        report["notifications"],
        json!({"kept": 1, "added": 1, "removed": 0, "rewritten": 0}),
        "{report}"
    );
    assert_eq!(
        feeds_of(&api, &fan).await,
        broken,
        "a dry run changes nothing"
    );

    let done = s.admin(&["rebuild-feed", &fan]).await;
    assert_eq!(done.json()["flat"], report["flat"], "{}", done.stdout);
    assert!(
        done.stderr.contains("activities scanned"),
        "progress: {}",
        done.stderr
    );
    assert_eq!(feeds_of(&api, &fan).await, before, "every feed as it was");

    let again = s.admin(&["rebuild-feed", &fan]).await.json();
    assert_eq!(
        again["flat"],
        json!({"kept": 6, "added": 0, "removed": 0, "rewritten": 0})
    );
    assert_eq!(
        again["notifications"],
        json!({"kept": 2, "added": 0, "removed": 0, "rewritten": 0})
    );
    assert_eq!(
        (&again["pulled_added"], &again["pulled_removed"]),
        (&json!(0), &json!(0))
    );
    let skipped = s
        .admin(&["rebuild-feed", &fan, "--skip-notifications"])
        .await
        .json();
    assert_eq!(skipped["notifications"], Value::Null);
    assert_eq!(feeds_of(&api, &fan).await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebuild_embedded() {
    let s = Setup::embedded("admin-rebuild", &rebuild_settings()).await;
    a_broken_feed_is_rebuilt(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebuild_cassandra_sqs() {
    let keyspace = "feeds_admin_rebuild";
    let (s, _queue) = Setup::cassandra("admin_rebuild", keyspace, 5, &rebuild_settings()).await;
    a_broken_feed_is_rebuilt(&s).await;
}

// --- stats -------------------------------------------------------------------------------------

/// Two follows and three activities add what they should to every count; the queue is empty
/// once drained.
async fn stats_count_what_was_written(s: &Setup) {
    let api = Api::new(&s.server);
    let before = s.stats().await;
    let (a, b, c) = (unique("a"), unique("b"), unique("c"));
    follow(&api, &a, &b).await;
    follow(&api, &c, &b).await;
    for i in 0..3 {
        post(&api, &b, json!({"actor": b, "object": format!("o{i}")})).await;
    }
    s.drained().await;
    let after = s.stats().await;
    let grew = |key: &str| after[key].as_u64().unwrap() - before[key].as_u64().unwrap();
    assert_eq!(
        [
            grew("users"),
            grew("edges"),
            grew("follower_rows"),
            grew("activities")
        ],
        [3, 2, 2, 3],
        "{before} -> {after}"
    );
    assert_eq!(
        after["queue"],
        json!({"waiting": 0, "in_flight": 0, "dead": 0})
    );
    let text = s.admin(&["stats"]).await;
    text.says("edges:");
    text.says_stderr("counted activities");
    if s.cassandra {
        text.says("dead-lettered:    0");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_embedded() {
    let s = Setup::embedded("admin-stats", &[]).await;
    stats_count_what_was_written(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_cassandra_sqs() {
    let (s, _queue) = Setup::cassandra("admin_stats", "feeds_admin_stats", 5, &[]).await;
    stats_count_what_was_written(&s).await;
}
