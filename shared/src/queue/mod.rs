//! The fan-out queue: Amazon SQS in production, a durable table in the embedded SQLite file for the
//! standalone server. Both carry the same JSON [`FanoutJob`] messages, and both are consumed through
//! the same [`Consumer`] interface by the fan-out's one worker loop. Each message also carries the
//! trace of the work that sent it ([`crate::trace::current`] when it was sent): SQS in message
//! attributes, the embedded queue in a column; the job's JSON stays as it was.

use async_trait::async_trait;

use crate::trace::Carrier;

pub mod embedded;
mod job;
#[cfg(feature = "aws")]
pub mod sqs;

pub use job::{EraseStage, FanoutJob};

#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct QueueError(pub String);

/// A message received from a queue: its id, its raw body, the trace it carries, and how many times
/// it has been received (this time included).
#[derive(Debug, Clone)]
pub struct QueueMessage {
    pub id: String,
    pub body: String,
    pub trace: Carrier,
    pub receives: u32,
}

/// A received message with what its queue needs to acknowledge it.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub message: QueueMessage,
    /// SQS's receipt handle; the message id for the embedded queue.
    pub receipt: String,
}

/// The sending side, used by the HTTP operations and the fan-out.
#[async_trait]
pub trait Queue: Send + Sync + 'static {
    /// Sends every job or fails: on `Ok` the queue has accepted all of them. Each carries the
    /// trace of the work under way.
    async fn send(&self, jobs: &[FanoutJob]) -> Result<(), QueueError>;
    /// A cheap call that proves the queue answers.
    async fn health(&self) -> Result<(), QueueError>;
}

/// The receiving side, used by an in-process worker (the standalone server; on AWS, Lambda's event
/// source mapping receives instead).
#[async_trait]
pub trait Consumer: Send + Sync + 'static {
    /// Waits a short while (at most about a second) for up to `max` messages; each stays invisible
    /// to other receivers until it is acknowledged or its visibility timeout passes.
    async fn receive(&self, max: usize) -> Result<Vec<Delivery>, QueueError>;
    /// Deletes handled messages; the others are redelivered after their visibility timeout.
    async fn acknowledge(&self, handled: &[Delivery]) -> Result<(), QueueError>;
}

/// How many messages a queue holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct QueueDepths {
    /// Visible (or delayed), waiting for a receiver.
    pub waiting: u64,
    /// Received and not yet deleted: being handled, or to be redelivered.
    pub in_flight: u64,
    /// Dead-lettered; `None` when no dead-letter queue is configured.
    pub dead: Option<u64>,
}

/// A dead-lettered fan-out message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// Its id in the dead-letter queue.
    pub id: String,
    pub body: String,
    /// How many times it was received before it was dead-lettered, when the queue knows.
    pub receives: Option<u64>,
}

impl DeadLetter {
    /// The job's kind (`deliver`, `backfill`...), or `unparsable`.
    pub fn kind(&self) -> String {
        #[derive(serde::Deserialize)]
        struct Kind {
            kind: String,
        }
        serde_json::from_str::<Kind>(&self.body)
            .map(|k| k.kind)
            .unwrap_or_else(|_| "unparsable".to_owned())
    }
}

/// What operators see of a queue and do with it (`feeds-server admin`): its depths, and its
/// dead letters, listed or moved back.
#[async_trait]
pub trait QueueAdmin: Send + Sync + 'static {
    async fn depths(&self) -> Result<QueueDepths, QueueError>;
    /// Up to `max` dead letters, oldest first where the queue orders them, left where they are.
    async fn dead_letters(&self, max: usize) -> Result<Vec<DeadLetter>, QueueError>;
    /// Moves up to `max` dead letters back onto the queue, body (and attributes) unchanged; each
    /// leaves the dead-letter queue only once it was sent, so an interruption may duplicate a
    /// message (the fan-out's writes are idempotent) but never loses one. Answers those moved.
    async fn redrive(&self, max: usize) -> Result<Vec<DeadLetter>, QueueError>;
}
