//! The Lambda Invoke API (`POST /2015-03-31/functions/{name}/invocations`) as the local runners
//! serve it, and what an answer means for the batch, by the rules AWS documents for an SQS event
//! source with `ReportBatchItemFailures`.
//!
//! How each runner reports a failed invocation (read from their sources and tried):
//! - AWS and `sam local start-lambda`: `200` with `X-Amz-Function-Error: Unhandled` and the error
//!   document; sam answers `200` with an empty body when it stopped the function at its timeout.
//! - `cargo lambda watch`: `500` with the error document (no header); `404` for a function it
//!   does not build. It knows nothing of the template's timeout.
//!
//! So the trigger keeps the function's timeout itself, and takes only a readable `200` as an answer.

use std::time::Duration;

use aws_lambda_events::event::sqs::SqsEvent;
use feeds::BoxError;
use serde_json::Value;

/// A client of one function of one Invoke API.
pub struct Invoker {
    http: reqwest::Client,
    url: String,
    timeout: Duration,
}

/// What the runner answered.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    /// `X-Amz-Function-Error`.
    pub function_error: Option<String>,
    pub body: Vec<u8>,
}

/// How an invocation ended, in the terms the event source mapping acts on.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The function answered: these messages failed, the others succeeded (and are deleted).
    Answered { failed: Vec<String> },
    /// The whole batch failed (a function error, a timeout, an answer that does not read, no
    /// runner): nothing is deleted, and every message comes back after the visibility timeout.
    BatchFailed(String),
}

/// Time the runner may take beyond the function's timeout before the trigger gives up: the local
/// runners add process start-up and queueing that Lambda does not count.
const GRACE: Duration = Duration::from_secs(2);

