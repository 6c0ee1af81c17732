//! Amazon SQS (or any SQS-compatible server, such as ElasticMQ) through `aws-sdk-sqs`. A message's
//! trace travels in its attributes: the X-Ray header as the `AWSTraceHeader` system attribute (which
//! X-Ray and Lambda read), the rest as message attributes.

use async_trait::async_trait;
use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry, Message,
    MessageAttributeValue, MessageSystemAttributeName, MessageSystemAttributeNameForSends,
    MessageSystemAttributeValue, QueueAttributeName, SendMessageBatchRequestEntry,
};
use aws_sdk_sqs::Client;

use crate::settings::{Env, SettingsError};
use crate::trace::Carrier;

use super::{
    Consumer, DeadLetter, Delivery, FanoutJob, Queue, QueueAdmin, QueueDepths, QueueError,
    QueueMessage,
};

/// SQS takes at most 10 messages per batch call.
const SQS_BATCH: usize = 10;

/// The system attribute that carries the X-Ray trace header.
pub const AWS_TRACE_HEADER: &str = "AWSTraceHeader";
/// The message attributes of a trace: W3C `traceparent`, the request id, and when the request
/// arrived (milliseconds since the epoch).
pub const TRACEPARENT: &str = "traceparent";
pub const REQUEST_ID: &str = "request_id";
pub const ORIGIN_MS: &str = "origin_ms";

/// The batch entry of `job`, its trace in its attributes.
pub fn entry(
    id: usize,
    job: &FanoutJob,
    trace: Option<&Carrier>,
) -> Result<SendMessageBatchRequestEntry, QueueError> {
    let fail =
        |e: aws_sdk_sqs::error::BuildError| QueueError(format!("cannot build an SQS entry: {e}"));
    let mut entry = SendMessageBatchRequestEntry::builder()
        .id(id.to_string())
        .message_body(job.encode());
    let Some(trace) = trace else {
        return entry.build().map_err(fail);
    };
    let attribute = |data_type: &str, value: &str| {
        MessageAttributeValue::builder()
            .data_type(data_type)
            .string_value(value)
            .build()
            .map_err(fail)
    };
    if let Some(header) = &trace.aws_trace_header {
        let value = MessageSystemAttributeValue::builder()
            .data_type("String")
            .string_value(header)
            .build()
            .map_err(fail)?;
        entry = entry
            .message_system_attributes(MessageSystemAttributeNameForSends::AwsTraceHeader, value);
    }
    if let Some(traceparent) = &trace.traceparent {
        entry = entry.message_attributes(TRACEPARENT, attribute("String", traceparent)?);
    }
    if let Some(request_id) = &trace.request_id {
        entry = entry.message_attributes(REQUEST_ID, attribute("String", request_id)?);
    }
    if let Some(origin) = trace.origin_ms {
        entry = entry.message_attributes(ORIGIN_MS, attribute("Number", &origin.to_string())?);
    }
    entry.build().map_err(fail)
}

/// The trace a message carries, from its attributes however they are presented (a received
/// message, Lambda's SQS event): the `AWSTraceHeader` system attribute, and the message
/// attributes' string values by name.
pub fn carrier(
    aws_trace_header: Option<&str>,
    attribute: impl Fn(&str) -> Option<String>,
) -> Carrier {
    Carrier {
        traceparent: attribute(TRACEPARENT),
        aws_trace_header: aws_trace_header.map(str::to_owned),
        request_id: attribute(REQUEST_ID),
        origin_ms: attribute(ORIGIN_MS).and_then(|v| v.trim().parse().ok()),
    }
}

/// A received message's trace and receive count.
fn received(m: &Message) -> (Carrier, u32) {
    let system = |name: MessageSystemAttributeName| m.attributes().and_then(|a| a.get(&name));
    let trace = carrier(
        system(MessageSystemAttributeName::AwsTraceHeader).map(String::as_str),
        |name| {
            m.message_attributes()
                .and_then(|a| a.get(name))
                .and_then(|v| v.string_value().map(str::to_owned))
        },
    );
    let receives = system(MessageSystemAttributeName::ApproximateReceiveCount)
        .and_then(|n| n.parse().ok())
        .unwrap_or(1);
    (trace, receives)
}

