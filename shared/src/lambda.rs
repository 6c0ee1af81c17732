//! The Lambda entry points: each function's `main` is one call to these. The SQS event adapter of
//! the fan-out function and the WebSocket event handler of the realtime function live here too,
//! beside the other Lambda entry code.

use std::sync::Arc;

use aws_lambda_events::encodings::Body;
use aws_lambda_events::event::apigw::{ApiGatewayProxyResponse, ApiGatewayWebsocketProxyRequest};
use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent, SqsMessage};
use axum::extract::Request;
use lambda_http::request::RequestContext;
use lambda_http::RequestExt;
use lambda_runtime::{service_fn, LambdaEvent};

use crate::auth::Verifier;
use crate::config::{self, Backends, Defaults};
use crate::fanout::Fanout;
use crate::http::{router, ApiError, Routes};
use crate::queue::{sqs, QueueMessage};
use crate::realtime;
use crate::store::{Connection, Store};
use crate::trace::Carrier;
use crate::BoxError;

/// Serves `routes` through API Gateway's HTTP API events; clients are built once, before the first event.
pub async fn run_http(routes: Routes) -> Result<(), BoxError> {
    let settings = config::start(Defaults::AWS)?;
    let backends = Backends::open(&settings).await?;
    let app = router(config::app(&settings, &backends)?, routes)
        .layer(axum::middleware::map_request(with_aws_trace));
    lambda_http::run(app).await
}

/// Hands the router's trace layer what Lambda knows of the request: API Gateway's request id and
/// the invocation's X-Ray trace header (`Tracing: Active`).
async fn with_aws_trace(mut request: Request) -> Request {
    let request_id = match request.request_context_ref() {
        Some(RequestContext::ApiGatewayV2(context)) => context.request_id.clone(),
        _ => None,
    };
    let aws_trace_header = request
        .lambda_context_ref()
        .and_then(|context| context.xray_trace_id.clone());
    request.extensions_mut().insert(Carrier {
        request_id,
        aws_trace_header,
        ..Default::default()
    });
    request
}

/// Runs the SQS-triggered fan-out function, answering partial batch failures; it pushes realtime
/// messages through the WebSocket API whose callback URL `FEEDS_REALTIME_CALLBACK_URL` names.
pub async fn run_fanout() -> Result<(), BoxError> {
    let settings = config::start(Defaults::AWS)?;
    let fanout = Backends::open(&settings).await?.fanout;
    let fanout = match &settings.realtime_callback_url {
        #[cfg(feature = "apigw")]
        Some(url) => {
            let api = realtime::apigw::ManagementApi::new(url).await;
            fanout.with_realtime(Arc::new(api))
        }
        #[cfg(not(feature = "apigw"))]
        Some(_) => {
            return Err(
                "FEEDS_REALTIME_CALLBACK_URL: this build cannot post to API Gateway \
                        (feature `apigw`)"
                    .into(),
            )
        }
        None => fanout,
    };
    lambda_runtime::run(service_fn(move |event: LambdaEvent<SqsEvent>| {
        let fanout = fanout.clone();
        async move { Ok::<_, BoxError>(handle_sqs_event(&fanout, event.payload).await) }
    }))
    .await
}

/// The fan-out function's body: an SQS event in, the ids of the messages that failed out, so that
/// only they are redelivered (`ReportBatchItemFailures`).
pub async fn handle_sqs_event(fanout: &Fanout, event: SqsEvent) -> SqsBatchResponse {
    let messages: Vec<QueueMessage> = event.records.into_iter().map(queue_message).collect();
    let failed = fanout.run_batch(&messages).await;
    tracing::info!(
        received = messages.len(),
        failed = failed.len(),
        "fan-out batch done"
    );
    let mut response = SqsBatchResponse::default();
    response.batch_item_failures = failed
        .into_iter()
        .map(|id| {
            let mut failure = BatchItemFailure::default();
            failure.item_identifier = id;
            failure
        })
        .collect();
    response
}

/// Runs the realtime function: the WebSocket API's `$connect`, `$disconnect` and `$default`
/// routes. It needs the store only.
pub async fn run_realtime() -> Result<(), BoxError> {
    let settings = config::start(Defaults::AWS)?;
    let store = config::open_store(&settings).await?;
    let verifier = Arc::new(Verifier::new(&settings.auth)?);
    lambda_runtime::run(service_fn(
        move |event: LambdaEvent<ApiGatewayWebsocketProxyRequest>| {
            let (store, verifier) = (store.clone(), verifier.clone());
            async move {
                let answer = handle_websocket_event(store.as_ref(), &verifier, event.payload).await;
                Ok::<_, BoxError>(answer)
            }
        },
    ))
    .await
}

