//! One trace per post: a post's trace id and request id reach the log lines of every chunk of its
//! fan-out (and of the other messages it causes), through the embedded queue and through SQS
//! (ElasticMQ) on Cassandra, read from the server's own JSON logs; and its metrics lines (EMF)
//! count its chunks and rows and give its delivery lag once. Through the fan-out function's SQS
//! event, every chunk message carries the X-Ray header and the traceparent on. Needs Cassandra
//! and ElasticMQ for the last two (`scripts/test.sh` starts both).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use feeds::fanout::{Fanout, FanoutSettings};
use feeds::model::FollowEdge;
use feeds::queue::{FanoutJob, Queue};
use feeds::store::Store;
use feeds::trace::{self, Carrier};
use feeds_testkit::api::{answer, Api};
use feeds_testkit::server::Server;
use feeds_testkit::services::{handle, receive, TestQueue};
use feeds_testkit::tokens::token;
use feeds_testkit::unique;
use feeds_testkit::wait::until_drained;
use reqwest::StatusCode;
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_feeds-server");

const KEYSPACE: &str = "feeds_traces";

/// Followers of the poster; with chunks of 3, a delivery takes 3 messages (3, 3 and 2 followers).
const FOLLOWERS: usize = 8;
const CHUNK: usize = 3;
const DELIVERY_CHUNKS: usize = 3;

/// What the server is started with: small chunks, JSON logs at `info`, metrics on.
fn settings() -> Vec<(&'static str, String)> {
    vec![
        ("FEEDS_FANOUT_CHUNK_SIZE", CHUNK.to_string()),
        ("FEEDS_LOG_FORMAT", "json".into()),
        ("RUST_LOG", "info".into()),
        ("FEEDS_METRICS", "emf".into()),
        ("FEEDS_METRICS_NAMESPACE", "FeedsTest".into()),
    ]
}

/// The JSON objects among the server's output lines (its logs on stderr, its metrics on stdout).
fn json_lines(server: &Server) -> Vec<Value> {
    server
        .log_text()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(Value::is_object)
        .collect()
}

/// `field` of the span named `name` a log line was written in.
fn span_field<'a>(line: &'a Value, name: &str, field: &str) -> Option<&'a str> {
    line["spans"]
        .as_array()?
        .iter()
        .find(|s| s["name"] == name)?[field]
        .as_str()
}

/// Posts as `actor` with `headers`; answers the activity's id and the request id answered.
async fn post(api: &Api, actor: &str, headers: &[(&str, &str)]) -> (String, String) {
    let mut req = api
        .http
        .post(format!("{}/activities", api.base))
        .header("authorization", format!("Bearer {}", token(actor)))
        .json(&json!({"actor": actor, "verb": "post", "object": "traced"}));
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let a = answer(req.send().await.unwrap()).await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    let request_id = a.headers["x-request-id"].to_str().unwrap().to_owned();
    (a.body["id"].as_str().unwrap().to_owned(), request_id)
}

/// Everything one post left in the logs and metrics.
struct PostTrace {
    /// The trace of the request, from its own log line.
    trace_id: String,
    /// The delivery's chunks: their message ids.
    chunks: BTreeSet<String>,
    /// Log lines written within the post's trace (the request's and every message's it caused).
    lines: usize,
    /// The kinds of the messages within the trace.
    kinds: BTreeSet<String>,
}

/// Reads the post of activity `id`, asked with `request_id`, from the server's output, checking
/// that every line of each of its messages carries the post's trace id and request id.
fn post_trace(lines: &[Value], id: &str, request_id: &str) -> PostTrace {
    let posted: Vec<&Value> = lines
        .iter()
        .filter(|l| l["message"] == "activity posted" && l["activity_id"] == id)
        .collect();
    assert_eq!(posted.len(), 1, "the request's own line");
    let trace_id = span_field(posted[0], "trace", "trace_id")
        .expect("the request's line carries its trace")
        .to_owned();
    assert_eq!(
        span_field(posted[0], "trace", "request_id"),
        Some(request_id)
    );

    let done = |l: &Value| l["message"] == "fan-out message done";
    let chunks: BTreeSet<String> = lines
        .iter()
        .filter(|l| done(l) && l["kind"] == "deliver" && l["activity_id"] == id)
        .map(|l| {
            span_field(l, "fanout_message", "message_id")
                .unwrap()
                .to_owned()
        })
        .collect();
    // Every line of every message of the delivery, whatever its level or text.
    let mut of_chunks = 0;
    for l in lines {
        let Some(message) = span_field(l, "fanout_message", "message_id") else {
            continue;
        };
        if chunks.contains(message) {
            of_chunks += 1;
            assert_eq!(
                span_field(l, "trace", "trace_id"),
                Some(trace_id.as_str()),
                "{l}"
            );
            assert_eq!(
                span_field(l, "trace", "request_id"),
                Some(request_id),
                "{l}"
            );
        }
    }
    assert!(of_chunks >= chunks.len(), "each chunk logged its line");
    let traced: Vec<&Value> = lines
        .iter()
        .filter(|l| span_field(l, "trace", "trace_id") == Some(trace_id.as_str()))
        .collect();
    let kinds = traced
        .iter()
        .filter(|l| done(l))
        .map(|l| l["kind"].as_str().unwrap().to_owned())
        .collect();
    PostTrace {
        trace_id,
        chunks,
        lines: traced.len(),
        kinds,
    }
}

