//! Amazon SQS (or any SQS-compatible server, such as ElasticMQ) through `aws-sdk-sqs`.

use async_trait::async_trait;
use aws_sdk_sqs::types::SendMessageBatchRequestEntry;
use aws_sdk_sqs::Client;

use crate::settings::{Env, SettingsError};

use super::{Consumer, Delivery, FanoutJob, Queue, QueueError, QueueMessage};

/// SQS takes at most 10 messages per batch call.
const SQS_BATCH: usize = 10;

#[derive(Debug, Clone)]
pub struct SqsConfig {
    pub queue_url: String,
    /// An endpoint other than AWS's, for local servers such as ElasticMQ.
    pub endpoint: Option<String>,
}

impl SqsConfig {
    /// `FEEDS_QUEUE_URL` (required) and `FEEDS_SQS_ENDPOINT` (optional).
    pub fn read(env: &Env) -> Result<Self, SettingsError> {
        let queue_url = env.get("FEEDS_QUEUE_URL")?.ok_or_else(|| {
            SettingsError::new("FEEDS_QUEUE_URL", "must name the fan-out queue's URL")
        })?;
        Ok(SqsConfig {
            queue_url,
            endpoint: env.get("FEEDS_SQS_ENDPOINT")?,
        })
    }
}

#[derive(Clone)]
pub struct SqsQueue {
    client: Client,
    queue_url: String,
}

/// The one place an SQS client is built: region and credentials from the standard AWS chain, the
/// endpoint overridden for local servers.
pub async fn client(cfg: &SqsConfig) -> Client {
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
    if let Some(endpoint) = &cfg.endpoint {
        loader = loader.endpoint_url(endpoint);
    }
    Client::new(&loader.load().await)
}

impl SqsQueue {
    pub fn new(client: Client, queue_url: impl Into<String>) -> Self {
        SqsQueue {
            client,
            queue_url: queue_url.into(),
        }
    }

    pub async fn from_config(cfg: &SqsConfig) -> Self {
        SqsQueue::new(client(cfg).await, cfg.queue_url.clone())
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn queue_url(&self) -> &str {
        &self.queue_url
    }

    /// Long-polls for up to 10 messages; used by the standalone server's worker and by tests.
    pub async fn receive(&self, wait_seconds: i32) -> Result<Vec<Delivery>, QueueError> {
        self.receive_up_to(SQS_BATCH, wait_seconds).await
    }

    async fn receive_up_to(
        &self,
        max: usize,
        wait_seconds: i32,
    ) -> Result<Vec<Delivery>, QueueError> {
        let out = self
            .client
            .receive_message()
            .queue_url(&self.queue_url)
            .max_number_of_messages(max.clamp(1, SQS_BATCH) as i32)
            .wait_time_seconds(wait_seconds)
            .send()
            .await
            .map_err(|e| {
                QueueError(format!(
                    "SQS ReceiveMessage failed: {}",
                    aws_sdk_sqs::error::DisplayErrorContext(e)
                ))
            })?;
        Ok(out
            .messages
            .unwrap_or_default()
            .into_iter()
            .filter_map(|m| {
                let receipt = m.receipt_handle?;
                Some(Delivery {
                    message: QueueMessage {
                        id: m.message_id.unwrap_or_default(),
                        body: m.body.unwrap_or_default(),
                    },
                    receipt,
                })
            })
            .collect())
    }

    pub async fn delete(&self, receipt_handle: &str) -> Result<(), QueueError> {
        self.client
            .delete_message()
            .queue_url(&self.queue_url)
            .receipt_handle(receipt_handle)
            .send()
            .await
            .map_err(|e| {
                QueueError(format!(
                    "SQS DeleteMessage failed: {}",
                    aws_sdk_sqs::error::DisplayErrorContext(e)
                ))
            })?;
        Ok(())
    }
}

#[async_trait]
impl Queue for SqsQueue {
    async fn send(&self, jobs: &[FanoutJob]) -> Result<(), QueueError> {
        for batch in jobs.chunks(SQS_BATCH) {
            let entries = batch
                .iter()
                .enumerate()
                .map(|(i, job)| {
                    SendMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .message_body(job.encode())
                        .build()
                        .map_err(|e| QueueError(format!("cannot build an SQS entry: {e}")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let out = self
                .client
                .send_message_batch()
                .queue_url(&self.queue_url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(|e| {
                    QueueError(format!(
                        "SQS SendMessageBatch failed: {}",
                        aws_sdk_sqs::error::DisplayErrorContext(e)
                    ))
                })?;
            if let Some(failed) = out.failed.first() {
                return Err(QueueError(format!(
                    "SQS refused {} of {} messages: {} {}",
                    out.failed.len(),
                    batch.len(),
                    failed.code,
                    failed.message.as_deref().unwrap_or("")
                )));
            }
        }
        Ok(())
    }

    async fn health(&self) -> Result<(), QueueError> {
        self.client
            .get_queue_attributes()
            .queue_url(&self.queue_url)
            .attribute_names(aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessages)
            .send()
            .await
            .map_err(|e| {
                QueueError(format!(
                    "SQS GetQueueAttributes failed: {}",
                    aws_sdk_sqs::error::DisplayErrorContext(e)
                ))
            })?;
        Ok(())
    }
}

#[async_trait]
impl Consumer for SqsQueue {
    async fn receive(&self, max: usize) -> Result<Vec<Delivery>, QueueError> {
        self.receive_up_to(max, 1).await
    }

    async fn acknowledge(&self, handled: &[Delivery]) -> Result<(), QueueError> {
        let mut failed = Vec::new();
        for delivery in handled {
            if let Err(e) = self.delete(&delivery.receipt).await {
                failed.push(format!("{}: {e}", delivery.message.id));
            }
        }
        if failed.is_empty() {
            Ok(())
        } else {
            Err(QueueError(failed.join("; ")))
        }
    }
}
