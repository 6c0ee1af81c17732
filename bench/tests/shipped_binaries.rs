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

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use feeds::queue::sqs::SqsQueue;
use feeds::settings::Env;
use feeds::store::cassandra::{self, CassandraConfig, CassandraStore};
use feeds::store::sqlite::{SqliteDb, SqliteStore};
use feeds::store::{IdRange, Store};
use feeds_testkit::api::Api;
use feeds_testkit::runtime_api::{lambda_command, peak_rss_kib, Answer, RuntimeApi, INIT};
use feeds_testkit::services::{depth, event, fresh_queue, receive, sqs_event, Received, ROOT};
use feeds_testkit::tokens::token;
use feeds_testkit::trigger::Trigger;
use feeds_testkit::unique;
use feeds_testkit::wait::eventually;
use reqwest::{Method, StatusCode};
use scylla::statement::Statement;
use serde_json::{json, Value};

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
/// closes a realtime connection. `invoke` runs a function (its binary's name) on a sample event (its file in `events/`) and answers its result.
async fn sample_events_in_order<F, Fut>(store: &dyn Store, mut invoke: F) -> String
where
    F: FnMut(&'static str, &'static str) -> Fut,
    Fut: Future<Output = Value>,
{
    let (status, body) = http(&invoke("follow", "follow.json").await);
    assert_eq!(status, 201, "follow: {body}");
    assert_eq!(
        (&body["follower"], &body["following"]),
        (&"usr_02".into(), &"usr_01".into())
    );
    assert!(store.is_following("usr_02", "usr_01").await.unwrap());

    let (status, body) = http(&invoke("post-activity", "post-activity.json").await);
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

    let answer = invoke("fanout", "fanout.json").await;
    assert_eq!(answer, serde_json::json!({"batchItemFailures": []}));

    let (status, body) = http(&invoke("get-feed", "get-feed-flat.json").await);
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
    let answer = invoke("realtime", "realtime-connect.json").await;
    assert_eq!(answer["statusCode"], 200, "realtime $connect: {answer}");
    let user = store.connection_user(connection).await.unwrap();
    assert_eq!(
        user.as_deref(),
        Some("usr_02"),
        "the connection is recorded"
    );
    let answer = invoke("realtime", "realtime-disconnect.json").await;
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
    sample_events_in_order(&store, |f, e| invoke(f, "embedded", &env, e)).await;
    drop(store);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the release binaries: scripts/test.sh builds them and runs this"]
async fn release_binaries_answer_their_sample_events_on_cassandra_and_sqs() {
    let store = fresh_keyspace(KEYSPACE).await;
    let queue = fresh_queue("shipped_binaries").await;
    let queue_url = queue.queue_url().to_owned();

    let env = [
        ("FEEDS_STORE", "cassandra".to_owned()),
        ("FEEDS_QUEUE", "sqs".to_owned()),
        ("FEEDS_CASSANDRA_KEYSPACE", KEYSPACE.to_owned()),
        ("FEEDS_QUEUE_URL", queue_url.clone()),
    ];
    let id = sample_events_in_order(&store, |f, e| invoke(f, "cassandra+sqs", &env, e)).await;
    assert_sample_jobs(&queue, &id).await;
    queue
        .client()
        .delete_queue()
        .queue_url(&queue_url)
        .send()
        .await
        .unwrap();
}

/// A fresh keyspace on the Cassandra of `FEEDS_CASSANDRA_NODES`, and the store on it.
async fn fresh_keyspace(keyspace: &str) -> CassandraStore {
    let mut cfg = CassandraConfig::read(&Env::process()).unwrap();
    cfg.keyspace = keyspace.into();
    let session = cassandra::connect(&cfg)
        .await
        .expect("Cassandra (scripts/cassandra.sh start)");
    // As long as the migration's own DDL may take: a node that just started can be slow.
    let mut drop = Statement::new(format!("DROP KEYSPACE IF EXISTS {keyspace}"));
    drop.set_request_timeout(Some(Duration::from_secs(60)));
    session.query_unpaged(drop, ()).await.unwrap();
    cassandra::migrate(&session, &cfg).await.unwrap();
    CassandraStore::new(Arc::new(session), &cfg).await.unwrap()
}

/// The follow and the post of the sample events each queued their fan-out job for the fanout
/// function, and the recounts of the users they changed: takes them off the queue.
async fn assert_sample_jobs(queue: &SqsQueue, id: &str) {
    let received = receive_at_least(queue, 5).await;
    delete(queue, &received).await;
    let mut jobs: Vec<Value> = received
        .iter()
        .map(|m| {
            let b = &m.body;
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
}

/// Receives until `n` messages arrived (or 10 long polls passed): all it received.
async fn receive_at_least(queue: &SqsQueue, n: usize) -> Vec<Received> {
    let mut received = Vec::new();
    for _ in 0..10 {
        received.extend(receive(queue, 5).await);
        if received.len() >= n {
            break;
        }
    }
    received
}

/// Deletes `messages`, as Lambda's SQS event source does once the function succeeded.
async fn delete(queue: &SqsQueue, messages: &[Received]) {
    for m in messages {
        queue.delete(&m.receipt).await.unwrap();
    }
}

// `sam local`: the same binaries as the bootstraps of the template's functions, in Docker
// containers on the stand-in base image, as scripts/sam-local.sh prepares them.

const SAM_KEYSPACE: &str = "feeds_sam_local_test";

/// This repository (testkit's `ROOT` may name another checkout sharing the build directory).
const REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

/// The template's logical id of a function.
fn logical_id(function: &str) -> &'static str {
    match function {
        "follow" => "FollowFunction",
        "post-activity" => "PostActivityFunction",
        "get-feed" => "GetFeedFunction",
        "fanout" => "FanoutFunction",
        "realtime" => "RealtimeFunction",
        other => panic!("no function {other} in template.yaml"),
    }
}

/// The local template and env.json of scripts/sam-local.sh (`FEEDS_SAM_LOCAL_DIR`), the env file
/// pointing at this test's keyspace and queue.
struct SamLocal {
    dir: PathBuf,
    template: PathBuf,
    env_file: PathBuf,
}

impl SamLocal {
    fn new(queue_url: &str) -> SamLocal {
        let dir = Env::process()
            .get("FEEDS_SAM_LOCAL_DIR")
            .unwrap()
            .map(PathBuf::from)
            .expect("FEEDS_SAM_LOCAL_DIR: scripts/sam-local.sh check runs this test");
        let generated = std::fs::read_to_string(dir.join("env.json")).unwrap();
        let mut env: Value = serde_json::from_str(&generated).unwrap();
        let vars = env["Parameters"].as_object_mut().expect("Parameters");
        vars.insert("FEEDS_CASSANDRA_KEYSPACE".into(), SAM_KEYSPACE.into());
        vars.insert("FEEDS_QUEUE_URL".into(), queue_url.into());
        let env_file = dir.join("env.test.json");
        std::fs::write(&env_file, env.to_string()).unwrap();
        SamLocal {
            template: dir.join("template.yaml"),
            env_file,
            dir,
        }
    }

    /// `sam <args>` on the local template and env file. Without this process's `FEEDS_*`
    /// variables: sam passes a function its declared variables from its own environment too.
    fn command(&self, args: &[&str]) -> std::process::Command {
        let mut cmd = std::process::Command::new("sam");
        cmd.args(args)
            .arg("--template")
            .arg(&self.template)
            .arg("--env-vars")
            .arg(&self.env_file)
            .arg("--skip-pull-image")
            .env("SAM_CLI_TELEMETRY", "0");
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("FEEDS_") {
                cmd.env_remove(name);
            }
        }
        cmd
    }

    /// `sam local invoke` of `function` on the event in `event_file` (a container of its own, so
    /// a cold start every time): its result; prints the command's time and the function's own.
    async fn invoke(&self, function: &str, event_file: PathBuf) -> Value {
        let event_file = event_file.to_str().unwrap();
        let args = [
            "local",
            "invoke",
            logical_id(function),
            "--event",
            event_file,
        ];
        let started = Instant::now();
        let out = tokio::process::Command::from(self.command(&args))
            .output()
            .await
            .expect("sam (scripts/python-tools.sh installs it)");
        let took = started.elapsed();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "sam local invoke {function}: {stderr}"
        );
        // REPORT RequestId: …	Init Duration: …	Duration: 296.59 ms	Billed Duration: …
        let report = stderr
            .lines()
            .filter(|l| l.starts_with("REPORT "))
            .flat_map(|l| l.split('\t'))
            .find_map(|f| f.trim().strip_prefix("Duration: "))
            .unwrap_or("no REPORT line");
        println!(
            "sam local invoke {function:<14} {:>6.0} ms   (the function: {report})",
            took.as_secs_f64() * 1e3
        );
        serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
            panic!("sam local invoke {function}: not JSON ({e}): {stdout}\n{stderr}")
        })
    }
}

