//! What the trigger takes from the SAM template: the one function with an SQS event, the event's
//! settings, the function's timeout, and the queue's visibility timeout and redrive policy, each
//! with the default AWS documents when the template leaves it out.

use std::path::Path;
use std::time::Duration;

use feeds::BoxError;
use yaml_rust2::{Yaml, YamlLoader};

/// An SQS event source mapping as the template declares it.
#[derive(Debug, Clone, PartialEq)]
pub struct EventSource {
    /// The function's logical id (`FanoutFunction`): the name `sam local start-lambda` serves.
    pub function_id: String,
    /// `Metadata.BuildProperties.Binary` (`fanout`): the name `cargo lambda watch` serves.
    pub binary: Option<String>,
    /// The function's `Timeout` (its own, else `Globals.Function`, else 3 s).
    pub timeout: Duration,
    /// `BatchSize` (default 10).
    pub batch_size: usize,
    /// `MaximumBatchingWindowInSeconds` (default 0: a batch is what one receive returns).
    pub batching_window: Duration,
    /// `FunctionResponseTypes` holds `ReportBatchItemFailures`.
    pub report_batch_item_failures: bool,
    pub queue: QueueSpec,
}

/// The queue the event reads, as `AWS::SQS::Queue` declares it.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueSpec {
    pub logical_id: String,
    /// `VisibilityTimeout` in seconds (default 30).
    pub visibility_timeout: u32,
    /// `RedrivePolicy.maxReceiveCount`, when the queue has a dead-letter queue.
    pub max_receive_count: Option<u32>,
}

/// Reads `path`.
pub fn read(path: &Path) -> Result<EventSource, BoxError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    parse(&text).map_err(|e| format!("{}: {e}", path.display()).into())
}

/// The template's one SQS event source.
pub fn parse(text: &str) -> Result<EventSource, String> {
    let docs = YamlLoader::load_from_str(text).map_err(|e| e.to_string())?;
    let doc = docs.first().ok_or("an empty document")?;
    let resources = doc["Resources"].as_hash().ok_or("no Resources")?;
    let mut found = Vec::new();
    for (id, resource) in resources {
        if resource["Type"].as_str() != Some("AWS::Serverless::Function") {
            continue;
        }
        let Some(events) = resource["Properties"]["Events"].as_hash() else {
            continue;
        };
        for event in events.values() {
            if event["Type"].as_str() == Some("SQS") {
                found.push((
                    id.as_str().unwrap_or_default(),
                    resource,
                    &event["Properties"],
                ));
            }
        }
    }
    let [(function_id, function, event)] = found[..] else {
        return Err(format!(
            "expected one function with an SQS event, found {}",
            found.len()
        ));
    };
    let params = &doc["Parameters"];
    let number = |value: &Yaml, default: u32| number(params, value, default);
    let timeout = seconds(
        params,
        &function["Properties"]["Timeout"],
        &doc["Globals"]["Function"]["Timeout"],
        3,
    )
    .map_err(|e| format!("{function_id} Timeout: {e}"))?;
    let batch_size = number(&event["BatchSize"], 10).map_err(|e| format!("BatchSize: {e}"))?;
    let window = number(&event["MaximumBatchingWindowInSeconds"], 0)
        .map_err(|e| format!("MaximumBatchingWindowInSeconds: {e}"))?;
    if batch_size == 0 || (batch_size > 10 && window == 0) {
        return Err(format!(
            "BatchSize {batch_size}: 1 to 10, or more with MaximumBatchingWindowInSeconds"
        ));
    }
    let report_batch_item_failures = event["FunctionResponseTypes"]
        .as_vec()
        .is_some_and(|types| {
            types
                .iter()
                .any(|t| t.as_str() == Some("ReportBatchItemFailures"))
        });
    let queue_id =
        get_att_arn(&event["Queue"]).ok_or("the SQS event's Queue is not `!GetAtt <queue>.Arn`")?;
    let queue = &doc["Resources"][queue_id];
    if queue["Type"].as_str() != Some("AWS::SQS::Queue") {
        return Err(format!("{queue_id} is not an AWS::SQS::Queue"));
    }
    let properties = &queue["Properties"];
    let visibility_timeout = number(&properties["VisibilityTimeout"], 30)
        .map_err(|e| format!("{queue_id} VisibilityTimeout: {e}"))?;
    let redrive = &properties["RedrivePolicy"];
    let max_receive_count = match redrive {
        Yaml::BadValue => None,
        _ => Some(
            number(&redrive["maxReceiveCount"], 0)
                .ok()
                .filter(|n| *n > 0)
                .ok_or(format!("{queue_id} RedrivePolicy: no maxReceiveCount"))?,
        ),
    };
    Ok(EventSource {
        function_id: function_id.to_owned(),
        binary: function["Metadata"]["BuildProperties"]["Binary"]
            .as_str()
            .map(str::to_owned),
        timeout: Duration::from_secs(timeout as u64),
        batch_size: batch_size as usize,
        batching_window: Duration::from_secs(window as u64),
        report_batch_item_failures,
        queue: QueueSpec {
            logical_id: queue_id.to_owned(),
            visibility_timeout,
            max_receive_count,
        },
    })
}

