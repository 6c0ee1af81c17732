//! The Lambda entry points: each function's `main` is one call to these.

use lambda_runtime::{service_fn, LambdaEvent};

use crate::config::{self, QueueKind, StoreKind};
use crate::http::{router, Routes};
use crate::BoxError;

/// Serves `routes` through API Gateway's HTTP API events; clients are built once, before the first event.
pub async fn run_http(routes: Routes) -> Result<(), BoxError> {
    config::init_tracing();
    let backends = config::backends(StoreKind::Cassandra, QueueKind::Sqs).await?;
    let app = router(config::app(&backends)?, routes);
    lambda_http::run(app).await
}

/// Runs the SQS-triggered fan-out function, answering partial batch failures.
pub async fn run_fanout() -> Result<(), BoxError> {
    config::init_tracing();
    let backends = config::backends(StoreKind::Cassandra, QueueKind::Sqs).await?;
    let fanout = backends.fanout.clone();
    lambda_runtime::run(service_fn(
        move |event: LambdaEvent<aws_lambda_events::event::sqs::SqsEvent>| {
            let fanout = fanout.clone();
            async move { Ok::<_, BoxError>(fanout.handle_sqs_event(event.payload).await) }
        },
    ))
    .await
}
