//! The poll loop of an SQS event source mapping: long-poll a batch, invoke the function with it,
//! delete what succeeded. What failed is left alone: it comes back after the visibility timeout,
//! with its receive count raised, until the queue's redrive policy moves it to the dead-letter
//! queue.

use std::time::{Duration, Instant};

use aws_sdk_sqs::error::DisplayErrorContext;
use aws_sdk_sqs::types::{DeleteMessageBatchRequestEntry, Message, MessageSystemAttributeName};
use aws_sdk_sqs::Client;

use super::event::{self, Origin};
use super::invoke::{self, Invoker, Outcome};

/// SQS's longest long poll, which Lambda's pollers use.
const LONG_POLL_SECS: i32 = 20;
/// SQS returns and deletes at most 10 messages a call.
const SQS_MAX: usize = 10;

/// One event source mapping: a queue, a function, the batch settings.
pub struct Mapping {
    pub sqs: Client,
    pub queue_url: String,
    pub queue_arn: String,
    pub region: String,
    pub batch_size: usize,
    pub batching_window: Duration,
    pub report_batch_item_failures: bool,
    pub invoker: Invoker,
}

impl Mapping {
    /// Polls until `stop` completes; a batch being handled is finished first.
    pub async fn run(&self, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        loop {
            let received = tokio::select! {
                _ = &mut stop => return,
                received = self.receive_batch() => received,
            };
            match received {
                Ok(batch) if batch.is_empty() => {}
                Ok(batch) => self.deliver(batch).await,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot receive from the queue; trying again in 1 s");
                    tokio::select! {
                        _ = &mut stop => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        }
    }

    /// Up to `batch_size` messages: what one long poll returns, or, with a batching window, what
    /// arrives until the window closes or the batch is full.
    async fn receive_batch(&self) -> Result<Vec<Message>, String> {
        let mut batch = self.receive(self.batch_size, LONG_POLL_SECS).await?;
        let closes = Instant::now() + self.batching_window;
        while !batch.is_empty() && batch.len() < self.batch_size {
            let left = closes.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let wait = left.as_secs().min(LONG_POLL_SECS as u64) as i32;
            batch.extend(self.receive(self.batch_size - batch.len(), wait).await?);
        }
        Ok(batch)
    }

    async fn receive(&self, max: usize, wait_secs: i32) -> Result<Vec<Message>, String> {
        let answer = self
            .sqs
            .receive_message()
            .queue_url(&self.queue_url)
            .max_number_of_messages(max.min(SQS_MAX) as i32)
            .wait_time_seconds(wait_secs)
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .message_attribute_names("All")
            .send()
            .await
            .map_err(|e| format!("ReceiveMessage: {}", DisplayErrorContext(e)))?;
        Ok(answer.messages.unwrap_or_default())
    }

    /// Invokes the function with `batch` and deletes the messages that succeeded.
    async fn deliver(&self, batch: Vec<Message>) {
        let origin = Origin {
            queue_arn: &self.queue_arn,
            region: &self.region,
        };
        let event = event::sqs_event(&batch, &origin);
        let ids: Vec<&str> = batch.iter().filter_map(|m| m.message_id()).collect();
        // `id:receive count` of each message, as the function sees it.
        let messages = batch
            .iter()
            .map(|m| {
                let count = m
                    .attributes()
                    .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount));
                format!(
                    "{}:{}",
                    m.message_id().unwrap_or("?"),
                    count.map_or("?", |c| c)
                )
            })
            .collect::<Vec<_>>()
            .join(" ");
        let started = Instant::now();
        let reply = self.invoker.invoke(&event).await;
        let took_ms = started.elapsed().as_millis() as u64;
        match invoke::outcome(reply, &ids, self.report_batch_item_failures) {
            Outcome::Answered { failed } => {
                let done: Vec<&Message> = batch
                    .iter()
                    .filter(|m| !failed.iter().any(|f| Some(f.as_str()) == m.message_id()))
                    .collect();
                let deleted = self.delete(&done).await;
                tracing::info!(
                    messages,
                    failed = failed.join(" "),
                    deleted,
                    took_ms,
                    "batch delivered"
                );
            }
            Outcome::BatchFailed(why) => {
                // Nothing deleted: every message comes back after the visibility timeout.
                tracing::warn!(messages, error = why, took_ms, "batch failed");
            }
        }
    }

    /// Deletes `messages`; answers how many were. A message not deleted is delivered again.
    async fn delete(&self, messages: &[&Message]) -> usize {
        let mut deleted = 0;
        for chunk in messages.chunks(SQS_MAX) {
            let entries: Vec<_> = chunk
                .iter()
                .enumerate()
                .filter_map(|(i, m)| {
                    DeleteMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .receipt_handle(m.receipt_handle()?)
                        .build()
                        .ok()
                })
                .collect();
            match self
                .sqs
                .delete_message_batch()
                .queue_url(&self.queue_url)
                .set_entries(Some(entries))
                .send()
                .await
            {
                Ok(answer) => {
                    deleted += answer.successful.len();
                    for failure in answer.failed {
                        tracing::warn!(entry = ?failure, "a delivered message was not deleted");
                    }
                }
                Err(e) => tracing::warn!(
                    error = %DisplayErrorContext(e),
                    "DeleteMessageBatch failed; its messages will be delivered again"
                ),
            }
        }
        deleted
    }
}
