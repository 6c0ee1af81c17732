//! The services the tests run against: the embedded default in memory, the local services'
//! scripts and a guard that leaves each running whatever a test does, a Cassandra store on a
//! keyspace of the caller's, fresh SQS queues (with a dead-letter queue of their own, or without),
//! SQS messages handed to the fan-out function as Lambda's event source hands them over, and the
//! sample events.

use std::collections::{BTreeSet, HashMap};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_lambda_events::event::sqs::SqsEvent;
use feeds::config::{Backends, Defaults, Settings};
use feeds::fanout::Fanout;
use feeds::http::App;
use feeds::queue::embedded::EmbeddedQueue;
use feeds::queue::sqs::{self, SqsConfig, SqsQueue};
use feeds::settings::Env;
use feeds::store::cassandra::{self, CassandraConfig, CassandraStore};
use feeds::store::sqlite::{SqliteDb, SqliteStore};
use feeds::trace::Carrier;
use serde_json::json;

use crate::unique;

/// The repository's root.
pub const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

/// The variable `name` of the process environment, or `default` when unset.
pub fn var(name: &str, default: &str) -> String {
    Env::process()
        .string_or(name, default)
        .unwrap_or_else(|e| panic!("{e}"))
}

/// The local SQS server (ElasticMQ).
pub fn sqs_endpoint() -> String {
    var("FEEDS_SQS_ENDPOINT", "http://127.0.0.1:9324")
}

