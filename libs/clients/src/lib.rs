//! One typed gRPC client per Switchboard service: [`ConversationsClient`],
//! [`ActionsClient`], [`ConnexeaseClient`], [`WebhooksClient`], [`FlowsClient`] and
//! [`InsightsClient`].
//! Services never build their own tonic client of another service; they build one of
//! these from a [`ClientConfig`] and call it.
//!
//! Every call made through them:
//!
//! - carries the service token as `authorization: Bearer <token>` (when one is
//!   configured), the calling service's name in [`CALLER_HEADER`], and the W3C
//!   `traceparent` of the current tracing span (or of the trace a client was pinned to
//!   with `with_traceparent`), so the callee authenticates it, knows who asked, and joins
//!   the trace;
//! - has a deadline ([`ClientConfig::deadline`], 10 s unless set): the whole call, retries
//!   included, ends with `DEADLINE_EXCEEDED` when it runs out, and the remaining time is
//!   sent as `grpc-timeout` so the callee stops too;
//! - is retried when the callee answers `UNAVAILABLE` (it is down, starting, or not
//!   reachable yet), at most [`MAX_ATTEMPTS`] times in all, with a jittered backoff, and
//!   only while the deadline leaves room. No other code is ever retried: every request
//!   that changes something carries its own request id or idempotency key, but a refusal
//!   does not turn into a success by asking again.
//!
//! A client is built from a URL and connects on its first call, so services start in any
//! order. In `dev` that URL is the process's own loopback gRPC server and in a cluster it
//! is the other service's address: the same type either way. Clients are cheap to clone
//! (`Clone + Send + Sync`) and share one connection.
#![forbid(unsafe_code)]

use std::fmt;
use std::time::Duration;

#[macro_use]
mod macros;
mod actions;
mod connexease;
mod conversations;
mod flows;
mod insights;
mod transport;
mod webhooks;

pub use actions::ActionsClient;
pub use connexease::ConnexeaseClient;
pub use conversations::ConversationsClient;
pub use flows::{FlowsClient, WORKFLOW_DEADLINE_MARGIN};
pub use insights::InsightsClient;
pub use transport::MAX_ATTEMPTS;
pub use webhooks::WebhooksClient;

/// The metadata key naming the service that makes a call (`flows`, `actions`, ...), for the
/// callee's logs and metrics. Informational: it authenticates nothing (the service token
/// does).
pub const CALLER_HEADER: &str = "x-switchboard-caller";

/// How long a call may take, retries included, unless [`ClientConfig::with_deadline`] says
/// otherwise.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(10);

/// How long connecting to a service may take before the attempt counts as `UNAVAILABLE`.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Where a client connects and how it calls.
#[derive(Clone)]
pub struct ClientConfig {
    /// The service's gRPC URL, `http://host:port`.
    pub url: String,
    /// The service token, sent as `authorization: Bearer <token>`; `None` sends none.
    pub token: Option<String>,
    /// The calling service's name, sent in [`CALLER_HEADER`]; empty sends none.
    pub caller: &'static str,
    /// How long each call may take, retries included.
    pub deadline: Duration,
}

impl ClientConfig {
    /// A configuration for calling the service at `url` as `caller`, with the
    /// [`DEFAULT_DEADLINE`].
    pub fn new(url: impl Into<String>, token: Option<String>, caller: &'static str) -> Self {
        Self {
            url: url.into(),
            token,
            caller,
            deadline: DEFAULT_DEADLINE,
        }
    }

    /// The same configuration with every call cut at `deadline`, retries included.
    pub fn with_deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }
}

/// Never prints the token.
impl fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientConfig")
            .field("url", &self.url)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("caller", &self.caller)
            .field("deadline", &self.deadline)
            .finish()
    }
}

/// Why a client could not be built. Each is a configuration mistake: fix the setting it
/// names; nothing is worth retrying.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The URL is not an `http://` or `https://` URL of a gRPC server.
    #[error("`{url}` is not a gRPC service URL: {reason}")]
    InvalidUrl {
        /// The URL as configured.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The service token cannot travel in a header (it must be visible ASCII).
    #[error("the service token cannot be sent in a gRPC header: it must be visible ASCII")]
    InvalidToken,
    /// The caller's name cannot travel in a header (it must be visible ASCII).
    #[error("`{caller}` cannot be sent as the caller's name: it must be visible ASCII")]
    InvalidCaller {
        /// The name as given.
        caller: &'static str,
    },
}

/// A peer as the host found it: its URL, the service token and the caller's name, with the
/// [`DEFAULT_DEADLINE`].
impl From<switchboard_runtime::service::Peer> for ClientConfig {
    fn from(peer: switchboard_runtime::service::Peer) -> Self {
        Self::new(peer.url, peer.token, peer.caller)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_default_to_ten_seconds_and_hide_the_token() {
        let config = ClientConfig::new("http://localhost:50051", Some("s3cret".into()), "flows");
        assert_eq!(config.deadline, Duration::from_secs(10));
        assert_eq!(
            config
                .clone()
                .with_deadline(Duration::from_secs(3))
                .deadline,
            Duration::from_secs(3)
        );
        let printed = format!("{config:?}");
        assert!(!printed.contains("s3cret"), "{printed}");
    }

    #[test]
    fn bad_settings_are_refused_before_any_call() {
        for url in ["", "localhost:50051", "ftp://localhost:50051", "http://"] {
            let error = ConversationsClient::connect_lazy(&ClientConfig::new(url, None, "x"))
                .expect_err(url);
            assert!(
                matches!(error, ClientError::InvalidUrl { .. }),
                "{url}: {error}"
            );
        }
        let error = ActionsClient::connect_lazy(&ClientConfig::new(
            "http://localhost:1",
            Some("line\nbreak".into()),
            "flows",
        ))
        .expect_err("a token with a line break");
        assert!(matches!(error, ClientError::InvalidToken), "{error}");
        let error =
            FlowsClient::connect_lazy(&ClientConfig::new("http://localhost:1", None, "fl\u{f6}ws"))
                .expect_err("a non-ASCII caller");
        assert!(
            matches!(error, ClientError::InvalidCaller { .. }),
            "{error}"
        );
    }

    #[tokio::test]
    async fn nobody_listening_is_unavailable_after_every_attempt() {
        // Nothing listens on port 1 of loopback: each attempt is refused at once.
        let client = ActionsClient::connect_lazy(
            &ClientConfig::new("http://127.0.0.1:1", None, "flows")
                .with_deadline(Duration::from_secs(5)),
        )
        .unwrap();
        let started = std::time::Instant::now();
        let status = client
            .get_action(switchboard_proto::actions::v1::GetActionRequest::default())
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
        // Two pauses of 50 to 100 ms and 100 to 200 ms between three refused attempts.
        assert!(started.elapsed() >= Duration::from_millis(150));
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn clients_are_shared_across_tasks() {
        fn shareable<T: Clone + Send + Sync + 'static>() {}
        shareable::<ConversationsClient>();
        shareable::<ActionsClient>();
        shareable::<ConnexeaseClient>();
        shareable::<WebhooksClient>();
        shareable::<FlowsClient>();
    }
}
