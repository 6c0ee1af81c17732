//! One trace per piece of work. A request's trace context (a W3C `traceparent`, on AWS the X-Ray
//! trace header, a request id, and when the request arrived) travels beside every fan-out message
//! the request enqueues, and beside every message those enqueue in turn (the next chunk of a
//! follower list, a purge, a recount): SQS carries it in message attributes, the embedded queue in
//! a column. Each request and each message runs [`within`] its context: every log line of the work
//! carries the trace id and the request id, and every message it sends carries the context on.

use std::future::Future;

use serde::{Deserialize, Serialize};
use tracing::Instrument;

/// What a request or a queued message carries of a trace; any part may be missing (a message
/// sent by an earlier release carries nothing).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Carrier {
    /// W3C `traceparent`: `00-<trace id>-<parent span id>-<flags>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    /// The X-Ray trace header (`Root=1-…;Parent=…;Sampled=…`), passed on as received: SQS takes
    /// only a well-formed one as `AWSTraceHeader`, so none is ever made up here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aws_trace_header: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// When the request that began the work arrived, in milliseconds since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin_ms: Option<i64>,
}

/// The trace of the work under way: a request, or one queued message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    /// 32 lowercase hex digits, shared by everything the first request caused.
    pub trace_id: String,
    /// 16 lowercase hex digits naming this request or message; what it sends names it as parent.
    pub span_id: String,
    pub sampled: bool,
    pub request_id: String,
    pub aws_trace_header: Option<String>,
    pub origin_ms: Option<i64>,
}

impl Carrier {
    /// The context of work that continues this carrier: its trace (from `traceparent`, else from
    /// the X-Ray header, else a new one), its request id (else a new one), a span of its own.
    pub fn start(&self) -> TraceContext {
        let xray = self.aws_trace_header.as_deref().and_then(parse_xray);
        let (trace_id, sampled) = self
            .traceparent
            .as_deref()
            .and_then(parse_traceparent)
            .or_else(|| xray.clone())
            .unwrap_or_else(|| (format!("{:032x}", nonzero_u128()), false));
        let request_id = self
            .request_id
            .as_deref()
            .filter(|id| is_request_id(id))
            .map_or_else(|| format!("{:032x}", nonzero_u128()), str::to_owned);
        TraceContext {
            trace_id,
            span_id: new_span_id(),
            sampled,
            request_id,
            aws_trace_header: xray.and(self.aws_trace_header.clone()),
            origin_ms: self.origin_ms,
        }
    }
}

impl TraceContext {
    /// `traceparent` naming this work as the parent of what it sends.
    pub fn traceparent(&self) -> String {
        let flags = if self.sampled { "01" } else { "00" };
        format!("00-{}-{}-{flags}", self.trace_id, self.span_id)
    }

    /// What a message this work sends carries.
    pub fn carrier(&self) -> Carrier {
        Carrier {
            traceparent: Some(self.traceparent()),
            aws_trace_header: self.aws_trace_header.clone(),
            request_id: Some(self.request_id.clone()),
            origin_ms: self.origin_ms,
        }
    }

    /// Milliseconds from the first request's arrival until now, when it is known.
    pub fn age_ms(&self) -> Option<i64> {
        self.origin_ms
            .map(|origin| (chrono::Utc::now().timestamp_millis() - origin).max(0))
    }
}

tokio::task_local! {
    static CURRENT: TraceContext;
}

/// Runs `work` as part of `context`: [`current`] answers it, and every log line of the work
/// carries its trace id and request id.
pub fn within<F: Future>(context: TraceContext, work: F) -> impl Future<Output = F::Output> {
    // At error level, so that whatever level the filter lets through carries the trace.
    let span = tracing::error_span!(
        "trace",
        trace_id = %context.trace_id,
        span_id = %context.span_id,
        request_id = %context.request_id,
    );
    CURRENT.scope(context, work.instrument(span))
}

/// The trace of the work under way, outside any: `None`.
pub fn current() -> Option<TraceContext> {
    CURRENT.try_with(TraceContext::clone).ok()
}

fn nonzero_u128() -> u128 {
    rand::random::<u128>().max(1)
}

fn new_span_id() -> String {
    format!("{:016x}", rand::random::<u64>().max(1))
}

fn is_hex(text: &str, len: usize) -> bool {
    text.len() == len && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A request id worth keeping: 1 to 128 visible ASCII characters.
fn is_request_id(id: &str) -> bool {
    (1..=128).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_graphic())
}

