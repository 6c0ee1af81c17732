//! `feeds-server local-trigger`, the local stand-in for Lambda's SQS trigger, on real ElasticMQ
//! queues, invoking a stand-in function: a small Lambda Invoke API served by the test, which
//! answers each way a local runner reports a failure (cargo lambda watch's `500`, sam local's
//! `X-Amz-Function-Error` and its empty answer at a timeout, no answer at all, an answer naming no
//! message of the batch), since the real runners cannot be made to fail on demand. The real
//! function behind `cargo lambda watch` is exercised by local_lambda.rs. Needs ElasticMQ.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Json;
use feeds_testkit::services::{send_raw, sqs_client, TestQueue, ROOT};
use feeds_testkit::trigger::Trigger;
use feeds_testkit::unique;
use serde_json::{json, Value};
use yaml_rust2::{Yaml, YamlLoader};

const BIN: &str = env!("CARGO_BIN_EXE_feeds-server");

/// How the stand-in function answers an invocation that holds a message received for the first
/// time; later invocations succeed.
#[derive(Clone, Copy, Debug)]
enum FirstTime {
    /// Succeeds.
    Succeed,
    /// `cargo lambda watch`'s function error.
    CargoLambdaError,
    /// Lambda's and `sam local start-lambda`'s function error.
    Unhandled,
    /// `sam local start-lambda` at the function's timeout.
    EmptyAnswer,
    /// No answer within the function's timeout.
    Hang,
    /// A failure naming a message that is not in the batch.
    UnknownId,
    /// Reports the messages whose body is this, and only them.
    Report(&'static str),
}

/// The stand-in function: what it received (when, and the event), and how it answers.
#[derive(Clone)]
struct Function {
    first_time: FirstTime,
    /// Each event, with when it arrived (milliseconds since the epoch, as SQS stamps messages).
    events: Arc<Mutex<Vec<(u64, Value)>>>,
}

async fn invoked(State(f): State<Function>, body: String) -> Response {
    let event: Value = serde_json::from_str(&body).expect("an SQS event");
    f.events.lock().unwrap().push((epoch_ms(), event.clone()));
    let records = event["Records"].as_array().unwrap().clone();
    let first_time = records
        .iter()
        .any(|r| r["attributes"]["ApproximateReceiveCount"] == "1");
    let success = Json(json!({"batchItemFailures": []}));
    if !first_time {
        return success.into_response();
    }
    let error = json!({"errorType": "Panic", "errorMessage": "on purpose"}).to_string();
    match f.first_time {
        FirstTime::Succeed => success.into_response(),
        FirstTime::CargoLambdaError => (StatusCode::INTERNAL_SERVER_ERROR, error).into_response(),
        FirstTime::Unhandled => {
            let mut headers = HeaderMap::new();
            headers.insert("x-amz-function-error", "Unhandled".parse().unwrap());
            (StatusCode::OK, headers, error).into_response()
        }
        FirstTime::EmptyAnswer => StatusCode::OK.into_response(),
        FirstTime::Hang => {
            tokio::time::sleep(Duration::from_secs(3)).await;
            success.into_response()
        }
        FirstTime::UnknownId => {
            Json(json!({"batchItemFailures": [{"itemIdentifier": "no-such-message"}]}))
                .into_response()
        }
        FirstTime::Report(body) => {
            let failed: Vec<Value> = records
                .iter()
                .filter(|r| r["body"] == body && r["attributes"]["ApproximateReceiveCount"] == "1")
                .map(|r| json!({"itemIdentifier": r["messageId"]}))
                .collect();
            Json(json!({"batchItemFailures": failed})).into_response()
        }
    }
}

impl Function {
    /// Serves the Invoke API on a free port: answers its base URL.
    async fn serve(first_time: FirstTime) -> (Function, String) {
        let f = Function {
            first_time,
            events: Arc::default(),
        };
        let app = axum::Router::new()
            .route("/2015-03-31/functions/{name}/invocations", post(invoked))
            .with_state(f.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (f, url)
    }

    /// Each delivery of the message whose body is `body`, in order.
    fn deliveries(&self, body: &str) -> Vec<Delivery> {
        let events = self.events.lock().unwrap();
        events
            .iter()
            .flat_map(|(at, e)| {
                e["Records"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|r| r["body"] == body)
                    .map(|r| {
                        let attribute = |name: &str| r["attributes"][name].as_str().unwrap();
                        Delivery {
                            at_ms: *at,
                            receive_count: attribute("ApproximateReceiveCount").to_owned(),
                            first_received_ms: attribute("ApproximateFirstReceiveTimestamp")
                                .parse()
                                .unwrap(),
                        }
                    })
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    fn events(&self) -> Vec<Value> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .map(|(_, e)| e.clone())
            .collect()
    }
}

/// A message as the function received it.
struct Delivery {
    /// When it arrived, in milliseconds since the epoch.
    at_ms: u64,
    receive_count: String,
    /// When SQS first handed it out, in milliseconds since the epoch.
    first_received_ms: u64,
}

fn epoch_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// A test queue (visibility timeout 1 s) holding `bodies`, and a trigger on it invoking `function`
/// with a function timeout of 500 ms.
async fn run(prefix: &str, bodies: &[&str], url: &str) -> (TestQueue, Trigger) {
    let queue = TestQueue::create(prefix, 1, 5).await;
    // Sent before the trigger starts, so its first receive finds them all.
    for body in bodies {
        send_raw(&queue.queue, body).await;
    }
    let trigger = Trigger::start(
        BIN,
        queue.url(),
        &[
            "--endpoint",
            url,
            "--function",
            "fanout",
            "--visibility-timeout",
            "1",
            "--function-timeout-ms",
            "500",
        ],
    );
    (queue, trigger)
}

#[tokio::test]
async fn a_batch_that_fails_as_a_whole_comes_back_after_the_visibility_timeout() {
    for first_time in [
        FirstTime::CargoLambdaError,
        FirstTime::Unhandled,
        FirstTime::EmptyAnswer,
        FirstTime::Hang,
        FirstTime::UnknownId,
    ] {
        let (function, url) = Function::serve(first_time).await;
        let bodies = ["one", "two", "three"];
        let (queue, trigger) = run("trigger_whole", &bodies, &url).await;
        queue.drained(Duration::from_secs(30)).await;
        let batches = trigger.batches();
        assert!(
            !batches[0].answered && batches[0].messages.len() == 3,
            "{first_time:?}: the first batch holds the three messages and fails: {batches:?}"
        );
        for body in bodies {
            let deliveries = function.deliveries(body);
            let counts: Vec<&str> = deliveries
                .iter()
                .map(|d| d.receive_count.as_str())
                .collect();
            assert_eq!(
                counts,
                ["1", "2"],
                "{first_time:?}: {body} delivered again, once"
            );
            // Visible again a visibility timeout after it was received (ElasticMQ stamps
            // milliseconds; a few of slack for the rounding).
            let after_ms = deliveries[1].at_ms - deliveries[1].first_received_ms;
            assert!(
                after_ms >= 990,
                "{first_time:?}: redelivered {after_ms} ms after its first receive"
            );
        }
        assert_eq!(queue.dead_letters().await, 0, "{first_time:?}");
    }
}

#[tokio::test]
async fn only_the_messages_reported_failed_come_back() {
    let (function, url) = Function::serve(FirstTime::Report("bad")).await;
    let (queue, trigger) = run("trigger_partial", &["good-1", "bad", "good-2"], &url).await;
    queue.drained(Duration::from_secs(30)).await;
    let first = &trigger.batches()[0];
    assert!(first.answered && first.messages.len() == 3, "{first:?}");
    assert_eq!((first.failed.len(), first.deleted), (1, 2), "{first:?}");
    for good in ["good-1", "good-2"] {
        assert_eq!(
            function.deliveries(good).len(),
            1,
            "{good} deleted once delivered"
        );
    }
    let counts: Vec<String> = function
        .deliveries("bad")
        .into_iter()
        .map(|d| d.receive_count)
        .collect();
    assert_eq!(counts, ["1", "2"]);
}

#[tokio::test]
async fn the_event_is_the_one_lambdas_sqs_trigger_builds() {
    use aws_sdk_sqs::primitives::Blob;
    use aws_sdk_sqs::types::{MessageAttributeValue, QueueAttributeName};
    let (function, url) = Function::serve(FirstTime::Succeed).await;
    let queue = TestQueue::create("trigger_event", 1, 5).await;
    let attribute = |data_type: &str| MessageAttributeValue::builder().data_type(data_type);
    let sent = sqs_client()
        .await
        .send_message()
        .queue_url(queue.url())
        .message_body(r#"{"kind":"recount"}"#)
        .message_attributes(
            "origin",
            attribute("String").string_value("test").build().unwrap(),
        )
        .message_attributes(
            "tries",
            attribute("Number").string_value("3").build().unwrap(),
        )
        .message_attributes(
            "raw",
            attribute("Binary")
                .binary_value(Blob::new(vec![0, 1, 2]))
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    let _trigger = Trigger::start(
        BIN,
        queue.url(),
        &["--endpoint", &url, "--visibility-timeout", "1"],
    );
    queue.drained(Duration::from_secs(30)).await;
    let arn = queue
        .queue
        .client()
        .get_queue_attributes()
        .queue_url(queue.url())
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .unwrap()
        .attributes
        .unwrap()[&QueueAttributeName::QueueArn]
        .clone();
    let events = function.events();
    assert_eq!(events.len(), 1, "{events:?}");
    let records = events[0]["Records"].as_array().unwrap();
    let record = &records[0];
    assert_eq!(record["messageId"], sent.message_id.unwrap());
    assert!(record["receiptHandle"]
        .as_str()
        .is_some_and(|r| !r.is_empty()));
    assert_eq!(record["body"], r#"{"kind":"recount"}"#);
    assert_eq!(record["md5OfBody"], sent.md5_of_message_body.unwrap());
    assert_eq!(
        record["md5OfMessageAttributes"],
        sent.md5_of_message_attributes.unwrap()
    );
    let attributes = &record["attributes"];
    assert_eq!(attributes["ApproximateReceiveCount"], "1");
    for name in ["SentTimestamp", "ApproximateFirstReceiveTimestamp"] {
        let ms: u64 = attributes[name].as_str().unwrap().parse().unwrap();
        assert!(
            ms > 1_700_000_000_000,
            "{name}: milliseconds since the epoch"
        );
    }
    assert!(attributes["SenderId"].is_string());
    let message_attributes = &record["messageAttributes"];
    assert_eq!(
        message_attributes["origin"],
        json!({"stringValue": "test", "binaryValue": null, "stringListValues": [],
               "binaryListValues": [], "dataType": "String"})
    );
    assert_eq!(message_attributes["tries"]["dataType"], "Number");
    assert_eq!(message_attributes["tries"]["stringValue"], "3");
    assert_eq!(message_attributes["raw"]["binaryValue"], "AAEC");
    assert_eq!(record["eventSource"], "aws:sqs");
    assert_eq!(record["eventSourceARN"], arn.as_str());
    assert_eq!(
        record["awsRegion"],
        feeds_testkit::services::var("AWS_REGION", "us-east-1")
    );
}

/// template.yaml, parsed.
fn template() -> Yaml {
    let text = std::fs::read_to_string(format!("{ROOT}/template.yaml")).unwrap();
    YamlLoader::load_from_str(&text).unwrap().remove(0)
}

/// A number of the template: a literal, or a `!Ref` (read as the parameter's name) to a parameter's
/// `Default`.
fn template_number(template: &Yaml, value: &Yaml) -> i64 {
    match value {
        Yaml::String(parameter) => template["Parameters"][parameter.as_str()]["Default"]
            .as_i64()
            .unwrap_or_else(|| panic!("parameter {parameter} has no numeric Default")),
        literal => literal.as_i64().unwrap_or_else(|| panic!("{literal:?}")),
    }
}

#[tokio::test]
async fn batches_hold_at_most_the_templates_batch_size() {
    let template = template();
    let batch_size = template["Resources"]["FanoutFunction"]["Properties"]["Events"]["FanoutJobs"]
        ["Properties"]["BatchSize"]
        .as_i64()
        .unwrap() as usize;
    let (function, url) = Function::serve(FirstTime::Succeed).await;
    let bodies: Vec<String> = (0..batch_size * 2 + 5)
        .map(|i| format!("job-{i}"))
        .collect();
    let refs: Vec<&str> = bodies.iter().map(String::as_str).collect();
    let (queue, trigger) = run("trigger_batch_size", &refs, &url).await;
    queue.drained(Duration::from_secs(30)).await;
    let sizes: Vec<usize> = trigger.batches().iter().map(|b| b.messages.len()).collect();
    assert_eq!(sizes.iter().max(), Some(&batch_size), "{sizes:?}");
    for body in &bodies {
        assert_eq!(function.deliveries(body).len(), 1, "{body}");
    }
}

#[tokio::test]
async fn the_queue_takes_the_templates_visibility_timeout_and_redrive_policy() {
    use aws_sdk_sqs::types::QueueAttributeName as Name;
    let template = template();
    let queue = &template["Resources"]["FanoutQueue"]["Properties"];
    let visibility = queue["VisibilityTimeout"].as_i64().unwrap();
    let max_receive_count = template_number(&template, &queue["RedrivePolicy"]["maxReceiveCount"]);

    // A queue that does not exist yet: the trigger creates it and its dead-letter queue.
    let name = unique("trigger_setup");
    let url = format!(
        "{}/000000000000/{name}",
        feeds_testkit::services::sqs_endpoint()
    );
    let (_function, endpoint) = Function::serve(FirstTime::Succeed).await;
    let trigger = Trigger::start(BIN, &url, &["--endpoint", &endpoint]);
    let settings = trigger.settings().unwrap();
    assert_eq!(settings["max_receive_count"], max_receive_count);
    let client = sqs_client().await;
    let attributes = |queue: String| {
        let client = client.clone();
        async move {
            client
                .get_queue_attributes()
                .queue_url(queue)
                .attribute_names(Name::All)
                .send()
                .await
                .unwrap()
                .attributes
                .unwrap()
        }
    };
    let dlq = attributes(format!("{url}-dlq")).await;
    let attributes = attributes(url.clone()).await;
    assert_eq!(attributes[&Name::VisibilityTimeout], visibility.to_string());
    let policy: Value = serde_json::from_str(&attributes[&Name::RedrivePolicy]).unwrap();
    assert_eq!(policy["maxReceiveCount"], max_receive_count);
    assert_eq!(policy["deadLetterTargetArn"], dlq[&Name::QueueArn].as_str());
    drop(trigger);
    for queue in [url.clone(), format!("{url}-dlq")] {
        client.delete_queue().queue_url(queue).send().await.unwrap();
    }
}

/// ElasticMQ's own configuration of the `fanout` queue (what the standalone server on SQS meets
/// before any trigger ran) agrees with the template.
#[test]
fn elasticmq_conf_agrees_with_the_template() {
    let conf = std::fs::read_to_string(format!("{ROOT}/etc/elasticmq.conf")).unwrap();
    let setting = |key: &str| -> i64 {
        let line = conf
            .lines()
            .map(str::trim)
            .find(|l| l.starts_with(key))
            .unwrap_or_else(|| panic!("etc/elasticmq.conf sets {key}"));
        let value = line[key.len()..].trim_start_matches([' ', '=']);
        value.split_whitespace().next().unwrap().parse().unwrap()
    };
    let template = template();
    let queue = &template["Resources"]["FanoutQueue"]["Properties"];
    assert_eq!(
        setting("defaultVisibilityTimeout"),
        queue["VisibilityTimeout"].as_i64().unwrap()
    );
    assert_eq!(
        setting("maxReceiveCount"),
        template_number(&template, &queue["RedrivePolicy"]["maxReceiveCount"])
    );
    assert!(
        conf.contains("name = \"fanout-dlq\""),
        "fanout dead-letters to fanout-dlq"
    );
}
