//! The function binaries: each function's x86_64 build, started as Lambda starts it (a
//! process with `AWS_LAMBDA_RUNTIME_API` pointing at `feeds_testkit::runtime_api`), answers its
//! sample event from `events/` correctly, on the embedded store and on Cassandra + SQS. Prints each
//! function's initialisation time (process start → its first `next` request), first-event latency,
//! peak RSS and binary size.
//!
//! The binaries come from `cargo build --release -p follow -p post-activity -p get-feed -p fanout
//! -p realtime` (in `target/release`, or `FEEDS_FUNCTIONS_DIR`); `scripts/test.sh` builds them in
//! the dev profile and runs these tests with `FEEDS_FUNCTIONS_DIR=target/debug --ignored
//! --nocapture` (the figures printed then are a debug build's).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use feeds::settings::Env;
use feeds::store::cassandra::{self, CassandraConfig, CassandraStore};
use feeds::store::sqlite::{SqliteDb, SqliteStore};
use feeds::store::{IdRange, Store};
use feeds_testkit::runtime_api::{lambda_command, peak_rss_kib, Answer, RuntimeApi, INIT};
use feeds_testkit::services::{event, fresh_queue, receive, ROOT};
use serde_json::Value;

const KEYSPACE: &str = "feeds_shipped_binaries_test";

fn binary(function: &str) -> PathBuf {
    let dir = std::env::var_os("FEEDS_FUNCTIONS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(ROOT).join("target/release"));
    let bin = dir.join(function);
    assert!(
        bin.is_file(),
        "{} is missing: build it with `cargo build --release --locked -p follow -p post-activity \
         -p get-feed -p fanout -p realtime` (scripts/test.sh does)",
        bin.display()
    );
    bin
}

/// Starts the function's binary with `env`, hands it `event_file`, and returns its answer (the
/// handler's JSON result); prints the measurements.
async fn invoke(function: &str, mode: &str, env: &[(&str, String)], event_file: &str) -> Value {
    let bin = binary(function);
    let mut api = RuntimeApi::start().await.unwrap();
    let id = format!("{function}-{}", std::process::id());
    api.push(&id, &event(event_file));
    let log_path =
        std::env::temp_dir().join(format!("shipped-{function}-{}.log", std::process::id()));
    let log = std::fs::File::create(&log_path).unwrap();
    let mut cmd = lambda_command(&bin, function, &api, log).unwrap();
    cmd.env(
        "FEEDS_JWT_PUBLIC_KEY_FILE",
        Path::new(ROOT).join("etc/dev-keys/dev-public.pem"),
    );
    for (k, v) in env {
        cmd.env(k, v);
    }
    let started = Instant::now();
    let mut child = cmd.spawn().unwrap();
    let pid = child.id().unwrap();
    let outcome = tokio::select! {
        o = api.outcome(Duration::from_secs(60)) => o,
        status = child.wait() => panic!(
            "{function} exited before answering ({status:?}); its log: {}",
            std::fs::read_to_string(&log_path).unwrap_or_default()
        ),
    };
    let outcome = outcome.unwrap_or_else(|| panic!("{function}: no answer within 60 s"));
    let rss_kib = peak_rss_kib(pid).unwrap_or(0);
    let init = api.first_next().expect("it asked for an event") - started;
    child.kill().await.unwrap();
    let body = match (&outcome.answer, outcome.id.as_str()) {
        (Answer::Response(body), got) if got == id => body.clone(),
        (Answer::Error(e), INIT) => panic!("{function} failed to initialise: {e}"),
        (answer, got) => panic!("{function} answered {got}: {answer:?}"),
    };
    println!(
        "{function:<14} {mode:<14} init {:>6.1} ms   first event {:>6.1} ms   peak RSS {:>5.1} MiB   binary {:>5.1} MB",
        init.as_secs_f64() * 1e3,
        outcome.latency().as_secs_f64() * 1e3,
        rss_kib as f64 / 1024.0,
        std::fs::metadata(&bin).unwrap().len() as f64 / 1e6,
    );
    let _ = std::fs::remove_file(&log_path);
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{function}: not JSON ({e}): {body}"))
}

/// An HTTP API answer: (status, parsed body).
fn http(answer: &Value) -> (u64, Value) {
    let status = answer["statusCode"].as_u64().expect("statusCode");
    let body = answer["body"].as_str().unwrap_or("");
    let body = if answer["isBase64Encoded"] == Value::Bool(true) {
        panic!("unexpected base64 body: {answer}")
    } else if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(body).unwrap_or_else(|e| panic!("body is not JSON ({e}): {body}"))
    };
    (status, body)
}

