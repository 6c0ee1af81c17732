//! The `realtime` Lambda function: the API Gateway WebSocket API's `$connect` (authenticates and
//! records the connection), `$disconnect` (forgets it) and `$default` routes.

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    feeds::lambda::run_realtime().await
}
