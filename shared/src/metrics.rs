//! Metrics in CloudWatch's embedded metric format (EMF): each measurement is one JSON line on
//! standard output, which CloudWatch Logs turns into metrics (a Lambda function's output goes
//! there; the CloudWatch agent does the same for a server). Written directly rather than through
//! the `metrics` facade: a handful of metrics need no registry, and each line also carries the
//! trace of the work it measures, so a slow delivery leads to its log lines.
//!
//! - `FanoutChunks` (Count), `FanoutRows` (Count): per fan-out message, the rows it wrote into
//!   feeds; the message's kind is a property.
//! - `DeliveryLag` (Seconds): from the post's request to the end of the chunk that reached the
//!   end of its follower list, once per fanned-out post.
//! - `DeadLettered` (Count): messages that failed at their last receive, which the queue moves to
//!   its dead-letter queue (or table).
//! - `ReadLatency` (Milliseconds), by `Feed` (`flat`, `aggregated`, `user`, `notification`).

use std::io::Write;
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::{json, Map, Value};

use crate::settings::{Env, SettingsError};
use crate::trace;

/// Where metrics go, read once at start-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsSettings {
    /// `FEEDS_METRICS=emf|off`; by default EMF in Lambda, off elsewhere.
    pub emf: bool,
    /// `FEEDS_METRICS_NAMESPACE` (default `Feeds`).
    pub namespace: String,
}

impl MetricsSettings {
    pub fn read(env: &Env) -> Result<Self, SettingsError> {
        let in_lambda = env.get("AWS_LAMBDA_FUNCTION_NAME")?.is_some();
        let emf = match env.get("FEEDS_METRICS")?.as_deref() {
            None => in_lambda,
            Some("emf") => true,
            Some("off") => false,
            Some(other) => {
                return Err(SettingsError::expected(
                    "FEEDS_METRICS",
                    "emf or off",
                    other,
                ))
            }
        };
        Ok(MetricsSettings {
            emf,
            namespace: env.string_or("FEEDS_METRICS_NAMESPACE", "Feeds")?,
        })
    }
}

static SINK: OnceLock<MetricsSettings> = OnceLock::new();

/// Sends metrics as `settings` says from now on (the first call wins; none: no metrics).
pub fn init(settings: &MetricsSettings) {
    let _ = SINK.set(settings.clone());
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Count,
    Milliseconds,
    Seconds,
}

impl Unit {
    fn name(self) -> &'static str {
        match self {
            Unit::Count => "Count",
            Unit::Milliseconds => "Milliseconds",
            Unit::Seconds => "Seconds",
        }
    }
}