/// `sam local start-api` or `start-lambda` on a free port, with warm containers (each function's
/// container is started at its first call and kept); stopped by SIGTERM when dropped, on which
/// sam removes its containers.
struct SamServer {
    child: std::process::Child,
    command: String,
    port: u16,
    base: String,
    log: PathBuf,
    spawned: Instant,
}

impl SamServer {
    /// Starts it; [`SamServer::listening`] waits until it listens (sam takes seconds to start,
    /// which the test spends on other work meanwhile).
    fn spawn(sam: &SamLocal, command: &str) -> SamServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = sam.dir.join(format!("{command}.log"));
        let log_file = std::fs::File::create(&log).unwrap();
        let port_arg = port.to_string();
        let args = [
            "local",
            command,
            "--host",
            "127.0.0.1",
            "--port",
            &port_arg,
            "--warm-containers",
            "LAZY",
        ];
        SamServer {
            child: sam
                .command(&args)
                .stdout(log_file.try_clone().unwrap())
                .stderr(log_file)
                .spawn()
                .expect("sam (scripts/python-tools.sh installs it)"),
            command: command.to_owned(),
            port,
            base: format!("http://127.0.0.1:{port}"),
            log,
            spawned: Instant::now(),
        }
    }

    async fn listening(&mut self) {
        let command = &self.command;
        while tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .is_err()
        {
            let log = || std::fs::read_to_string(&self.log).unwrap_or_default();
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("sam local {command} exited ({status}): {}", log());
            }
            assert!(
                self.spawned.elapsed() < Duration::from_secs(180),
                "sam local {command} is not listening 180 s after it started: {}",
                log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        println!(
            "sam local {command} listening {:.1} s after it started (its log: {})",
            self.spawned.elapsed().as_secs_f64(),
            self.log.display()
        );
    }
}