/// The sample events in the order a user meets them: usr_02 follows usr_01, usr_01 posts, the
/// fan-out's sample batch runs (a deliver of an activity that does not exist, and usr_02's backfill
/// from usr_01), usr_02 reads a flat feed holding usr_01's post exactly once, then opens and
/// closes a realtime connection.
async fn sample_events_in_order(mode: &str, env: &[(&str, String)], store: &dyn Store) -> String {
    let (status, body) = http(&invoke("follow", mode, env, "follow.json").await);
    assert_eq!(status, 201, "follow: {body}");
    assert_eq!(
        (&body["follower"], &body["following"]),
        (&"usr_02".into(), &"usr_01".into())
    );
    assert!(store.is_following("usr_02", "usr_01").await.unwrap());

    let (status, body) = http(&invoke("post-activity", mode, env, "post-activity.json").await);
    assert_eq!(status, 201, "post-activity: {body}");
    assert_eq!(
        (&body["actor"], &body["foreign_id"]),
        (&"usr_01".into(), &"post:123".into())
    );
    let id = body["id"].as_str().expect("an activity id").to_owned();
    let stored = store
        .get_activity(&id)
        .await
        .unwrap()
        .expect("the activity is stored");
    assert_eq!(serde_json::to_value(&stored).unwrap(), body);
    let feed = store
        .timeline("usr_02", IdRange::default(), 10)
        .await
        .unwrap();
    assert!(feed.is_empty(), "nothing was fanned out yet: {feed:?}");

    let answer = invoke("fanout", mode, env, "fanout.json").await;
    assert_eq!(answer, serde_json::json!({"batchItemFailures": []}));

    let (status, body) = http(&invoke("get-feed", mode, env, "get-feed-flat.json").await);
    assert_eq!(status, 200, "get-feed: {body}");
    let ids: Vec<&str> = body["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|a| a["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [id.as_str()], "usr_02's flat feed: {body}");

    // usr_02 opens a realtime connection, then closes it.
    let connection = "Xq3vKdTRoAMCJkQ=";
    let answer = invoke("realtime", mode, env, "realtime-connect.json").await;
    assert_eq!(answer["statusCode"], 200, "realtime $connect: {answer}");
    let user = store.connection_user(connection).await.unwrap();
    assert_eq!(
        user.as_deref(),
        Some("usr_02"),
        "the connection is recorded"
    );
    let answer = invoke("realtime", mode, env, "realtime-disconnect.json").await;
    assert_eq!(answer["statusCode"], 200, "realtime $disconnect: {answer}");
    let user = store.connection_user(connection).await.unwrap();
    assert_eq!(user, None, "the connection is forgotten");
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the release binaries: scripts/test.sh builds them and runs this"]
async fn release_binaries_answer_their_sample_events_on_the_embedded_store() {
    let dir = std::env::temp_dir().join(format!("shipped-binaries-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let db_path = dir.join("feeds.db");
    let env = [
        ("FEEDS_STORE", "sqlite".to_owned()),
        ("FEEDS_QUEUE", "embedded".to_owned()),
        ("FEEDS_SQLITE_PATH", db_path.display().to_string()),
    ];
    // Opened first, so that the schema is there for the checks between invocations.
    let store = SqliteStore::new(SqliteDb::open(db_path.to_str().unwrap()).unwrap());
    sample_events_in_order("embedded", &env, &store).await;
    drop(store);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the release binaries: scripts/test.sh builds them and runs this"]
async fn release_binaries_answer_their_sample_events_on_cassandra_and_sqs() {
    let mut cfg = CassandraConfig::read(&Env::process()).unwrap();
    cfg.keyspace = KEYSPACE.into();
    let session = cassandra::connect(&cfg)
        .await
        .expect("Cassandra (scripts/cassandra.sh start)");
    session
        .query_unpaged(format!("DROP KEYSPACE IF EXISTS {KEYSPACE}"), ())
        .await
        .unwrap();
    cassandra::migrate(&session, &cfg).await.unwrap();
    let store = CassandraStore::new(Arc::new(session), &cfg).await.unwrap();

    let queue = fresh_queue("shipped_binaries").await;
    let queue_url = queue.queue_url().to_owned();

    let env = [
        ("FEEDS_STORE", "cassandra".to_owned()),
        ("FEEDS_QUEUE", "sqs".to_owned()),
        ("FEEDS_CASSANDRA_KEYSPACE", KEYSPACE.to_owned()),
        ("FEEDS_QUEUE_URL", queue_url.clone()),
    ];
    let id = sample_events_in_order("cassandra+sqs", &env, &store).await;

    // The follow and the post each queued their fan-out job for the fanout function, and the
    // recounts of the users they changed.
    let mut bodies = Vec::new();
    for _ in 0..10 {
        bodies.extend(receive(&queue, 5).await.into_iter().map(|m| m.body));
        if bodies.len() >= 5 {
            break;
        }
    }
    let mut jobs: Vec<Value> = bodies
        .iter()
        .map(|b| {
            let mut job: Value = serde_json::from_str(b).unwrap();
            // When a recount was asked is the sender's clock: checked for being there only.
            if job["kind"] == "recount" {
                let asked = job.as_object_mut().unwrap().remove("asked_us");
                assert!(asked.is_some_and(|t| t.as_i64().is_some()), "{b}");
            }
            job
        })
        .collect();
    jobs.sort_by_key(|j| j.to_string());
    let mut expected = vec![
        serde_json::json!({"kind": "backfill", "follower": "usr_02", "followee": "usr_01"}),
        serde_json::json!({"kind": "deliver", "activity_id": id, "actor": "usr_01", "after": null}),
        serde_json::json!({"kind": "recount", "user": "usr_01", "what": "followers"}),
        serde_json::json!({"kind": "recount", "user": "usr_02", "what": "following"}),
        serde_json::json!({"kind": "recount", "user": "usr_01", "what": "activities"}),
    ];
    expected.sort_by_key(|j| j.to_string());
    assert_eq!(jobs, expected);
    queue
        .client()
        .delete_queue()
        .queue_url(&queue_url)
        .send()
        .await
        .unwrap();
}