/// One EMF document: values of metrics sharing one set of dimensions, and properties that are
/// only searchable in the logs.
#[derive(Debug, Clone, Default)]
pub struct Emf {
    pub dimensions: Vec<(&'static str, String)>,
    pub values: Vec<(&'static str, Unit, f64)>,
    pub properties: Vec<(&'static str, Value)>,
}

impl Emf {
    /// The document as one line, in `namespace`, stamped `timestamp_ms`.
    pub fn line(&self, namespace: &str, timestamp_ms: i64) -> String {
        let keys: Vec<&str> = self.dimensions.iter().map(|(k, _)| *k).collect();
        let definitions: Vec<Value> = self
            .values
            .iter()
            .map(|(name, unit, _)| json!({"Name": name, "Unit": unit.name()}))
            .collect();
        let mut root = Map::new();
        root.insert(
            "_aws".into(),
            json!({
                "Timestamp": timestamp_ms,
                "CloudWatchMetrics": [{
                    "Namespace": namespace,
                    "Dimensions": [keys],
                    "Metrics": definitions,
                }],
            }),
        );
        for (key, value) in &self.properties {
            root.insert((*key).into(), value.clone());
        }
        for (key, value) in &self.dimensions {
            root.insert((*key).into(), json!(value));
        }
        for (name, _, value) in &self.values {
            root.insert((*name).into(), json!(value));
        }
        Value::Object(root).to_string()
    }

    /// With the trace of the work under way, when there is one.
    fn traced(mut self) -> Self {
        if let Some(t) = trace::current() {
            self.properties.push(("trace_id", json!(t.trace_id)));
            self.properties.push(("request_id", json!(t.request_id)));
        }
        self
    }

    /// Writes the document to standard output, when metrics are on.
    fn emit(self) {
        let Some(settings) = SINK.get().filter(|s| s.emf) else {
            return;
        };
        let line = self
            .traced()
            .line(&settings.namespace, chrono::Utc::now().timestamp_millis());
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
    }
}

/// One fan-out message of `kind` that wrote `rows` rows; `lag`: the post's delivery lag, at the
/// chunk that ended its delivery.
pub fn fanout_chunk(kind: &'static str, rows: usize, lag: Option<Duration>) {
    fanout_chunk_document(kind, rows, lag).emit()
}

fn fanout_chunk_document(kind: &'static str, rows: usize, lag: Option<Duration>) -> Emf {
    let mut values = vec![
        ("FanoutChunks", Unit::Count, 1.0),
        ("FanoutRows", Unit::Count, rows as f64),
    ];
    if let Some(lag) = lag {
        values.push(("DeliveryLag", Unit::Seconds, lag.as_secs_f64()));
    }
    Emf {
        values,
        properties: vec![("kind", json!(kind))],
        ..Default::default()
    }
}

/// A message that failed at its last receive: the queue dead-letters it.
pub fn dead_lettered(message_id: &str) {
    Emf {
        values: vec![("DeadLettered", Unit::Count, 1.0)],
        properties: vec![("message_id", json!(message_id))],
        ..Default::default()
    }
    .emit()
}

/// A read of `feed` that took `elapsed` and answered `status`.
pub fn read_latency(feed: &'static str, elapsed: Duration, status: u16) {
    Emf {
        dimensions: vec![("Feed", feed.to_owned())],
        values: vec![(
            "ReadLatency",
            Unit::Milliseconds,
            elapsed.as_secs_f64() * 1000.0,
        )],
        properties: vec![("status", json!(status))],
    }
    .emit()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_emitted_line_is_an_emf_document() {
        let doc = fanout_chunk_document("deliver", 25, Some(Duration::from_millis(1500)));
        let line = doc.line("Feeds/test", 1_796_000_000_123);
        assert!(!line.contains('\n'));
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["_aws"]["Timestamp"], 1_796_000_000_123i64);
        let directive = &v["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(directive["Namespace"], "Feeds/test");
        assert_eq!(directive["Dimensions"], json!([[]]), "no dimensions");
        assert_eq!(
            directive["Metrics"],
            json!([
                {"Name": "FanoutChunks", "Unit": "Count"},
                {"Name": "FanoutRows", "Unit": "Count"},
                {"Name": "DeliveryLag", "Unit": "Seconds"},
            ])
        );
        // Every metric the directive names is a number at the root.
        assert_eq!(v["FanoutChunks"], 1.0);
        assert_eq!(v["FanoutRows"], 25.0);
        assert_eq!(v["DeliveryLag"], 1.5);
        assert_eq!(v["kind"], "deliver");

        let read = Emf {
            dimensions: vec![("Feed", "flat".into())],
            values: vec![("ReadLatency", Unit::Milliseconds, 12.5)],
            properties: vec![("status", json!(200))],
        };
        let v: Value = serde_json::from_str(&read.line("Feeds", 1)).unwrap();
        let directive = &v["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(directive["Dimensions"], json!([["Feed"]]));
        assert_eq!(v["Feed"], "flat", "each dimension's value is at the root");
        assert_eq!(v["ReadLatency"], 12.5);
    }

    #[test]
    fn settings_default_to_emf_in_lambda_only() {
        let read =
            |pairs: &[(&str, &str)]| MetricsSettings::read(&Env::from_pairs(pairs.iter().copied()));
        assert!(!read(&[]).unwrap().emf);
        assert!(read(&[("AWS_LAMBDA_FUNCTION_NAME", "fanout")]).unwrap().emf);
        assert!(
            !read(&[("AWS_LAMBDA_FUNCTION_NAME", "f"), ("FEEDS_METRICS", "off")])
                .unwrap()
                .emf
        );
        assert_eq!(read(&[]).unwrap().namespace, "Feeds");
        assert_eq!(
            read(&[("FEEDS_METRICS", "statsd")]).unwrap_err().variable,
            "FEEDS_METRICS"
        );
    }

    #[tokio::test]
    async fn a_document_carries_the_trace_of_its_work() {
        let ctx = trace::Carrier::default().start();
        let doc = trace::within(ctx.clone(), async { Emf::default().traced() }).await;
        let v: Value = serde_json::from_str(&doc.line("Feeds", 1)).unwrap();
        assert_eq!(v["trace_id"], ctx.trace_id.as_str());
        assert_eq!(v["request_id"], ctx.request_id.as_str());
    }
}