impl Drop for SamServer {
    fn drop(&mut self) {
        let pid = self.child.id().to_string();
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status();
        for _ in 0..300 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Each function's call times under sam local: the first (its container starts) and the later
/// ones (warm).
#[derive(Default)]
struct Latency(Vec<(&'static str, Vec<Duration>)>);

impl Latency {
    async fn time<T>(&mut self, function: &'static str, call: impl Future<Output = T>) -> T {
        let started = Instant::now();
        let out = call.await;
        let took = started.elapsed();
        match self.0.iter_mut().find(|(f, _)| *f == function) {
            Some((_, times)) => times.push(took),
            None => self.0.push((function, vec![took])),
        }
        out
    }

    fn print(&self) {
        let ms = |d: &Duration| format!("{:.0} ms", d.as_secs_f64() * 1e3);
        println!("sam local, each function's calls (first: its container starts; then warm):");
        for (function, times) in &self.0 {
            let warm: Vec<String> = times[1..].iter().map(ms).collect();
            println!(
                "  {function:<14} first {:>8}   warm {}",
                ms(&times[0]),
                warm.join(", ")
            );
        }
    }
}

/// `follower` follows `following` over HTTP, timed: `201` and the edge.
async fn follow_over_http(api: &Api, latency: &mut Latency, follower: &str, following: &str) {
    let body = json!({"follower": follower, "following": following});
    let token = token(follower);
    let call = api.send(Method::POST, "/follow", Some(&token), Some(body));
    let followed = latency.time("follow", call).await;
    assert_eq!(followed.status, StatusCode::CREATED, "{}", followed.body);
    let edge = (&followed.body["follower"], &followed.body["following"]);
    assert_eq!(edge, (&json!(follower), &json!(following)));
}

/// `actor` posts photo `n` (foreign id `sam:<n>`) over HTTP, timed: `201` and the activity's id.
async fn post_over_http(api: &Api, latency: &mut Latency, actor: &str, n: u32) -> String {
    let body = json!({"actor": actor, "verb": "post", "object": format!("photo:{n}"),
        "foreign_id": format!("sam:{n}")});
    let token = token(actor);
    let call = api.send(Method::POST, "/activities", Some(&token), Some(body));
    let posted = latency.time("post-activity", call).await;
    assert_eq!(posted.status, StatusCode::CREATED, "{}", posted.body);
    assert_eq!(posted.body["actor"], json!(actor));
    posted.body["id"].as_str().unwrap().to_owned()
}

/// The ids of a feed page's activities, or of a page of groups' activities.
fn page_ids(body: &Value, groups: bool) -> Vec<String> {
    let results = body["results"].as_array().expect("results");
    let activities: Vec<&Value> = if groups {
        results
            .iter()
            .flat_map(|g| g["activities"].as_array().expect("a group's activities"))
            .collect()
    } else {
        results.iter().collect()
    };
    activities
        .iter()
        .map(|a| a["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Docker and the services of scripts/sam-local.sh, whose check runs this"]
async fn sam_local_invoke_and_start_api() {
    let queue = fresh_queue("sam_local").await;
    let sam = &SamLocal::new(queue.queue_url());
    // The servers start while the keyspace is made and the functions invoked.
    let mut server = SamServer::spawn(sam, "start-api");
    let mut lambda = SamServer::spawn(sam, "start-lambda");
    let store = fresh_keyspace(SAM_KEYSPACE).await;

    // `sam local invoke` of every function on its sample event: answers, rows and messages.
    let events = Path::new(REPO).join("events");
    let id = sample_events_in_order(&store, move |f, e| sam.invoke(f, events.join(e))).await;
    assert_sample_jobs(&queue, &id).await;

    // `sam local start-api`: users follow, post and read over HTTP; the fan-out goes through the
    // real queue, each batch handed to the fanout function as Lambda's event source hands it.
    server.listening().await;
    let api = Api {
        base: server.base.clone(),
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(120))
            .build()
            .unwrap(),
    };
    let mut latency = Latency::default();
    let (a, b, c) = (unique("sam_a"), unique("sam_b"), unique("sam_c"));
    let tb = token(&b);

    let health = latency.time("get-feed", api.send(Method::GET, "/health", None, None));
    let health = health.await;
    assert_eq!(
        (health.status, health.body),
        (StatusCode::OK, json!({"status": "ok"}))
    );

    follow_over_http(&api, &mut latency, &b, &a).await;
    let id1 = post_over_http(&api, &mut latency, &a, 1).await;

    // The follow's backfill and recounts and the post's delivery and recount go through the real
    // queue: scripts/sam-local.sh fanout (the README's way) hands them to `sam local invoke`.
    assert_eq!(
        depth(&queue).await,
        (5, 0, 0),
        "the messages of the follow and the post"
    );
    let script = Path::new(REPO).join("scripts/sam-local.sh");
    let status = tokio::process::Command::new("bash")
        .arg(script)
        .arg("fanout")
        .arg(&sam.env_file)
        .status()
        .await
        .unwrap();
    assert!(status.success(), "scripts/sam-local.sh fanout: {status}");
    assert_eq!(
        depth(&queue).await,
        (0, 0, 0),
        "the fan-out emptied the queue"
    );

    let flat = latency.time("get-feed", api.get("/feeds/flat", &tb)).await;
    assert_eq!(flat.status, StatusCode::OK, "{}", flat.body);
    assert_eq!(
        page_ids(&flat.body, false),
        [id1.as_str()],
        "{b}'s flat feed: {}",
        flat.body
    );
    let aggregated = latency
        .time("get-feed", api.get("/feeds/aggregated", &tb))
        .await;
    assert_eq!(aggregated.status, StatusCode::OK, "{}", aggregated.body);
    assert_eq!(
        page_ids(&aggregated.body, true),
        [id1.as_str()],
        "{}",
        aggregated.body
    );
    assert_eq!(
        aggregated.body["results"][0]["actors"],
        json!([a]),
        "{}",
        aggregated.body
    );

    // Warm calls: c follows a, a posts again.
    follow_over_http(&api, &mut latency, &c, &a).await;
    let id2 = post_over_http(&api, &mut latency, &a, 2).await;

    // The API's own answers: no token, no route, a method the path does not take.
    let anonymous = latency
        .time("get-feed", api.send(Method::GET, "/feeds/flat", None, None))
        .await;
    assert_eq!(
        anonymous.status,
        StatusCode::UNAUTHORIZED,
        "{}",
        anonymous.body
    );
    assert_eq!(anonymous.body["error"]["code"], "missing_authorization");
    let nowhere = latency
        .time("get-feed", api.get("/no/such/route", &tb))
        .await;
    assert_eq!(nowhere.status, StatusCode::NOT_FOUND, "{}", nowhere.body);
    assert_eq!(nowhere.body["error"]["code"], "not_found");
    let put = latency
        .time(
            "follow",
            api.send(Method::PUT, "/follow", Some(tb.as_str()), None),
        )
        .await;
    assert_eq!(put.status, StatusCode::METHOD_NOT_ALLOWED, "{}", put.body);
    assert_eq!(put.body["error"]["code"], "method_not_allowed");

    // The second batch through `sam local start-lambda` (a warm container): twice, as SQS may
    // deliver it again, which changes nothing.
    let batch = receive_at_least(&queue, 5).await;
    lambda.listening().await;
    let url = format!(
        "{}/2015-03-31/functions/FanoutFunction/invocations",
        lambda.base
    );
    let event = serde_json::to_string(&sqs_event(&batch)).unwrap();
    for _ in 0..2 {
        let answer = latency.time("fanout", api.http.post(&url).body(event.clone()).send());
        let answer = answer.await.expect("sam local start-lambda");
        assert_eq!(
            answer.json::<Value>().await.unwrap(),
            json!({"batchItemFailures": []})
        );
    }
    delete(&queue, &batch).await;
    for user in [&b, &c] {
        let flat = api.get("/feeds/flat", &token(user)).await;
        assert_eq!(
            page_ids(&flat.body, false),
            [id2.as_str(), id1.as_str()],
            "{user}'s flat feed: {}",
            flat.body
        );
    }

    // The local stand-in for Lambda's SQS trigger in front of `sam local start-lambda`: a post
    // reaches both followers with no manual step.
    let server_bin = Env::process()
        .get("FEEDS_SERVER_BIN")
        .unwrap()
        .expect("FEEDS_SERVER_BIN: scripts/sam-local.sh check names the feeds-server binary");
    let trigger = Trigger::start(
        &server_bin,
        queue.queue_url(),
        &["--endpoint", &lambda.base, "--function", "FanoutFunction"],
    );
    let id3 = post_over_http(&api, &mut latency, &a, 3).await;
    for user in [&b, &c] {
        let tu = token(user);
        eventually(
            &format!("{user}'s flat feed shows {id3}, through local-trigger"),
            Duration::from_secs(120),
            || async { page_ids(&api.get("/feeds/flat", &tu).await.body, false)[0] == id3 },
        )
        .await;
    }
    let batches = trigger.batches();
    assert!(!batches.is_empty(), "{}", trigger.log.display());
    for batch in &batches {
        assert!(
            batch.answered && batch.failed.is_empty(),
            "{batch:?} ({})",
            trigger.log.display()
        );
    }
    drop(trigger);
    drop(lambda);

    drop(server);
    latency.print();
    queue
        .client()
        .delete_queue()
        .queue_url(queue.queue_url())
        .send()
        .await
        .unwrap();
}
