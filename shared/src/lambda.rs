//! The Lambda entry points: each function's `main` is one call to these. The SQS event adapter of
//! the fan-out function lives here too, beside the other Lambda entry code.

use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent};
use lambda_runtime::{service_fn, LambdaEvent};

use crate::config::{self, Backends, Defaults};
use crate::fanout::Fanout;
use crate::http::{router, Routes};
use crate::queue::QueueMessage;
use crate::BoxError;

/// Serves `routes` through API Gateway's HTTP API events; clients are built once, before the first event.
pub async fn run_http(routes: Routes) -> Result<(), BoxError> {
    let settings = config::start(Defaults::AWS)?;
    let backends = Backends::open(&settings).await?;
    let app = router(config::app(&settings, &backends)?, routes);
    lambda_http::run(app).await
}

/// Runs the SQS-triggered fan-out function, answering partial batch failures.
pub async fn run_fanout() -> Result<(), BoxError> {
    let settings = config::start(Defaults::AWS)?;
    let fanout = Backends::open(&settings).await?.fanout;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<SqsEvent>| {
        let fanout = fanout.clone();
        async move { Ok::<_, BoxError>(handle_sqs_event(&fanout, event.payload).await) }
    }))
    .await
}

/// The fan-out function's body: an SQS event in, the ids of the messages that failed out, so that
/// only they are redelivered (`ReportBatchItemFailures`).
pub async fn handle_sqs_event(fanout: &Fanout, event: SqsEvent) -> SqsBatchResponse {
    let messages: Vec<QueueMessage> = event
        .records
        .into_iter()
        .map(|r| QueueMessage {
            id: r.message_id.unwrap_or_default(),
            body: r.body.unwrap_or_default(),
        })
        .collect();
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
