//! What the fault, delivery and abuse tests share: the real server binary, an HTTP client acting as
//! users, fresh SQS queues with a short visibility timeout and their own dead-letter queue, the
//! local services' scripts, and a guard that leaves each service running whatever a test does.
//! Every test uses fresh user names; traffic goes to 127.0.0.1 only.

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use feeds::queue::sqs::{SqsConfig, SqsQueue};
use feeds::settings::Env;
use feeds::store::cassandra::{self, CassandraConfig, CassandraStore};
use reqwest::{Client, Method, StatusCode};
use serde_json::Value;

pub const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

pub fn var(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_owned())
}

pub fn sqs_endpoint() -> String {
    var("FEEDS_SQS_ENDPOINT", "http://127.0.0.1:9324")
}

pub fn unique(name: &str) -> String {
    format!("{name}_{:012x}", rand::random::<u64>() >> 16)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A server process of its own; it stops when dropped (its standard input closes).
pub struct Server {
    pub base: String,
    pub log: PathBuf,
    stdin: Option<ChildStdin>,
    child: Child,
}

impl Server {
    pub fn start(name: &str, envs: &[(&str, String)]) -> Server {
        let port = free_port();
        let log = std::env::temp_dir().join(format!("feeds-{name}-{port}.log"));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_feeds-server"));
        cmd.env("FEEDS_BIND", format!("127.0.0.1:{port}"))
            .env("FEEDS_EXIT_ON_STDIN_EOF", "1")
            .env("FEEDS_LOG_FORMAT", "text")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start feeds-server");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(90);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                let mut text = String::new();
                let _ = std::fs::File::open(&log).and_then(|mut f| f.read_to_string(&mut text));
                panic!("feeds-server ({name}) exited with {status}:\n{text}");
            }
            assert!(
                Instant::now() < deadline,
                "feeds-server ({name}) did not listen within 90 s; log: {}",
                log.display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let stdin = child.stdin.take();
        Server {
            base: format!("http://127.0.0.1:{port}"),
            log,
            stdin,
            child,
        }
    }

    /// On the embedded default, in a fresh SQLite file (store and queue).
    pub fn embedded(name: &str, extra: &[(&str, String)]) -> (Server, PathBuf) {
        let db = std::env::temp_dir().join(format!("feeds-{name}-{}.db", rand::random::<u64>()));
        let mut envs = vec![("FEEDS_SQLITE_PATH", db.display().to_string())];
        envs.extend(extra.iter().cloned());
        (Server::start(name, &envs), db)
    }

    /// On Cassandra (`keyspace`, migrated at start) and SQS (`queue_url`).
    pub fn cassandra_sqs(
        name: &str,
        keyspace: &str,
        queue_url: &str,
        extra: &[(&str, String)],
    ) -> Server {
        let mut envs = vec![
            ("FEEDS_STORE", "cassandra".to_owned()),
            (
                "FEEDS_CASSANDRA_NODES",
                var("FEEDS_CASSANDRA_NODES", "127.0.0.1:9042"),
            ),
            ("FEEDS_CASSANDRA_KEYSPACE", keyspace.to_owned()),
            ("FEEDS_CASSANDRA_MIGRATE", "true".to_owned()),
            ("FEEDS_QUEUE", "sqs".to_owned()),
            ("FEEDS_SQS_ENDPOINT", sqs_endpoint()),
            ("FEEDS_QUEUE_URL", queue_url.to_owned()),
            ("AWS_REGION", var("AWS_REGION", "us-east-1")),
            ("AWS_ACCESS_KEY_ID", var("AWS_ACCESS_KEY_ID", "local")),
            (
                "AWS_SECRET_ACCESS_KEY",
                var("AWS_SECRET_ACCESS_KEY", "local"),
            ),
        ];
        envs.extend(extra.iter().cloned());
        Server::start(name, &envs)
    }

    /// The server's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A token for `sub`, valid for an hour; minted once per user (signing is slow in debug builds).
pub fn token(sub: &str) -> String {
    static TOKENS: std::sync::Mutex<Option<HashMap<String, String>>> = std::sync::Mutex::new(None);
    let mut tokens = TOKENS.lock().unwrap();
    let tokens = tokens.get_or_insert_with(HashMap::new);
    if let Some(t) = tokens.get(sub) {
        return t.clone();
    }
    let exp = chrono::Utc::now() + chrono::Duration::hours(1);
    let t = feeds::auth::mint_token(feeds::auth::DEV_PRIVATE_KEY_PEM, sub, &[], exp, None, None)
        .unwrap();
    tokens.insert(sub.to_owned(), t.clone());
    t
}

pub fn admin_token() -> String {
    let exp = chrono::Utc::now() + chrono::Duration::hours(1);
    feeds::auth::mint_token(
        feeds::auth::DEV_PRIVATE_KEY_PEM,
        "svc_faults",
        &["feeds:admin"],
        exp,
        None,
        None,
    )
    .unwrap()
}

pub struct Answer {
    pub status: StatusCode,
    pub body: Value,
}

/// A client of one server.
#[derive(Clone)]
pub struct Api {
    pub base: String,
    pub http: Client,
}

impl Api {
    pub fn new(server: &Server) -> Self {
        Api {
            base: server.base.clone(),
            http: Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .unwrap(),
        }
    }

    pub async fn send(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Answer {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        answer(req.send().await.expect("request")).await
    }

    pub async fn get(&self, path: &str, token: &str) -> Answer {
        self.send(Method::GET, path, Some(token), None).await
    }

    pub async fn follow(&self, follower: &str, following: &str) -> Answer {
        self.send(
            Method::POST,
            "/follow",
            Some(&token(follower)),
            Some(serde_json::json!({"follower": follower, "following": following})),
        )
        .await
    }

    pub async fn unfollow(&self, follower: &str, following: &str) -> Answer {
        self.send(
            Method::DELETE,
            &format!("/follow/{follower}/{following}"),
            Some(&token(follower)),
            None,
        )
        .await
    }

    pub async fn post(&self, actor: &str, body: Value) -> Answer {
        self.send(Method::POST, "/activities", Some(&token(actor)), Some(body))
            .await
    }

    /// Every item of a paginated list, walking pages to `next: null`.
    pub async fn walk(&self, path: &str, token: &str) -> Vec<Value> {
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let sep = if path.contains('?') { '&' } else { '?' };
            let url = match &cursor {
                Some(c) => format!("{path}{sep}limit=100&cursor={c}"),
                None => format!("{path}{sep}limit=100"),
            };
            let page = self.get(&url, token).await;
            assert_eq!(page.status, StatusCode::OK, "{url}: {}", page.body);
            out.extend(page.body["results"].as_array().unwrap().iter().cloned());
            match page.body["next"].as_str() {
                Some(c) => cursor = Some(c.to_owned()),
                None => return out,
            }
        }
    }

    /// The ids of a user's whole flat feed, newest first.
    pub async fn flat_ids(&self, user: &str) -> Vec<String> {
        ids(&self.walk("/feeds/flat", &token(user)).await)
    }

    /// The ids of a user's own feed, newest first.
    pub async fn user_ids(&self, user: &str) -> Vec<String> {
        ids(&self
            .walk(&format!("/feeds/user/{user}"), &token(user))
            .await)
    }

    /// The users `user` follows.
    pub async fn following(&self, user: &str) -> Vec<String> {
        self.walk(&format!("/users/{user}/following"), &token(user))
            .await
            .iter()
            .map(|r| r["user"].as_str().unwrap().to_owned())
            .collect()
    }

    /// The followers of `user`.
    pub async fn followers(&self, user: &str) -> Vec<String> {
        self.walk(&format!("/users/{user}/followers"), &token(user))
            .await
            .iter()
            .map(|r| r["user"].as_str().unwrap().to_owned())
            .collect()
    }
}

pub async fn answer(res: reqwest::Response) -> Answer {
    let status = res.status();
    let text = res.text().await.unwrap_or_default();
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    };
    Answer { status, body }
}

pub fn ids(activities: &[Value]) -> Vec<String> {
    activities
        .iter()
        .map(|a| a["id"].as_str().unwrap().to_owned())
        .collect()
}

/// Waits (at most `limit`) until `check` holds.
pub async fn eventually<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Runs `scripts/<service>.sh <action>`; answers whether it succeeded.
pub fn script(service: &str, action: &str) -> bool {
    Command::new("bash")
        .arg(format!("{ROOT}/scripts/{service}.sh"))
        .arg(action)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .status()
        .is_ok_and(|s| s.success())
}

/// The same, off the async threads.
pub async fn script_async(service: &'static str, action: &'static str) -> bool {
    tokio::task::spawn_blocking(move || script(service, action))
        .await
        .unwrap()
}

/// Leaves a service running when dropped, also when the test fails: `scripts/<service>.sh start`
/// unless it already answers.
pub struct KeepRunning(pub &'static str);

impl Drop for KeepRunning {
    fn drop(&mut self) {
        if !script(self.0, "status") && !script(self.0, "start") {
            eprintln!(
                "could not start {} again: run scripts/{}.sh start",
                self.0, self.0
            );
        }
    }
}

/// A Cassandra store on keyspace `keyspace` (migrated), for seeding and reading directly.
pub async fn cassandra_store(keyspace: &str) -> Arc<CassandraStore> {
    let mut cfg = CassandraConfig::read(&Env::process()).unwrap();
    cfg.keyspace = keyspace.into();
    let session = cassandra::connect(&cfg)
        .await
        .expect("Cassandra on FEEDS_CASSANDRA_NODES (scripts/cassandra.sh start)");
    cassandra::migrate(&session, &cfg).await.unwrap();
    Arc::new(CassandraStore::new(Arc::new(session), &cfg).await.unwrap())
}

/// A fresh SQS queue with a short visibility timeout whose messages move to its own dead-letter
/// queue after `max_receives` receives.
pub struct TestQueue {
    pub name: String,
    pub queue: SqsQueue,
    pub dlq: SqsQueue,
    visibility_secs: u32,
    max_receives: u32,
}

impl TestQueue {
    pub async fn create(prefix: &str, visibility_secs: u32, max_receives: u32) -> TestQueue {
        let client = feeds::queue::sqs::client(&SqsConfig {
            queue_url: String::new(),
            endpoint: Some(sqs_endpoint()),
        })
        .await;
        // A handle without a queue, for the calls that create one.
        let server = SqsQueue::new(client, "");
        let name = unique(prefix);
        let (url, dlq_url) = create_pair(&server, &name, visibility_secs, max_receives).await;
        TestQueue {
            name,
            queue: SqsQueue::new(server.client().clone(), url),
            dlq: SqsQueue::new(server.client().clone(), dlq_url),
            visibility_secs,
            max_receives,
        }
    }

    pub fn url(&self) -> &str {
        self.queue.queue_url()
    }

    /// Creates the queue and its dead-letter queue again (after a restart of the in-memory
    /// server): the same names give the same URLs.
    pub async fn recreate(&self) {
        let (url, dlq_url) = create_pair(
            &self.queue,
            &self.name,
            self.visibility_secs,
            self.max_receives,
        )
        .await;
        assert_eq!(url, self.queue.queue_url());
        assert_eq!(dlq_url, self.dlq.queue_url());
    }

    /// (visible, in flight, delayed) messages of the queue.
    pub async fn depth(&self) -> (u64, u64, u64) {
        depth(&self.queue).await
    }

    /// Messages in the dead-letter queue, waiting or in flight.
    pub async fn dead_letters(&self) -> u64 {
        let (visible, in_flight, delayed) = depth(&self.dlq).await;
        visible + in_flight + delayed
    }

    /// Waits until the queue stays empty (nothing waiting, in flight or delayed) for three polls
    /// in a row.
    pub async fn drained(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        let mut empty = 0;
        while empty < 3 {
            let d = self.depth().await;
            assert!(
                Instant::now() < deadline,
                "queue {} did not drain: {d:?}",
                self.name
            );
            empty = if d == (0, 0, 0) { empty + 1 } else { 0 };
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    /// Takes every message of the dead-letter queue: their bodies.
    pub async fn take_dead_letters(&self) -> Vec<String> {
        let mut bodies = Vec::new();
        loop {
            let got = self.dlq.receive(0).await.unwrap();
            if got.is_empty() {
                return bodies;
            }
            for (m, receipt) in got {
                bodies.push(m.body);
                self.dlq.delete(&receipt).await.unwrap();
            }
        }
    }
}

/// Creates `<name>-dlq`, then `name` redriving to it; `server` only lends its client.
async fn create_pair(
    server: &SqsQueue,
    name: &str,
    visibility_secs: u32,
    max_receives: u32,
) -> (String, String) {
    let client = server.client();
    let dlq_url = client
        .create_queue()
        .queue_name(format!("{name}-dlq"))
        .send()
        .await
        .expect("ElasticMQ on FEEDS_SQS_ENDPOINT (scripts/elasticmq.sh start)")
        .queue_url
        .unwrap();
    let dlq_arn = client
        .get_queue_attributes()
        .queue_url(&dlq_url)
        .attribute_names("QueueArn".into())
        .send()
        .await
        .unwrap()
        .attributes
        .unwrap_or_default()
        .into_iter()
        .find(|(k, _)| k.as_str() == "QueueArn")
        .map(|(_, v)| v)
        .expect("the dead-letter queue's ARN");
    let redrive =
        format!(r#"{{"deadLetterTargetArn":"{dlq_arn}","maxReceiveCount":"{max_receives}"}}"#);
    let url = client
        .create_queue()
        .queue_name(name)
        .attributes("VisibilityTimeout".into(), visibility_secs.to_string())
        .attributes("RedrivePolicy".into(), redrive)
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    (url, dlq_url)
}

async fn depth(queue: &SqsQueue) -> (u64, u64, u64) {
    let attributes: HashMap<String, String> = queue
        .client()
        .get_queue_attributes()
        .queue_url(queue.queue_url())
        .attribute_names("All".into())
        .send()
        .await
        .expect("GetQueueAttributes")
        .attributes
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k.as_str().to_owned(), v))
        .collect();
    let n = |k: &str| {
        attributes
            .get(k)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0u64)
    };
    (
        n("ApproximateNumberOfMessages"),
        n("ApproximateNumberOfMessagesNotVisible"),
        n("ApproximateNumberOfMessagesDelayed"),
    )
}

/// Runs `f` on every item, at most `limit` at a time, on the runtime's threads; answers the
/// results in the items' order.
pub async fn concurrently<T, R, F, Fut>(items: Vec<T>, limit: usize, f: F) -> Vec<R>
where
    T: Send + 'static,
    R: Send + 'static,
    F: Fn(T) -> Fut,
    Fut: std::future::Future<Output = R> + Send + 'static,
{
    let permits = Arc::new(tokio::sync::Semaphore::new(limit));
    let mut tasks = tokio::task::JoinSet::new();
    for (i, item) in items.into_iter().enumerate() {
        let permits = permits.clone();
        let work = f(item);
        tasks.spawn(async move {
            let _permit = permits.acquire_owned().await.unwrap();
            (i, work.await)
        });
    }
    let mut out: Vec<(usize, R)> = tasks.join_all().await;
    out.sort_by_key(|(i, _)| *i);
    out.into_iter().map(|(_, r)| r).collect()
}
