//! What the HTTP edge does for traces and metrics: each request runs within its trace context, and
//! each feed read is timed.

use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;

use crate::metrics;
use crate::trace::{self, Carrier};

/// The response header naming the request's id, so that a client can find its logs.
const REQUEST_ID: &str = "x-request-id";

/// Runs the request within its trace: the caller's `traceparent`, else the X-Ray header and
/// API Gateway's request id (a [`Carrier`] the Lambda entry put in the extensions), else new
/// ones; the caller's `x-request-id` when API Gateway gave none. Answers the request id.
pub(super) async fn traced(request: Request, next: Next) -> Response {
    let carrier = {
        // In a block: a borrow of the request (whose body is not `Sync`) must not live across
        // an await.
        let header = |name: &str| {
            request
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let mut carrier = request
            .extensions()
            .get::<Carrier>()
            .cloned()
            .unwrap_or_default();
        carrier.traceparent = header("traceparent");
        carrier.request_id = carrier.request_id.or_else(|| header(REQUEST_ID));
        carrier.origin_ms = Some(chrono::Utc::now().timestamp_millis());
        carrier
    };
    let context = carrier.start();
    let request_id = HeaderValue::from_str(&context.request_id).ok();
    let (method, path) = (request.method().clone(), request.uri().path().to_owned());
    let work = async move {
        // Made inside the trace's span, so that it is its child.
        let span = tracing::info_span!("request", %method, %path);
        next.run(request).instrument(span).await
    };
    let mut response = trace::within(context, work).await;
    if let Some(id) = request_id {
        response.headers_mut().insert(REQUEST_ID, id);
    }
    response
}

/// Records the latency of a read of `feed`.
pub(super) async fn timed(
    State(feed): State<&'static str>,
    request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let response = next.run(request).await;
    metrics::read_latency(feed, started.elapsed(), response.status().as_u16());
    response
}
