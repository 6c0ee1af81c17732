//! The `fanout` Lambda function: SQS batches of fan-out jobs in, the failed message ids out.

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    feeds::lambda::run_fanout().await
}