#[derive(Debug, Clone)]
pub struct SqsConfig {
    pub queue_url: String,
    /// An endpoint other than AWS's, for local servers such as ElasticMQ.
    pub endpoint: Option<String>,
    /// The fan-out queue's dead-letter queue, for the operator's tools.
    pub dlq_url: Option<String>,
}

impl SqsConfig {
    /// `FEEDS_QUEUE_URL` (required), `FEEDS_SQS_ENDPOINT` and `FEEDS_DLQ_URL` (optional).
    pub fn read(env: &Env) -> Result<Self, SettingsError> {
        let queue_url = env.get("FEEDS_QUEUE_URL")?.ok_or_else(|| {
            SettingsError::new("FEEDS_QUEUE_URL", "must name the fan-out queue's URL")
        })?;
        Ok(SqsConfig {
            queue_url,
            endpoint: env.get("FEEDS_SQS_ENDPOINT")?,
            dlq_url: env.get("FEEDS_DLQ_URL")?,
        })
    }
}

#[derive(Clone)]
pub struct SqsQueue {
    client: Client,
    queue_url: String,
    dlq_url: Option<String>,
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
            dlq_url: None,
        }
    }

    /// The same queue, with `dlq_url` as its dead-letter queue.
    pub fn with_dlq(mut self, dlq_url: impl Into<String>) -> Self {
        self.dlq_url = Some(dlq_url.into());
        self
    }

    pub async fn from_config(cfg: &SqsConfig) -> Self {
        let queue = SqsQueue::new(client(cfg).await, cfg.queue_url.clone());
        match &cfg.dlq_url {
            Some(url) => queue.with_dlq(url),
            None => queue,
        }
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
            .message_system_attribute_names(MessageSystemAttributeName::AwsTraceHeader)
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .message_attribute_names(TRACEPARENT)
            .message_attribute_names(REQUEST_ID)
            .message_attribute_names(ORIGIN_MS)
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
                let (trace, receives) = received(&m);
                let receipt = m.receipt_handle?;
                Some(Delivery {
                    message: QueueMessage {
                        id: m.message_id.unwrap_or_default(),
                        body: m.body.unwrap_or_default(),
                        trace,
                        receives,
                    },
                    receipt,
                })
            })
            .collect())
    }

    /// One `SendMessageBatch` to the queue: what it accepted and what it refused.
    async fn send_entries(
        &self,
        entries: Vec<SendMessageBatchRequestEntry>,
    ) -> Result<aws_sdk_sqs::operation::send_message_batch::SendMessageBatchOutput, QueueError>
    {
        self.client
            .send_message_batch()
            .queue_url(&self.queue_url)
            .set_entries(Some(entries))
            .send()
            .await
            .map_err(|e| sqs_error("SendMessageBatch", e))
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
        let trace = crate::trace::current().map(|t| t.carrier());
        for batch in jobs.chunks(SQS_BATCH) {
            let entries = batch
                .iter()
                .enumerate()
                .map(|(i, job)| entry(i, job, trace.as_ref()))
                .collect::<Result<Vec<_>, _>>()?;
            let out = self.send_entries(entries).await?;
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

/// How long the operator's tools hide the dead letters they took: a listing makes them visible
/// again at once; a redrive deletes them once sent, or they come back after this.
const DEAD_LETTER_HOLD_SECS: i32 = 60;

fn sqs_error(call: &str, e: impl std::error::Error) -> QueueError {
    QueueError(format!(
        "SQS {call} failed: {}",
        aws_sdk_sqs::error::DisplayErrorContext(e)
    ))
}

impl SqsQueue {
    fn dlq(&self) -> Result<&str, QueueError> {
        self.dlq_url.as_deref().ok_or_else(|| {
            QueueError("FEEDS_DLQ_URL is not set: no dead-letter queue to read".to_owned())
        })
    }

    /// (waiting or delayed, in flight) messages of `url`.
    async fn counts(&self, url: &str) -> Result<(u64, u64), QueueError> {
        let out = self
            .client
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesDelayed)
            .send()
            .await
            .map_err(|e| sqs_error("GetQueueAttributes", e))?;
        let attributes = out.attributes.unwrap_or_default();
        let n = |name: QueueAttributeName| -> u64 {
            attributes
                .get(&name)
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        Ok((
            n(QueueAttributeName::ApproximateNumberOfMessages)
                + n(QueueAttributeName::ApproximateNumberOfMessagesDelayed),
            n(QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
        ))
    }

    /// Takes up to `max` (at most 10) dead letters, hidden for [`DEAD_LETTER_HOLD_SECS`], with
    /// their attributes.
    async fn take_dead(&self, dlq: &str, max: usize) -> Result<Vec<Message>, QueueError> {
        let out = self
            .client
            .receive_message()
            .queue_url(dlq)
            .max_number_of_messages(max.clamp(1, SQS_BATCH) as i32)
            .visibility_timeout(DEAD_LETTER_HOLD_SECS)
            .wait_time_seconds(1)
            .message_attribute_names("All")
            .message_system_attribute_names(MessageSystemAttributeName::AwsTraceHeader)
            .send()
            .await
            .map_err(|e| sqs_error("ReceiveMessage", e))?;
        Ok(out.messages.unwrap_or_default())
    }
}

fn dead_letter(m: &Message) -> DeadLetter {
    DeadLetter {
        id: m.message_id.clone().unwrap_or_default(),
        body: m.body.clone().unwrap_or_default(),
        receives: None,
    }
}

#[async_trait]
impl QueueAdmin for SqsQueue {
    async fn depths(&self) -> Result<QueueDepths, QueueError> {
        let (waiting, in_flight) = self.counts(&self.queue_url).await?;
        let dead = match &self.dlq_url {
            Some(url) => {
                let (waiting, in_flight) = self.counts(url).await?;
                Some(waiting + in_flight)
            }
            None => None,
        };
        Ok(QueueDepths {
            waiting,
            in_flight,
            dead,
        })
    }

    /// Takes the messages out of sight (so that each is listed once), then makes them visible
    /// again: only their receive counts change.
    async fn dead_letters(&self, max: usize) -> Result<Vec<DeadLetter>, QueueError> {
        let dlq = self.dlq()?;
        let mut taken: Vec<Message> = Vec::new();
        while taken.len() < max {
            let got = self.take_dead(dlq, max - taken.len()).await?;
            if got.is_empty() {
                break;
            }
            taken.extend(got);
        }
        let listed = taken.iter().map(dead_letter).collect();
        for batch in taken.chunks(SQS_BATCH) {
            let entries = batch
                .iter()
                .enumerate()
                .filter_map(|(i, m)| {
                    ChangeMessageVisibilityBatchRequestEntry::builder()
                        .id(i.to_string())
                        .set_receipt_handle(m.receipt_handle.clone())
                        .visibility_timeout(0)
                        .build()
                        .ok()
                })
                .collect();
            self.client
                .change_message_visibility_batch()
                .queue_url(dlq)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(|e| sqs_error("ChangeMessageVisibilityBatch", e))?;
        }
        Ok(listed)
    }

    async fn redrive(&self, max: usize) -> Result<Vec<DeadLetter>, QueueError> {
        let dlq = self.dlq()?;
        let mut moved = Vec::new();
        while moved.len() < max {
            let batch = self.take_dead(dlq, max - moved.len()).await?;
            if batch.is_empty() {
                break;
            }
            let entries = batch
                .iter()
                .enumerate()
                .map(|(i, m)| {
                    let trace = m
                        .attributes
                        .as_ref()
                        .and_then(|a| a.get(&MessageSystemAttributeName::AwsTraceHeader));
                    let mut entry = SendMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .set_message_body(m.body.clone())
                        .set_message_attributes(m.message_attributes.clone());
                    if let Some(trace) = trace {
                        let value = MessageSystemAttributeValue::builder()
                            .data_type("String")
                            .string_value(trace)
                            .build()
                            .map_err(|e| QueueError(format!("an SQS attribute: {e}")))?;
                        entry = entry.message_system_attributes(
                            MessageSystemAttributeNameForSends::AwsTraceHeader,
                            value,
                        );
                    }
                    entry
                        .build()
                        .map_err(|e| QueueError(format!("cannot build an SQS entry: {e}")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let out = self.send_entries(entries).await?;
            // Only what the queue accepted leaves the dead-letter queue; the rest is visible
            // there again after the hold.
            let sent: Vec<&Message> = out
                .successful
                .iter()
                .filter_map(|ok| ok.id.parse::<usize>().ok())
                .filter_map(|i| batch.get(i))
                .collect();
            let deletes = sent
                .iter()
                .enumerate()
                .filter_map(|(i, m)| {
                    DeleteMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .set_receipt_handle(m.receipt_handle.clone())
                        .build()
                        .ok()
                })
                .collect::<Vec<_>>();
            if !deletes.is_empty() {
                let deleted = self
                    .client
                    .delete_message_batch()
                    .queue_url(dlq)
                    .set_entries(Some(deletes))
                    .send()
                    .await
                    .map_err(|e| sqs_error("DeleteMessageBatch", e))?;
                if let Some(failed) = deleted.failed.first() {
                    return Err(QueueError(format!(
                        "moved {} messages, but {} of them are still in the dead-letter queue \
                         (they will be moved again: a duplicate is harmless): {} {}",
                        moved.len() + sent.len(),
                        deleted.failed.len(),
                        failed.code,
                        failed.message.as_deref().unwrap_or("")
                    )));
                }
            }
            moved.extend(sent.into_iter().map(dead_letter));
            if let Some(failed) = out.failed.first() {
                return Err(QueueError(format!(
                    "moved {} messages; the queue refused {} ({} {}), left in the dead-letter queue",
                    moved.len(),
                    out.failed.len(),
                    failed.code,
                    failed.message.as_deref().unwrap_or("")
                )));
            }
        }
        Ok(moved)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trace_is_sent_as_attributes_and_read_back() {
        let trace = Carrier {
            traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
            aws_trace_header: Some("Root=1-5759e988-bd862e3fe1be46a994272793;Sampled=1".into()),
            request_id: Some("req-7".into()),
            origin_ms: Some(1_796_000_000_000),
        };
        let job = FanoutJob::Notify {
            activity_id: "a".into(),
            from: 0,
        };
        let sent = entry(3, &job, Some(&trace)).unwrap();
        assert_eq!(sent.id(), "3");
        assert_eq!(
            sent.message_body(),
            job.encode(),
            "the body is the job alone"
        );
        let system = sent.message_system_attributes().unwrap();
        let header = &system[&MessageSystemAttributeNameForSends::AwsTraceHeader];
        assert_eq!(header.data_type(), "String");
        assert_eq!(header.string_value(), trace.aws_trace_header.as_deref());
        let attributes = sent.message_attributes().unwrap();
        assert_eq!(attributes.len(), 3);
        assert_eq!(attributes[TRACEPARENT].data_type(), "String");
        assert_eq!(attributes[ORIGIN_MS].data_type(), "Number");

        // As SQS hands the message back.
        let mut message = Message::builder()
            .attributes(
                MessageSystemAttributeName::AwsTraceHeader,
                header.string_value().unwrap(),
            )
            .attributes(MessageSystemAttributeName::ApproximateReceiveCount, "4");
        for (name, value) in attributes {
            message = message.message_attributes(name, value.clone());
        }
        assert_eq!(received(&message.build()), (trace, 4));

        // No trace: no attributes; nothing carried comes back.
        let bare = entry(0, &job, None).unwrap();
        assert!(bare.message_attributes().is_none() && bare.message_system_attributes().is_none());
        assert_eq!(
            received(&Message::builder().build()),
            (Carrier::default(), 1)
        );
    }
}