/// A whole number, or `default` when absent: a literal, or a `!Ref` to a parameter ([`resolve`]).
fn number(params: &Yaml, value: &Yaml, default: u32) -> Result<u32, String> {
    match resolve(params, value)? {
        Yaml::BadValue => Ok(default),
        Yaml::Integer(n) => u32::try_from(*n).map_err(|_| format!("{n} is out of range")),
        // JSON-style templates quote numbers (`"5"`), as RedrivePolicy examples often do.
        Yaml::String(s) => s
            .parse()
            .map_err(|_| format!("expected a literal number, got {s:?}")),
        other => Err(format!("expected a literal number, got {other:?}")),
    }
}

/// `value`, or for a `!Ref` (read as the parameter's name: the YAML reader drops the tag) that
/// parameter's `Default`, what a deployment without overrides gets; a parameter without one is
/// refused.
fn resolve<'a>(params: &'a Yaml, value: &'a Yaml) -> Result<&'a Yaml, String> {
    match value {
        Yaml::String(s) if s.parse::<u32>().is_err() => match &params[s.as_str()]["Default"] {
            Yaml::BadValue => Err(format!(
                "expected a literal number or a parameter with a Default, got {s:?}"
            )),
            default => Ok(default),
        },
        other => Ok(other),
    }
}

/// `own`, else `global`, else `default`.
fn seconds(params: &Yaml, own: &Yaml, global: &Yaml, default: u32) -> Result<u32, String> {
    match own {
        Yaml::BadValue => number(params, global, default),
        _ => number(params, own, default),
    }
}

/// The logical id in `!GetAtt X.Arn` (read as the text `X.Arn`) or `Fn::GetAtt: [X, Arn]`.
fn get_att_arn(value: &Yaml) -> Option<&str> {
    if let Some(text) = value.as_str() {
        return text.strip_suffix(".Arn");
    }
    match value["Fn::GetAtt"].as_vec()?.as_slice() {
        [id, attribute] if attribute.as_str() == Some("Arn") => id.as_str(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_fanout_event_source_of_the_template() {
        let text = include_str!("../../../template.yaml");
        let source = parse(text).unwrap();
        assert_eq!(source.function_id, "FanoutFunction");
        assert_eq!(source.binary.as_deref(), Some("fanout"));
        assert_eq!(source.queue.logical_id, "FanoutQueue");
        assert!(source.report_batch_item_failures);
        // The values themselves are the template's to change; they must be what AWS accepts.
        assert!((1..=10).contains(&source.batch_size));
        assert!(source.queue.max_receive_count.is_some());
        assert!(
            u64::from(source.queue.visibility_timeout) >= source.timeout.as_secs(),
            "a visibility timeout shorter than the function's timeout redelivers running batches"
        );
    }

    const MINIMAL: &str = r#"
Globals:
  Function:
    Timeout: 12
Resources:
  Worker:
    Type: AWS::Serverless::Function
    Properties:
      Events:
        Jobs:
          Type: SQS
          Properties:
            Queue:
              Fn::GetAtt: [Jobs, Arn]
  Jobs:
    Type: AWS::SQS::Queue
    Properties:
      RedrivePolicy:
        deadLetterTargetArn: !GetAtt Dead.Arn
        maxReceiveCount: "3"
"#;

    #[test]
    fn what_the_template_leaves_out_takes_the_aws_default() {
        let source = parse(MINIMAL).unwrap();
        assert_eq!(source.function_id, "Worker");
        assert_eq!(source.binary, None);
        assert_eq!(source.timeout, Duration::from_secs(12), "Globals' Timeout");
        assert_eq!(source.batch_size, 10);
        assert_eq!(source.batching_window, Duration::ZERO);
        assert!(!source.report_batch_item_failures);
        assert_eq!(source.queue.visibility_timeout, 30);
        assert_eq!(source.queue.max_receive_count, Some(3));
    }

    #[test]
    fn values_the_trigger_cannot_resolve_are_refused() {
        let parameter = MINIMAL.replace("Timeout: 12", "Timeout: !Ref FunctionTimeout");
        assert!(parse(&parameter).unwrap_err().contains("Timeout"));
        let defaulted = format!(
            "Parameters:\n  FunctionTimeout:\n    Type: Number\n    Default: 40\n{parameter}"
        );
        assert_eq!(parse(&defaulted).unwrap().timeout, Duration::from_secs(40));
        let no_default = defaulted.replace("    Default: 40\n", "");
        assert!(parse(&no_default).unwrap_err().contains("FunctionTimeout"));
        let big = MINIMAL.replace(
            "            Queue:",
            "            BatchSize: 100\n            Queue:",
        );
        assert!(parse(&big).unwrap_err().contains("BatchSize 100"));
        let two = MINIMAL.replace("  Jobs:\n    Type: AWS::SQS::Queue", "  Other:\n    Type: AWS::Serverless::Function\n    Properties:\n      Events:\n        E:\n          Type: SQS\n  Jobs:\n    Type: AWS::SQS::Queue");
        assert!(parse(&two).unwrap_err().contains("found 2"));
    }
}
