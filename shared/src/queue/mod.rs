//! The fan-out queue: Amazon SQS in production, a durable table in the embedded SQLite file for the
//! standalone server. Both carry the same JSON `FanoutJob` messages.

use async_trait::async_trait;

use crate::fanout::FanoutJob;

pub mod embedded;
#[cfg(feature = "aws")]
pub mod sqs;

#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct QueueError(pub String);

/// A message received from a queue: its id and its raw body.
#[derive(Debug, Clone)]
pub struct QueueMessage {
    pub id: String,
    pub body: String,
}

#[async_trait]
pub trait Queue: Send + Sync + 'static {
    /// Sends every job or fails: on `Ok` the queue has accepted all of them.
    async fn send(&self, jobs: &[FanoutJob]) -> Result<(), QueueError>;
    /// A cheap call that proves the queue answers.
    async fn health(&self) -> Result<(), QueueError>;
}

/// Serialises jobs as the queue carries them.
pub fn encode(job: &FanoutJob) -> String {
    serde_json::to_string(job).expect("a fan-out job serialises")
}
