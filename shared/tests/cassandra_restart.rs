//! Connections that survive Lambda: one process (one execution environment) serves an invocation,
//! Cassandra restarts, and the next invocation still succeeds. Restarts the local node through
//! `scripts/cassandra.sh restart`, so this test binary holds a single test.

use std::sync::Arc;

use feeds::config::Backends;

use feeds::http::{router, Routes};
use feeds::queue::sqs::{SqsConfig, SqsQueue};
use feeds::settings::Env;
use feeds::store::cassandra::{self, CassandraConfig, CassandraStore};
use feeds_testkit::services::{event, script, sqs_endpoint};
use lambda_http::request::LambdaRequest;
use lambda_http::tower::Service;
use lambda_http::{Adapter, Context, LambdaEvent};

async fn invoke(router: &axum::Router, event: &str) -> u64 {
    let mut adapter = Adapter::from(router.clone());
    let request: LambdaRequest = serde_json::from_str(event).unwrap();
    let response = adapter
        .call(LambdaEvent::new(request, Context::default()))
        .await
        .unwrap();
    let response = serde_json::to_value(response).unwrap();
    assert!(
        response["body"].as_str().unwrap_or("").contains("results"),
        "{response}"
    );
    response["statusCode"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_succeeds_after_cassandra_restarts_between_invocations() {
    let mut cfg = CassandraConfig::read(&Env::process()).unwrap();
    cfg.keyspace = "feeds_restart_test".into();
    // Built once, as a Lambda `main` does.
    let session = cassandra::connect(&cfg)
        .await
        .expect("Cassandra (scripts/cassandra.sh start)");
    cassandra::migrate(&session, &cfg).await.unwrap();
    let store = Arc::new(CassandraStore::new(Arc::new(session), &cfg).await.unwrap());
    let endpoint = sqs_endpoint();
    let queue_url = format!("{endpoint}/000000000000/fanout");
    let queue = SqsQueue::from_config(&SqsConfig {
        queue_url,
        endpoint: Some(endpoint),
        dlq_url: None,
    })
    .await;
    let backends = Backends::new(store, queue, Default::default());
    let app = feeds_testkit::services::app(&backends);
    let function = router(app, Routes::GetFeed);
    let event = event("get-feed-flat.json");

    assert_eq!(invoke(&function, &event).await, 200, "before the restart");
    assert!(
        script("cassandra", "restart"),
        "scripts/cassandra.sh restart failed"
    );
    assert_eq!(
        invoke(&function, &event).await,
        200,
        "the first invocation after the restart"
    );
    assert_eq!(invoke(&function, &event).await, 200, "and the next");
}