/// The trace id and sampled flag of a W3C `traceparent` (version 00, or a later one read as 00).
fn parse_traceparent(header: &str) -> Option<(String, bool)> {
    let header = header.trim();
    let mut parts = header.split('-');
    let (version, trace, parent, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let later_version = is_hex(version, 2) && version != "00" && version != "ff";
    if !(version == "00" && parts.next().is_none() || later_version) {
        return None;
    }
    let zero = |s: &str| s.bytes().all(|b| b == b'0');
    if !is_hex(trace, 32) || zero(trace) || !is_hex(parent, 16) || zero(parent) {
        return None;
    }
    if !is_hex(flags, 2) {
        return None;
    }
    let sampled = u8::from_str_radix(flags, 16).ok()? & 1 == 1;
    Some((trace.to_owned(), sampled))
}

/// The trace id (the X-Ray root's 8 + 24 hex digits) and sampled flag of an X-Ray trace header.
fn parse_xray(header: &str) -> Option<(String, bool)> {
    let mut root = None;
    let mut sampled = false;
    for field in header.split(';') {
        match field.trim().split_once('=') {
            Some(("Root", value)) => {
                let mut parts = value.split('-');
                let (version, time, random) = (parts.next()?, parts.next()?, parts.next()?);
                let hex = |s: &str, n| is_hex(&s.to_ascii_lowercase(), n);
                if version != "1" || parts.next().is_some() || !hex(time, 8) || !hex(random, 24) {
                    return None;
                }
                root = Some(format!("{time}{random}").to_ascii_lowercase());
            }
            Some(("Sampled", value)) => sampled = value == "1",
            _ => {}
        }
    }
    Some((root?, sampled))
}

#[cfg(test)]
mod tests {
    use super::*;

    const XRAY: &str = "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1";

    #[test]
    fn traceparent_is_continued_and_malformed_ones_are_replaced() {
        let incoming = Carrier {
            traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
            request_id: Some("req-1".into()),
            origin_ms: Some(42),
            ..Default::default()
        };
        let ctx = incoming.start();
        assert_eq!(ctx.trace_id, "0af7651916cd43dd8448eb211c80319c");
        assert!(ctx.sampled);
        assert_eq!(ctx.request_id, "req-1");
        assert_ne!(
            ctx.span_id, "b7ad6b7169203331",
            "the work has a span of its own"
        );
        let out = ctx.carrier();
        assert_eq!(
            out.traceparent.unwrap(),
            format!("00-0af7651916cd43dd8448eb211c80319c-{}-01", ctx.span_id)
        );
        assert_eq!(out.origin_ms, Some(42));
        // The carried context starts the same trace again.
        assert_eq!(ctx.carrier().start().trace_id, ctx.trace_id);

        for bad in [
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
            "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b71692033-01",
            "garbage",
        ] {
            let ctx = Carrier {
                traceparent: Some(bad.into()),
                request_id: Some("bad id with spaces".into()),
                ..Default::default()
            }
            .start();
            assert_ne!(ctx.trace_id, "0af7651916cd43dd8448eb211c80319c", "{bad}");
            assert!(
                is_hex(&ctx.trace_id, 32) && is_hex(&ctx.request_id, 32),
                "{bad}"
            );
        }
        // A later version is read as version 00, extra fields ignored.
        let later = "cc-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00-what";
        assert!(!parse_traceparent(later).unwrap().1);
    }

    #[test]
    fn the_xray_header_gives_the_trace_and_is_passed_on_as_it_came() {
        let ctx = Carrier {
            aws_trace_header: Some(XRAY.into()),
            ..Default::default()
        }
        .start();
        assert_eq!(ctx.trace_id, "5759e988bd862e3fe1be46a994272793");
        assert!(ctx.sampled);
        assert_eq!(ctx.carrier().aws_trace_header.as_deref(), Some(XRAY));
        // traceparent wins for the trace id; the X-Ray header still travels.
        let both = Carrier {
            traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00".into()),
            aws_trace_header: Some(XRAY.into()),
            ..Default::default()
        }
        .start();
        assert_eq!(both.trace_id, "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(both.aws_trace_header.as_deref(), Some(XRAY));
        // A malformed header is not passed on (SQS would refuse the message).
        let bad = Carrier {
            aws_trace_header: Some("Root=1-xyz;Sampled=1".into()),
            ..Default::default()
        }
        .start();
        assert_eq!(bad.aws_trace_header, None);
        assert_eq!(
            parse_xray("Sampled=0;Root=1-5759E988-BD862E3FE1BE46A994272793;Lineage=a:1"),
            Some(("5759e988bd862e3fe1be46a994272793".into(), false))
        );
    }

    #[test]
    fn the_carrier_reads_back_what_it_wrote_and_what_older_rows_lack() {
        let ctx = Carrier::default().start();
        let json = serde_json::to_string(&ctx.carrier()).unwrap();
        let back: Carrier = serde_json::from_str(&json).unwrap();
        assert_eq!(back, ctx.carrier());
        assert_eq!(
            serde_json::from_str::<Carrier>("{}").unwrap(),
            Carrier::default()
        );
    }

    #[tokio::test]
    async fn within_sets_the_current_trace() {
        assert!(current().is_none());
        let ctx = Carrier::default().start();
        let seen = within(ctx.clone(), async { current() }).await;
        assert_eq!(seen, Some(ctx));
        assert!(current().is_none());
    }
}
