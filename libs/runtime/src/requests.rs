//! What every service's gRPC layer checks the same way: the ids that go into stream ids,
//! how invalid input is answered, and who a call acts for.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, FieldViolation, StatusExt};

/// Whether `id` is `prefix` followed by 1 to 64 letters, digits, `_` or `-`. Ids are spliced
/// into stream ids (`ws_…/conv_…`), so nothing else is accepted.
pub fn valid_prefixed_id(id: &str, prefix: &str) -> bool {
    id.strip_prefix(prefix).is_some_and(|rest| {
        (1..=64).contains(&rest.len())
            && rest
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    })
}

/// `INVALID_ARGUMENT` with every `(field, description)` in the standard `BadRequest`
/// detail and in the message, which starts with the service's stable `code`.
pub fn invalid_argument(
    code: &str,
    violations: impl IntoIterator<Item = (String, String)>,
) -> Status {
    let violations: Vec<(String, String)> = violations.into_iter().collect();
    let message = format!(
        "{code}: invalid request: {}",
        violations
            .iter()
            .map(|(field, description)| format!("{field}: {description}"))
            .collect::<Vec<_>>()
            .join("; ")
    );
    let details = ErrorDetails::with_bad_request(
        violations
            .into_iter()
            .map(|(field, description)| FieldViolation::new(field, description))
            .collect::<Vec<_>>(),
    );
    Status::with_error_details(Code::InvalidArgument, message, details)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_prefixed_and_plain() {
        assert!(valid_prefixed_id("ws_acme-1", "ws_"));
        for bad in [
            "ws_",
            "acme",
            "ws_a/b",
            "ws_a b",
            &format!("ws_{}", "a".repeat(65)),
        ] {
            assert!(!valid_prefixed_id(bad, "ws_"), "{bad}");
        }
    }

    #[test]
    fn invalid_arguments_carry_every_field() {
        let status = invalid_argument(
            "SB-X-0001",
            [("a".into(), "bad".into()), ("b".into(), "worse".into())],
        );
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(
            status.message(),
            "SB-X-0001: invalid request: a: bad; b: worse"
        );
        let fields: Vec<String> = status
            .get_details_bad_request()
            .unwrap()
            .field_violations
            .into_iter()
            .map(|v| v.field)
            .collect();
        assert_eq!(fields, vec!["a", "b"]);
    }
}

tokio::task_local! {
    /// Who the call being handled acts for; set by [`ActorLayer`].
    static ACTOR: String;
    /// The digest of the call's request without its request id; set by the input check.
    pub(crate) static REQUEST_HASH: String;
}

/// A digest of the request being handled, its `request_id` left out (empty when the call
/// carries no request id, or was not checked): what a service stores beside a request's
/// events so the same request id sent with another body is refused
/// (`switchboard_eventlog::Command::fingerprint`).
pub fn current_request_hash() -> String {
    REQUEST_HASH.try_with(Clone::clone).unwrap_or_default()
}

/// Who the call being handled acts for (`api_key:<id>`, from the
/// `switchboard_contract::headers::ACTOR` metadata the gateway sends); empty when the
/// calling service acts for itself. Command handlers record it in their events' metadata.
pub fn current_actor() -> String {
    ACTOR.try_with(Clone::clone).unwrap_or_default()
}

/// The longest actor taken; anything longer, or not visible ASCII, is ignored.
const ACTOR_BYTES: usize = 128;

/// Makes the `ACTOR` metadata of each call [`current_actor`] while the call is handled.
#[derive(Debug, Clone, Copy, Default)]
pub struct ActorLayer;

impl<S> tower::Layer<S> for ActorLayer {
    type Service = ActorService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ActorService { inner }
    }
}

/// The service produced by [`ActorLayer`].
#[derive(Debug, Clone)]
pub struct ActorService<S> {
    inner: S,
}

impl<S, B> tower::Service<tonic::codegen::http::Request<B>> for ActorService<S>
where
    S: tower::Service<tonic::codegen::http::Request<B>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = futures::future::BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: tonic::codegen::http::Request<B>) -> Self::Future {
        let actor = request
            .headers()
            .get(switchboard_contract::headers::ACTOR)
            .and_then(|v| v.to_str().ok())
            .filter(|v| v.len() <= ACTOR_BYTES && v.bytes().all(|b| b.is_ascii_graphic()))
            .unwrap_or_default()
            .to_owned();
        Box::pin(ACTOR.scope(actor, self.inner.call(request)))
    }
}