/// The realtime function's body. `$connect` authenticates as `GET /realtime` does (the
/// `Authorization` header, else `?token=`): any answer but 200 refuses the connection, so a bad
/// or missing token is 401; then it records the connection. `$disconnect` forgets it. `$default`
/// (whatever a client sends) answers nothing.
pub async fn handle_websocket_event(
    store: &dyn Store,
    verifier: &Verifier,
    event: ApiGatewayWebsocketProxyRequest,
) -> ApiGatewayProxyResponse {
    let context = &event.request_context;
    let id = context.connection_id.clone().unwrap_or_default();
    match context.route_key.as_deref() {
        Some("$connect") => {
            let header = event
                .headers
                .get(axum::http::header::AUTHORIZATION)
                .map(|v| v.to_str().unwrap_or("\u{0}"));
            let token = event.query_string_parameters.first("token");
            let principal = match verifier.verify_header_or_token(header, token) {
                Ok(principal) => principal,
                Err(e) => return refused(e.into()),
            };
            let connection = Connection {
                user: principal.sub,
                id,
            };
            if let Err(e) = realtime::connect(store, &connection).await {
                return refused(e.into());
            }
            tracing::info!(user = %connection.user, connection = %connection.id, "realtime connection opened");
            status(200)
        }
        Some("$disconnect") => {
            match realtime::disconnect(store, &id).await {
                Ok(user) => {
                    tracing::info!(user = ?user, connection = %id, "realtime connection closed")
                }
                // Its records expire.
                Err(e) => {
                    tracing::warn!(connection = %id, error = %e, "cannot forget a closed realtime connection")
                }
            }
            status(200)
        }
        _ => status(200),
    }
}

fn status(code: i64) -> ApiGatewayProxyResponse {
    let mut answer = ApiGatewayProxyResponse::default();
    answer.status_code = code;
    answer
}

/// A refused `$connect`: the status and error body `GET /realtime` answers.
fn refused(e: ApiError) -> ApiGatewayProxyResponse {
    if e.status.is_server_error() {
        tracing::error!(status = e.status.as_u16(), code = e.code, message = %e.message, "realtime connection refused");
    }
    let mut answer = status(i64::from(e.status.as_u16()));
    let body = serde_json::json!({"error": {"code": e.code, "message": e.message}});
    answer.body = Some(Body::Text(body.to_string()));
    answer.headers.insert(
        axum::http::header::CONTENT_TYPE,
        "application/json".parse().unwrap(),
    );
    answer
}

/// A record of Lambda's SQS event as a queue message: its system attributes (`AWSTraceHeader`,
/// `ApproximateReceiveCount`) and message attributes give its trace and receive count.
pub fn queue_message(record: SqsMessage) -> QueueMessage {
    let trace = sqs::carrier(
        record
            .attributes
            .get(sqs::AWS_TRACE_HEADER)
            .map(String::as_str),
        |name| {
            record
                .message_attributes
                .get(name)
                .and_then(|a| a.string_value.clone())
        },
    );
    let receives = record
        .attributes
        .get("ApproximateReceiveCount")
        .and_then(|n| n.parse().ok())
        .unwrap_or(1);
    QueueMessage {
        id: record.message_id.unwrap_or_default(),
        body: record.body.unwrap_or_default(),
        trace,
        receives,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_sqs_event_record_gives_the_trace_its_attributes_carry() {
        // A record as Lambda's event source mapping delivers it.
        let record: SqsMessage = serde_json::from_value(serde_json::json!({
            "messageId": "m-1", "receiptHandle": "r", "body": "{}",
            "attributes": {
                "ApproximateReceiveCount": "5",
                "SentTimestamp": "1796000000000",
                "AWSTraceHeader": "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1"
            },
            "messageAttributes": {
                "traceparent": {"stringValue": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                                "stringListValues": [], "binaryListValues": [], "dataType": "String"},
                "request_id": {"stringValue": "req-9", "stringListValues": [], "binaryListValues": [],
                               "dataType": "String"},
                "origin_ms": {"stringValue": "1796000000000", "stringListValues": [],
                              "binaryListValues": [], "dataType": "Number"}
            },
            "md5OfBody": "", "eventSource": "aws:sqs",
            "eventSourceARN": "arn:aws:sqs:us-east-1:000000000000:fanout", "awsRegion": "us-east-1"
        }))
        .unwrap();
        let message = queue_message(record);
        assert_eq!((message.id.as_str(), message.receives), ("m-1", 5));
        assert_eq!(
            message.trace,
            Carrier {
                traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
                aws_trace_header: Some(
                    "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1"
                        .into()
                ),
                request_id: Some("req-9".into()),
                origin_ms: Some(1_796_000_000_000),
            }
        );
        let context = message.trace.start();
        assert_eq!(context.trace_id, "0af7651916cd43dd8448eb211c80319c");

        // A message of an earlier release: no attributes, nothing carried.
        let bare: SqsMessage =
            serde_json::from_value(serde_json::json!({"messageId": "m-2", "body": "{}"})).unwrap();
        let message = queue_message(bare);
        assert_eq!((message.trace, message.receives), (Carrier::default(), 1));
    }
}
