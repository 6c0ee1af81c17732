//! The queue and its dead-letter queue on the local SQS server, set as the template sets them: the
//! trigger applies the template's visibility timeout and redrive policy through the SQS API, so
//! ElasticMQ dead-letters after the template's `maxReceiveCount`, whatever its own configuration.

use aws_sdk_sqs::error::DisplayErrorContext;
use aws_sdk_sqs::types::QueueAttributeName;
use aws_sdk_sqs::Client;
use feeds::BoxError;
use serde_json::json;

use super::template::QueueSpec;

/// A configured queue: its URL and ARN, and its dead-letter queue's URL.
#[derive(Debug, Clone)]
pub struct LocalQueue {
    pub url: String,
    pub arn: String,
    pub dead_letter_url: Option<String>,
}

/// The queue `queue_url` names, and `<name>-dlq` when `spec` has a redrive policy (both created
/// when missing), with `visibility_timeout` (seconds) and `spec`'s `maxReceiveCount`.
pub async fn configure(
    client: &Client,
    queue_url: &str,
    spec: &QueueSpec,
    visibility_timeout: u32,
) -> Result<LocalQueue, BoxError> {
    let name = queue_url
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| format!("FEEDS_QUEUE_URL: no queue name in {queue_url:?}"))?;
    let url = ensure(client, name).await?;
    let mut set = client.set_queue_attributes().queue_url(&url).attributes(
        QueueAttributeName::VisibilityTimeout,
        visibility_timeout.to_string(),
    );
    let mut dead_letter_url = None;
    if let Some(max_receive_count) = spec.max_receive_count {
        let dlq_url = ensure(client, &format!("{name}-dlq")).await?;
        let policy = json!({
            "deadLetterTargetArn": arn(client, &dlq_url).await?,
            "maxReceiveCount": max_receive_count,
        });
        set = set.attributes(QueueAttributeName::RedrivePolicy, policy.to_string());
        dead_letter_url = Some(dlq_url);
    }
    set.send()
        .await
        .map_err(|e| format!("SetQueueAttributes on {name}: {}", DisplayErrorContext(e)))?;
    Ok(LocalQueue {
        arn: arn(client, &url).await?,
        url,
        dead_letter_url,
    })
}

/// The URL of queue `name`, created with the server's defaults when missing.
async fn ensure(client: &Client, name: &str) -> Result<String, BoxError> {
    if let Ok(found) = client.get_queue_url().queue_name(name).send().await {
        if let Some(url) = found.queue_url {
            return Ok(url);
        }
    }
    let created = client
        .create_queue()
        .queue_name(name)
        .send()
        .await
        .map_err(|e| format!("CreateQueue {name}: {}", DisplayErrorContext(e)))?;
    created
        .queue_url
        .ok_or_else(|| format!("CreateQueue {name} answered no URL").into())
}

async fn arn(client: &Client, url: &str) -> Result<String, BoxError> {
    let answer = client
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .map_err(|e| format!("GetQueueAttributes on {url}: {}", DisplayErrorContext(e)))?;
    answer
        .attributes
        .and_then(|mut a| a.remove(&QueueAttributeName::QueueArn))
        .ok_or_else(|| format!("{url} has no QueueArn").into())
}
