//! The `get-feed` Lambda function: API Gateway HTTP API events in, the feeds API's answers out.

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    feeds::lambda::run_http(feeds::http::Routes::GetFeed).await
}