/// The sample event `events/<name>`.
pub fn event(name: &str) -> String {
    let path = format!("{ROOT}/events/{name}");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The embedded default in a fresh SQLite database in memory, as the standalone server builds it
/// (a visibility timeout of 30 s, 5 receives): its backends, and the store and queue they share.
pub async fn in_memory() -> (Backends, Arc<SqliteStore>, EmbeddedQueue) {
    let db = SqliteDb::open(":memory:").unwrap();
    let store = Arc::new(SqliteStore::new(db.clone()));
    let queue = EmbeddedQueue::new(db, Duration::from_secs(30), 5)
        .await
        .unwrap();
    let backends = Backends::new(store.clone(), queue.clone(), Default::default());
    (backends, store, queue)
}

/// The HTTP app over `backends` with the settings of an empty environment: the development key,
/// the development cursor secret, the default grouping.
pub fn app(backends: &Backends) -> App {
    let none: [(&str, &str); 0] = [];
    let settings =
        Settings::read(&Env::from_pairs(none), Defaults::EMBEDDED).expect("the default settings");
    feeds::config::app(&settings, backends).expect("the app")
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

/// A Cassandra store on `keyspace`, migrated once per process, for seeding and reading directly.
/// A session's connections live on the runtime that made them: each test makes its own store.
pub async fn cassandra_store(keyspace: &str) -> Arc<CassandraStore> {
    static MIGRATED: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());
    let mut cfg = CassandraConfig::read(&Env::process()).unwrap();
    cfg.keyspace = keyspace.into();
    let session = cassandra::connect(&cfg)
        .await
        .expect("Cassandra on FEEDS_CASSANDRA_NODES (scripts/cassandra.sh start)");
    if !MIGRATED.lock().unwrap().contains(keyspace) {
        cassandra::migrate(&session, &cfg).await.unwrap();
        MIGRATED.lock().unwrap().insert(keyspace.to_owned());
    }
    Arc::new(CassandraStore::new(Arc::new(session), &cfg).await.unwrap())
}

/// A client of the local SQS server.
pub async fn sqs_client() -> aws_sdk_sqs::Client {
    feeds::queue::sqs::client(&SqsConfig {
        queue_url: String::new(),
        endpoint: Some(sqs_endpoint()),
        dlq_url: None,
    })
    .await
}

/// A fresh queue with the server's defaults (no dead-letter queue), so tests never see each
/// other's messages.
pub async fn fresh_queue(prefix: &str) -> SqsQueue {
    let client = sqs_client().await;
    let created = client
        .create_queue()
        .queue_name(unique(prefix))
        .send()
        .await
        .expect("ElasticMQ on FEEDS_SQS_ENDPOINT (scripts/elasticmq.sh start)");
    SqsQueue::new(client, created.queue_url.unwrap())
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
        // A handle without a queue, for the calls that create one.
        let server = SqsQueue::new(sqs_client().await, "");
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

    /// Waits until the queue stays empty: [`crate::wait::until_drained`].
    pub async fn drained(&self, limit: Duration) {
        crate::wait::until_drained(&crate::wait::FanoutQueue::Sqs(self.url().to_owned()), limit)
            .await
    }

    /// Takes every message of the dead-letter queue: their bodies.
    pub async fn take_dead_letters(&self) -> Vec<String> {
        let mut bodies = Vec::new();
        loop {
            let got = self.dlq.receive(0).await.unwrap();
            if got.is_empty() {
                return bodies;
            }
            for d in got {
                bodies.push(d.message.body);
                self.dlq.delete(&d.receipt).await.unwrap();
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

/// (visible, in flight, delayed) messages of `queue`: SQS's approximate numbers, exact on
/// ElasticMQ.
pub async fn depth(queue: &SqsQueue) -> (u64, u64, u64) {
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

/// A message as the consumer saw it: id, receipt handle, body, the trace its attributes carry and
/// its receive count.
#[derive(Debug, Clone)]
pub struct Received {
    pub id: String,
    pub receipt: String,
    pub body: String,
    pub trace: Carrier,
    pub receives: u32,
}

/// Receives up to 10 messages, long-polling up to `wait_seconds`.
pub async fn receive(queue: &SqsQueue, wait_seconds: i32) -> Vec<Received> {
    queue
        .receive(wait_seconds)
        .await
        .unwrap()
        .into_iter()
        .map(|d| Received {
            id: d.message.id,
            receipt: d.receipt,
            body: d.message.body,
            trace: d.message.trace,
            receives: d.message.receives,
        })
        .collect()
}

/// The event Lambda's SQS event source builds from `messages`, with their system attributes and
/// message attributes.
pub fn sqs_event(messages: &[Received]) -> SqsEvent {
    let records: Vec<serde_json::Value> = messages
        .iter()
        .map(|m| {
            let mut attributes = json!({
                "ApproximateReceiveCount": m.receives.to_string(), "SentTimestamp": "1795946400150",
            });
            if let Some(header) = &m.trace.aws_trace_header {
                attributes[sqs::AWS_TRACE_HEADER] = json!(header);
            }
            let mut message_attributes = serde_json::Map::new();
            let mut attribute = |name: &str, data_type: &str, value: Option<String>| {
                if let Some(value) = value {
                    let attribute = json!({"stringValue": value, "stringListValues": [],
                        "binaryListValues": [], "dataType": data_type});
                    message_attributes.insert(name.to_owned(), attribute);
                }
            };
            attribute(sqs::TRACEPARENT, "String", m.trace.traceparent.clone());
            attribute(sqs::REQUEST_ID, "String", m.trace.request_id.clone());
            attribute(sqs::ORIGIN_MS, "Number", m.trace.origin_ms.map(|o| o.to_string()));
            json!({
                "messageId": m.id, "receiptHandle": m.receipt, "body": m.body,
                "attributes": attributes, "messageAttributes": message_attributes,
                "md5OfBody": "", "eventSource": "aws:sqs",
                "eventSourceARN": "arn:aws:sqs:us-east-1:000000000000:fanout", "awsRegion": "us-east-1"
            })
        })
        .collect();
    serde_json::from_value(json!({ "Records": records })).unwrap()
}

/// Runs the fan-out function's handler on the event Lambda builds from `messages`; answers the ids
/// it reported failed.
pub async fn handle(fanout: &Fanout, messages: &[Received]) -> Vec<String> {
    feeds::lambda::handle_sqs_event(fanout, sqs_event(messages))
        .await
        .batch_item_failures
        .into_iter()
        .map(|f| f.item_identifier)
        .collect()
}

/// Sends `body` as it is (tests use it for messages that do not parse); answers the message id.
pub async fn send_raw(queue: &SqsQueue, body: &str) -> String {
    queue
        .client()
        .send_message()
        .queue_url(queue.queue_url())
        .message_body(body)
        .send()
        .await
        .unwrap()
        .message_id
        .unwrap()
}
