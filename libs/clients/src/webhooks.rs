//! The webhooks service: endpoints, their messages and delivery attempts.

use switchboard_proto::webhooks::v1::webhooks_client::WebhooksClient as Stub;
use switchboard_proto::webhooks::v1::{
    CreateEndpointRequest, Endpoint, EndpointRef, EndpointSecret, EndpointWithSecret,
    ListAttemptsRequest, ListAttemptsResponse, ListEndpointsRequest, ListEndpointsResponse,
    ListMessagesRequest, ListMessagesResponse, MessageRef, RecoverFailedRequest, RecoverProgress,
    RotateSecretRequest, UpdateEndpointRequest, WebhookMessage,
};

typed_client! {
    /// The webhooks service (`switchboard.webhooks.v1.Webhooks`). `RecoverFailed`, which
    /// streams, is [`WebhooksClient::recover_failed`].
    WebhooksClient for "webhooks" via Stub {
        /// Creates an endpoint; the answer is the only one besides `get_endpoint_secret`
        /// that holds its signing secret.
        fn create_endpoint(CreateEndpointRequest) -> EndpointWithSecret;
        /// Replaces an endpoint's settings (not its secret).
        fn update_endpoint(UpdateEndpointRequest) -> Endpoint;
        /// One endpoint.
        fn get_endpoint(EndpointRef) -> Endpoint;
        /// One page of a workspace's endpoints.
        fn list_endpoints(ListEndpointsRequest) -> ListEndpointsResponse;
        /// Deletes an endpoint; its pending messages are not sent.
        fn delete_endpoint(EndpointRef) -> Endpoint;
        /// Re-enables a disabled endpoint.
        fn enable_endpoint(EndpointRef) -> Endpoint;
        /// Disables an endpoint.
        fn disable_endpoint(EndpointRef) -> Endpoint;
        /// Starts signing with a new secret; the old one signs beside it for the grace
        /// period.
        fn rotate_secret(RotateSecretRequest) -> EndpointWithSecret;
        /// An endpoint's signing secret.
        fn get_endpoint_secret(EndpointRef) -> EndpointSecret;
        /// One message.
        fn get_message(MessageRef) -> WebhookMessage;
        /// One page of messages.
        fn list_messages(ListMessagesRequest) -> ListMessagesResponse;
        /// One page of a message's delivery attempts.
        fn list_attempts(ListAttemptsRequest) -> ListAttemptsResponse;
        /// Sends one message again, with a fresh retry schedule.
        fn resend_message(MessageRef) -> WebhookMessage;
    }
}

impl WebhooksClient {
    /// Starts resending every failed message of an endpoint created since a time (or,
    /// with `dry_run`, counts them), and streams the progress. The recovery goes on in the
    /// webhooks service when the caller stops listening, so this is sent once and the
    /// stream ends at the client's deadline at the latest.
    pub async fn recover_failed(
        &self,
        request: RecoverFailedRequest,
    ) -> Result<tonic::Streaming<RecoverProgress>, tonic::Status> {
        self.0
            .unary(
                "recover_failed",
                self.0.deadline(),
                1,
                request,
                |channel, request| async move { Stub::new(channel).recover_failed(request).await },
            )
            .await
    }
}