/// The metrics documents (EMF) of trace `trace_id`.
fn metrics_of<'a>(lines: &'a [Value], trace_id: &str) -> Vec<&'a Value> {
    lines
        .iter()
        .filter(|l| l.get("_aws").is_some() && l["trace_id"] == trace_id)
        .collect()
}

/// An actor with [`FOLLOWERS`] followers posts twice, once continuing a caller's trace and once
/// without: each post's trace id and request id are in every line of each of its chunks, and in
/// the lines of its recount; its metrics count its chunks and rows, and give its lag once.
async fn one_trace_per_post(server: &Server) {
    let api = Api::new(server);
    let actor = unique("poster");
    for i in 0..FOLLOWERS {
        let fan = format!("{actor}_fan{i}");
        assert_eq!(api.follow(&fan, &actor).await.status, StatusCode::CREATED);
    }
    until_drained(server.queue(), Duration::from_secs(60)).await;

    let caller_trace = format!("{:032x}", rand::random::<u128>() | 1);
    let traceparent = format!("00-{caller_trace}-00f067aa0ba902b7-01");
    let caller_request = unique("req");
    let (first, answered) = post(
        &api,
        &actor,
        &[
            ("traceparent", &traceparent),
            ("x-request-id", &caller_request),
        ],
    )
    .await;
    assert_eq!(
        answered, caller_request,
        "the caller's request id is answered"
    );
    let (second, second_request) = post(&api, &actor, &[]).await;
    until_drained(server.queue(), Duration::from_secs(60)).await;
    let fan = format!("{actor}_fan0");
    let feed = api.flat_ids(&fan).await;
    assert_eq!(
        feed,
        [second.clone(), first.clone()],
        "both posts delivered"
    );

    let lines = json_lines(server);
    let one = post_trace(&lines, &first, &caller_request);
    assert_eq!(
        one.trace_id, caller_trace,
        "the caller's trace is continued"
    );
    let two = post_trace(&lines, &second, &second_request);
    assert_ne!(
        two.trace_id, one.trace_id,
        "a post without one starts its own trace"
    );
    for (post, trace) in [(&first, &one), (&second, &two)] {
        assert_eq!(trace.chunks.len(), DELIVERY_CHUNKS, "{post}: its chunks");
        assert_eq!(
            trace.kinds,
            BTreeSet::from(["deliver".to_owned(), "recount".to_owned()]),
            "{post}: every message it caused is in its trace"
        );
        assert!(
            trace.lines > DELIVERY_CHUNKS + 1,
            "{post}: {} lines",
            trace.lines
        );

        let docs = metrics_of(&lines, &trace.trace_id);
        let sum = |name: &str| docs.iter().filter_map(|d| d[name].as_f64()).sum::<f64>();
        let deliveries: Vec<&&Value> = docs.iter().filter(|d| d["kind"] == "deliver").collect();
        assert_eq!(
            deliveries.len(),
            DELIVERY_CHUNKS,
            "{post}: a document a chunk"
        );
        assert_eq!(
            sum("FanoutChunks"),
            (DELIVERY_CHUNKS + 1) as f64,
            "and the recount's"
        );
        let rows: f64 = deliveries
            .iter()
            .filter_map(|d| d["FanoutRows"].as_f64())
            .sum();
        assert_eq!(rows, FOLLOWERS as f64, "{post}: a row per follower");
        let lags: Vec<f64> = docs
            .iter()
            .filter_map(|d| d["DeliveryLag"].as_f64())
            .collect();
        assert_eq!(lags.len(), 1, "{post}: one lag, at the end of its delivery");
        assert!((0.0..60.0).contains(&lags[0]), "{post}: lag {} s", lags[0]);
        let directive = &docs[0]["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(directive["Namespace"], "FeedsTest");
    }

    // A feed read is timed, by feed, within its own trace.
    let read = api.get("/feeds/flat", &token(&fan)).await;
    let read_request = read.headers["x-request-id"].to_str().unwrap().to_owned();
    let lines = json_lines(server);
    let timed: Vec<&Value> = lines
        .iter()
        .filter(|l| l["ReadLatency"].is_number() && l["request_id"] == read_request)
        .collect();
    assert_eq!(timed.len(), 1, "the read's latency");
    assert_eq!(timed[0]["Feed"], "flat");
    assert_eq!(timed[0]["status"], 200);
    assert_eq!(
        timed[0]["_aws"]["CloudWatchMetrics"][0]["Dimensions"],
        json!([["Feed"]])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_posts_trace_reaches_every_chunk_through_the_embedded_queue() {
    let (server, _db) = Server::embedded(BIN, "traces-embedded", &settings());
    one_trace_per_post(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_posts_trace_reaches_every_chunk_through_sqs_on_cassandra() {
    let queue = TestQueue::create("traces", 30, 5).await;
    let server = Server::cassandra_sqs(BIN, "traces-cassandra", KEYSPACE, queue.url(), &settings());
    one_trace_per_post(&server).await;
    assert_eq!(queue.dead_letters().await, 0);
}

/// The fan-out function's way: messages received from SQS, handed over as Lambda's event source
/// hands them (attributes included); each chunk's message carries the X-Ray header and the trace
/// of the first on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fanout_functions_chunks_carry_the_xray_header_and_the_trace_on() {
    const XRAY: &str = "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1";
    let (backends, store, _) = feeds_testkit::services::in_memory().await;
    drop(backends);
    let queue = TestQueue::create("traces_lambda", 30, 5).await;
    let settings = FanoutSettings {
        chunk_size: CHUNK,
        ..Default::default()
    };
    let fanout = Fanout::new(store.clone(), Arc::new(queue.queue.clone()), settings);
    let actor = unique("poster");
    for i in 0..FOLLOWERS {
        let edge = FollowEdge {
            follower: format!("{actor}_fan{i}"),
            following: actor.clone(),
            created_at: chrono::Utc::now(),
        };
        store.follow(&edge).await.unwrap();
    }
    let new: feeds::model::NewActivity =
        serde_json::from_value(json!({"actor": actor, "object": "traced"})).unwrap();
    let activity = new.into_activity(chrono::Utc::now()).unwrap();
    store.put_activity(&activity).await.unwrap();

    let first = Carrier {
        aws_trace_header: Some(XRAY.into()),
        request_id: Some("apigw-request".into()),
        origin_ms: Some(chrono::Utc::now().timestamp_millis()),
        ..Default::default()
    }
    .start();
    assert_eq!(first.trace_id, "5759e988bd862e3fe1be46a994272793");
    let deliver = FanoutJob::Deliver {
        activity_id: activity.id.clone(),
        actor: actor.clone(),
        after: None,
    };
    trace::within(first.clone(), queue.queue.send(&[deliver]))
        .await
        .unwrap();

    let mut chunks = 0;
    let mut empty_polls = 0;
    while empty_polls < 2 {
        let messages = receive(&queue.queue, 1).await;
        if messages.is_empty() {
            empty_polls += 1;
            continue;
        }
        empty_polls = 0;
        for m in &messages {
            chunks += 1;
            assert_eq!(
                m.trace.aws_trace_header.as_deref(),
                Some(XRAY),
                "{:?}",
                m.trace
            );
            assert_eq!(m.trace.request_id.as_deref(), Some("apigw-request"));
            assert_eq!(m.trace.origin_ms, first.origin_ms);
            let context = m.trace.start();
            assert_eq!(context.trace_id, first.trace_id, "{:?}", m.trace);
            assert!(context.sampled);
        }
        assert!(handle(&fanout, &messages).await.is_empty());
        for m in &messages {
            queue.queue.delete(&m.receipt).await.unwrap();
        }
    }
    assert_eq!(chunks, DELIVERY_CHUNKS);
    let fan = format!("{actor}_fan{}", FOLLOWERS - 1);
    let feed = store.timeline(&fan, Default::default(), 10).await.unwrap();
    assert_eq!(feed.len(), 1, "the last chunk delivered");
}
