//! The event Lambda's SQS event source hands a function: each received message with its system
//! attributes (receive count, sent and first-receive times, sender), its message attributes, the
//! body's digests, and where it came from.

use std::collections::HashMap;

use aws_lambda_events::encodings::Base64Data;
use aws_lambda_events::event::sqs::{SqsEvent, SqsMessage, SqsMessageAttribute};
use aws_sdk_sqs::types::{Message, MessageAttributeValue};

/// Where the messages were received from.
pub struct Origin<'a> {
    /// The queue's ARN, as the queue reports it.
    pub queue_arn: &'a str,
    pub region: &'a str,
}

/// The event for `messages`, in the order they were received.
pub fn sqs_event(messages: &[Message], origin: &Origin) -> SqsEvent {
    let mut event = SqsEvent::default();
    event.records = messages.iter().map(|m| record(m, origin)).collect();
    event
}

fn record(message: &Message, origin: &Origin) -> SqsMessage {
    let mut record = SqsMessage::default();
    record.message_id = message.message_id.clone();
    record.receipt_handle = message.receipt_handle.clone();
    record.body = message.body.clone();
    record.md5_of_body = message.md5_of_body.clone();
    record.md5_of_message_attributes = message.md5_of_message_attributes.clone();
    record.attributes = message
        .attributes
        .iter()
        .flatten()
        .map(|(name, value)| (name.as_str().to_owned(), value.clone()))
        .collect();
    record.message_attributes = message
        .message_attributes
        .iter()
        .flatten()
        .map(|(name, value)| (name.clone(), attribute(value)))
        .collect::<HashMap<_, _>>();
    record.event_source = Some("aws:sqs".into());
    record.event_source_arn = Some(origin.queue_arn.to_owned());
    record.aws_region = Some(origin.region.to_owned());
    record
}

fn attribute(value: &MessageAttributeValue) -> SqsMessageAttribute {
    let mut attribute = SqsMessageAttribute::default();
    attribute.data_type = Some(value.data_type.clone());
    attribute.string_value = value.string_value.clone();
    attribute.binary_value = value
        .binary_value
        .as_ref()
        .map(|blob| binary(blob.as_ref()));
    attribute.string_list_values = value.string_list_values.clone().unwrap_or_default();
    attribute.binary_list_values = value
        .binary_list_values
        .iter()
        .flatten()
        .map(|blob| binary(blob.as_ref()))
        .collect();
    attribute
}

fn binary(bytes: &[u8]) -> Base64Data {
    let mut data = Base64Data::default();
    data.extend_from_slice(bytes);
    data
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_sqs::primitives::Blob;
    use aws_sdk_sqs::types::MessageSystemAttributeName as Name;
    use serde_json::json;

    #[test]
    fn a_received_message_becomes_the_record_lambda_delivers() {
        let message = Message::builder()
            .message_id("m-1")
            .receipt_handle("r-1")
            .body("{}")
            .md5_of_body("99914b932bd37a50b983c5e7c90ae93b")
            .attributes(Name::ApproximateReceiveCount, "2")
            .attributes(Name::SentTimestamp, "1795946400150")
            .attributes(Name::SenderId, "127.0.0.1")
            .attributes(Name::ApproximateFirstReceiveTimestamp, "1795946400162")
            .message_attributes(
                "trace",
                MessageAttributeValue::builder()
                    .data_type("String")
                    .string_value("abc")
                    .build()
                    .unwrap(),
            )
            .message_attributes(
                "raw",
                MessageAttributeValue::builder()
                    .data_type("Binary")
                    .binary_value(Blob::new(vec![0, 1]))
                    .build()
                    .unwrap(),
            )
            .build();
        let origin = Origin {
            queue_arn: "arn:aws:sqs:elasticmq:000000000000:fanout",
            region: "us-east-1",
        };
        let event = serde_json::to_value(sqs_event(&[message], &origin)).unwrap();
        let record = &event["Records"][0];
        assert_eq!(record["messageId"], "m-1");
        assert_eq!(record["receiptHandle"], "r-1");
        assert_eq!(record["body"], "{}");
        assert_eq!(record["md5OfBody"], "99914b932bd37a50b983c5e7c90ae93b");
        assert_eq!(
            record["attributes"],
            json!({"ApproximateReceiveCount": "2", "SentTimestamp": "1795946400150",
                   "SenderId": "127.0.0.1", "ApproximateFirstReceiveTimestamp": "1795946400162"})
        );
        assert_eq!(record["messageAttributes"]["trace"]["stringValue"], "abc");
        assert_eq!(record["messageAttributes"]["trace"]["dataType"], "String");
        assert_eq!(record["messageAttributes"]["raw"]["binaryValue"], "AAE=");
        assert_eq!(record["eventSource"], "aws:sqs");
        assert_eq!(record["eventSourceARN"], origin.queue_arn);
        assert_eq!(record["awsRegion"], "us-east-1");
        // The fan-out function reads it back as the same event.
        let back: SqsEvent = serde_json::from_value(event).unwrap();
        assert_eq!(back.records[0].message_id.as_deref(), Some("m-1"));
    }
}
