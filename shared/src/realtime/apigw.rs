//! The transport of the deployed service: API Gateway's Management API, `PostToConnection` on
//! the WebSocket API's callback URL (`https://{api-id}.execute-api.{region}.amazonaws.com/{stage}`,
//! `FEEDS_REALTIME_CALLBACK_URL`), signed with the function's role, which needs
//! `execute-api:ManageConnections`. A connection that API Gateway no longer has answers
//! 410 Gone (`GoneException`): the fan-out then forgets it.

use async_trait::async_trait;
use aws_sdk_apigatewaymanagement::error::{DisplayErrorContext, SdkError};
use aws_sdk_apigatewaymanagement::operation::post_to_connection::{
    PostToConnectionError, PostToConnectionOutput,
};
use aws_sdk_apigatewaymanagement::primitives::Blob;
use aws_sdk_apigatewaymanagement::Client;

use super::{Sent, Transport};

/// `PostToConnection` through one WebSocket API stage.
#[derive(Clone)]
pub struct ManagementApi {
    client: Client,
}

impl ManagementApi {
    /// A client of the stage whose callback URL is `callback_url`; region and credentials from
    /// the standard AWS chain.
    pub async fn new(callback_url: &str) -> Self {
        let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .endpoint_url(callback_url)
            .load()
            .await;
        ManagementApi {
            client: Client::new(&config),
        }
    }
}

#[async_trait]
impl Transport for ManagementApi {
    async fn send(&self, id: &str, text: &str) -> Sent {
        let result = self
            .client
            .post_to_connection()
            .connection_id(id)
            .data(Blob::new(text.as_bytes()))
            .send()
            .await;
        outcome(result)
    }
}

/// What an answer to `PostToConnection` means for the connection: gone on a `GoneException` or
/// any 410; kept (and logged by the caller) on anything else, throttling included.
fn outcome(result: Result<PostToConnectionOutput, SdkError<PostToConnectionError>>) -> Sent {
    match result {
        Ok(_) => Sent::Delivered,
        Err(e) => {
            let gone = e.as_service_error().is_some_and(|s| s.is_gone_exception())
                || e.raw_response().is_some_and(|r| r.status().as_u16() == 410);
            match gone {
                true => Sent::Gone,
                false => Sent::Failed(DisplayErrorContext(&e).to_string()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_apigatewaymanagement::types::error::{GoneException, LimitExceededException};
    use aws_smithy_runtime_api::http::{Response, StatusCode};
    use aws_smithy_types::body::SdkBody;

    fn answer(status: u16) -> Response {
        Response::new(StatusCode::try_from(status).unwrap(), SdkBody::empty())
    }

    #[test]
    fn only_a_gone_connection_is_forgotten() {
        let gone = PostToConnectionError::GoneException(GoneException::builder().build());
        assert_eq!(
            outcome(Err(SdkError::service_error(gone, answer(410)))),
            Sent::Gone
        );
        // A 410 the SDK could not name.
        let unnamed = PostToConnectionError::unhandled("no body");
        assert_eq!(
            outcome(Err(SdkError::service_error(unnamed, answer(410)))),
            Sent::Gone
        );
        let throttled = PostToConnectionError::LimitExceededException(
            LimitExceededException::builder().build(),
        );
        assert!(matches!(
            outcome(Err(SdkError::service_error(throttled, answer(429)))),
            Sent::Failed(_)
        ));
        let timeout = SdkError::timeout_error("no answer in time");
        assert!(matches!(outcome(Err(timeout)), Sent::Failed(_)));
        let delivered = PostToConnectionOutput::builder().build();
        assert_eq!(outcome(Ok(delivered)), Sent::Delivered);
    }
}