impl Invoker {
    /// `endpoint` is the runner's base URL (`http://127.0.0.1:9000`), `function` the name it
    /// serves the function under, `timeout` the function's.
    pub fn new(endpoint: &str, function: &str, timeout: Duration) -> Result<Self, BoxError> {
        let http = reqwest::Client::builder()
            .timeout(timeout + GRACE)
            .build()?;
        Ok(Invoker {
            http,
            url: format!(
                "{}/2015-03-31/functions/{function}/invocations",
                endpoint.trim_end_matches('/')
            ),
            timeout,
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// One synchronous invocation (`RequestResponse`) with `event`.
    pub async fn invoke(&self, event: &SqsEvent) -> Result<Reply, String> {
        let body = serde_json::to_vec(event).map_err(|e| e.to_string())?;
        let sent = self
            .http
            .post(&self.url)
            .header("X-Amz-Invocation-Type", "RequestResponse")
            .header("Content-Type", "application/json")
            .body(body)
            .send()
            .await;
        let read = match sent {
            Ok(response) => {
                let status = response.status().as_u16();
                let function_error = response
                    .headers()
                    .get("x-amz-function-error")
                    .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
                response.bytes().await.map(|body| Reply {
                    status,
                    function_error,
                    body: body.to_vec(),
                })
            }
            Err(e) => Err(e),
        };
        read.map_err(|e| {
            if e.is_timeout() {
                format!(
                    "no answer within the function's timeout ({:?})",
                    self.timeout
                )
            } else {
                format!("cannot invoke {}: {e}", self.url)
            }
        })
    }
}

/// What `reply` means for a batch of the messages `ids`.
pub fn outcome(reply: Result<Reply, String>, ids: &[&str], report_failures: bool) -> Outcome {
    let reply = match reply {
        Ok(reply) => reply,
        Err(why) => return Outcome::BatchFailed(why),
    };
    let text = String::from_utf8_lossy(&reply.body);
    if reply.status != 200 {
        return Outcome::BatchFailed(format!("the runner answered {}: {text}", reply.status));
    }
    if let Some(kind) = reply.function_error {
        return Outcome::BatchFailed(format!("function error ({kind}): {text}"));
    }
    if reply.body.is_empty() {
        return Outcome::BatchFailed(
            "an empty answer (sam local's, when it stopped the function at its timeout)".into(),
        );
    }
    if !report_failures {
        return Outcome::Answered { failed: Vec::new() };
    }
    match batch_item_failures(&text, ids) {
        Ok(failed) => Outcome::Answered { failed },
        Err(why) => Outcome::BatchFailed(format!("{why}: {text}")),
    }
}

/// The ids an `SqsBatchResponse` reports. Success: `null`, `{}`, or a null or empty
/// `batchItemFailures`. The whole batch fails on JSON that does not parse, or an item whose
/// `itemIdentifier` is missing, empty, or not a message of the batch.
fn batch_item_failures(text: &str, ids: &[&str]) -> Result<Vec<String>, String> {
    let answer: Value =
        serde_json::from_str(text).map_err(|e| format!("an answer that is not JSON ({e})"))?;
    let items = match &answer {
        Value::Null => return Ok(Vec::new()),
        Value::Object(fields) => match fields.get("batchItemFailures") {
            None | Some(Value::Null) => return Ok(Vec::new()),
            Some(Value::Array(items)) => items,
            Some(_) => return Err("batchItemFailures is not a list".into()),
        },
        _ => return Err("an answer that is not an SqsBatchResponse".into()),
    };
    items
        .iter()
        .map(|item| match item["itemIdentifier"].as_str() {
            Some(id) if ids.contains(&id) => Ok(id.to_owned()),
            _ => Err(format!(
                "a batch item failure that names no message of the batch: {item}"
            )),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(status: u16, function_error: Option<&str>, body: &str) -> Result<Reply, String> {
        Ok(Reply {
            status,
            function_error: function_error.map(str::to_owned),
            body: body.as_bytes().to_vec(),
        })
    }

    const IDS: &[&str] = &["a", "b"];

    fn failed(ids: &[&str]) -> Outcome {
        Outcome::Answered {
            failed: ids.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn the_reported_ids_fail_and_the_rest_succeed() {
        let answer = r#"{"batchItemFailures":[{"itemIdentifier":"b"}]}"#;
        assert_eq!(outcome(reply(200, None, answer), IDS, true), failed(&["b"]));
        for success in [
            r#"{"batchItemFailures":[]}"#,
            r#"{"batchItemFailures":null}"#,
            "{}",
            "null",
        ] {
            assert_eq!(
                outcome(reply(200, None, success), IDS, true),
                failed(&[]),
                "{success}"
            );
        }
    }

    #[test]
    fn an_answer_that_does_not_read_fails_the_whole_batch() {
        for bad in [
            "not json",
            r#"{"batchItemFailures":[{"itemIdentifier":""}]}"#,
            r#"{"batchItemFailures":[{"itemIdentifier":null}]}"#,
            r#"{"batchItemFailures":[{"itemId":"a"}]}"#,
            r#"{"batchItemFailures":[{"itemIdentifier":"c"}]}"#,
            r#"{"batchItemFailures":"a"}"#,
            r#""a""#,
        ] {
            assert!(
                matches!(
                    outcome(reply(200, None, bad), IDS, true),
                    Outcome::BatchFailed(_)
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn function_errors_and_timeouts_fail_the_whole_batch() {
        let error = r#"{"errorType":"Panic","errorMessage":"boom"}"#;
        for (what, answer) in [
            ("cargo lambda watch", reply(500, None, error)),
            ("sam local and AWS", reply(200, Some("Unhandled"), error)),
            ("sam local's timeout", reply(200, None, "")),
            ("no such function", reply(404, None, "{}")),
            (
                "no answer",
                Err("no answer within the function's timeout".into()),
            ),
        ] {
            assert!(
                matches!(outcome(answer, IDS, true), Outcome::BatchFailed(_)),
                "{what}"
            );
        }
    }

    #[test]
    fn without_report_batch_item_failures_an_answer_is_success() {
        let answer = r#"{"batchItemFailures":[{"itemIdentifier":"b"}]}"#;
        assert_eq!(outcome(reply(200, None, answer), IDS, false), failed(&[]));
    }
}
