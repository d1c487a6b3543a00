//! What every typed client shares: the lazily connected channel, the headers every call
//! carries, and one unary call with its deadline and its retries on `UNAVAILABLE`.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng as _;
use tokio::time::Instant;
use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Response, Status};

use crate::{CALLER_HEADER, CONNECT_TIMEOUT, ClientConfig, ClientError};

/// How many times one call is sent at most, the first included, while the callee answers
/// `UNAVAILABLE` (and the deadline leaves room).
pub const MAX_ATTEMPTS: u32 = 3;

/// The pause before the first retry; each later one doubles, up to [`MAX_BACKOFF`], and
/// each is cut to a random point in its upper half so callers do not retry in step.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// A connection to one service and what every call to it carries.
#[derive(Clone)]
pub(crate) struct Transport {
    /// The service's short name (`conversations`), for errors and logs.
    service: &'static str,
    /// Connects on first use; clones share it.
    channel: Channel,
    /// `authorization` and the caller's name, made once.
    headers: Arc<Headers>,
    /// How long each call may take, retries included.
    deadline: Duration,
    /// The trace every call joins, instead of the current span's; see
    /// [`Transport::with_traceparent`].
    traceparent: Option<AsciiMetadataValue>,
    /// Who every call acts for; see [`Transport::with_actor`].
    actor: Option<AsciiMetadataValue>,
}

/// The headers every call of one client carries.
struct Headers {
    /// `Bearer <token>`, marked sensitive so it is never logged.
    authorization: Option<AsciiMetadataValue>,
    /// The caller's name, for [`CALLER_HEADER`].
    caller: Option<AsciiMetadataValue>,
}

impl Transport {
    /// Checks the configuration and makes the channel; nothing is connected yet. Must be
    /// called inside a Tokio runtime (the channel's worker is spawned on it).
    pub(crate) fn connect_lazy(
        config: &ClientConfig,
        service: &'static str,
    ) -> Result<Self, ClientError> {
        let invalid_url = |reason: String| ClientError::InvalidUrl {
            url: config.url.clone(),
            reason,
        };
        let endpoint =
            Endpoint::from_shared(config.url.clone()).map_err(|e| invalid_url(e.to_string()))?;
        if !matches!(endpoint.uri().scheme_str(), Some("http" | "https")) {
            return Err(invalid_url("it must start with http:// or https://".into()));
        }
        if endpoint.uri().host().is_none_or(str::is_empty) {
            return Err(invalid_url("it names no host".into()));
        }
        let authorization = match &config.token {
            None => None,
            Some(token) => {
                let mut value = MetadataValue::try_from(format!("Bearer {token}"))
                    .map_err(|_| ClientError::InvalidToken)?;
                value.set_sensitive(true);
                Some(value)
            }
        };
        let caller = match config.caller {
            "" => None,
            // Header values may carry bytes past ASCII; a service name may not.
            caller if !caller.bytes().all(|b| b.is_ascii_graphic()) => {
                return Err(ClientError::InvalidCaller { caller });
            }
            caller => Some(
                MetadataValue::try_from(caller)
                    .map_err(|_| ClientError::InvalidCaller { caller })?,
            ),
        };
        Ok(Self {
            service,
            channel: endpoint.connect_timeout(CONNECT_TIMEOUT).connect_lazy(),
            headers: Arc::new(Headers {
                authorization,
                caller,
            }),
            deadline: config.deadline,
            traceparent: None,
            actor: None,
        })
    }

    /// How long each call may take, retries included.
    pub(crate) fn deadline(&self) -> Duration {
        self.deadline
    }

    /// The same connection with a different deadline.
    pub(crate) fn with_deadline(&self, deadline: Duration) -> Self {
        Self {
            deadline,
            ..self.clone()
        }
    }

    /// The same connection, with every call joining the trace of `traceparent` instead of
    /// the current span's. An empty or malformed value pins nothing.
    pub(crate) fn with_traceparent(&self, traceparent: &str) -> Self {
        Self {
            traceparent: MetadataValue::try_from(traceparent)
                .ok()
                .filter(|_| !traceparent.is_empty()),
            ..self.clone()
        }
    }

    /// The same connection, with every call acting for `actor` (`api_key:<id>`), which the
    /// callee records in the events it appends. A value that cannot be a header acts for
    /// nobody.
    pub(crate) fn with_actor(&self, actor: &str) -> Self {
        Self {
            actor: MetadataValue::try_from(actor)
                .ok()
                .filter(|_| !actor.is_empty() && actor.bytes().all(|b| b.is_ascii_graphic())),
            ..self.clone()
        }
    }

    /// One unary call of `rpc` with `message`, sent by `send` (the generated stub's
    /// method) on this connection: within `deadline`, retried while the answer is
    /// `UNAVAILABLE`.
    pub(crate) async fn unary<T, R, F, Fut>(
        &self,
        rpc: &'static str,
        deadline: Duration,
        attempts: u32,
        message: T,
        mut send: F,
    ) -> Result<R, Status>
    where
        T: Clone,
        F: FnMut(Channel, Request<T>) -> Fut,
        Fut: Future<Output = Result<Response<R>, Status>>,
    {
        let started = Instant::now();
        let ends = started + deadline;
        // Read once, before any await: the span current now is the caller's.
        let traceparent = self.traceparent.clone().or_else(|| {
            switchboard_runtime::telemetry::current_traceparent()
                .and_then(|t| MetadataValue::try_from(t).ok())
        });
        let mut message = Some(message);
        let mut attempt = 1;
        loop {
            let remaining = ends.saturating_duration_since(Instant::now());
            let this = match (attempt < attempts, &mut message) {
                (true, Some(message)) => message.clone(),
                (_, message) => match message.take() {
                    Some(message) => message,
                    None => return Err(self.deadline_exceeded(rpc, deadline)),
                },
            };
            if remaining.is_zero() {
                return Err(self.deadline_exceeded(rpc, deadline));
            }
            let request = self.request(this, traceparent.clone(), remaining);
            let status =
                match tokio::time::timeout(remaining, send(self.channel.clone(), request)).await {
                    Ok(Ok(response)) => return Ok(response.into_inner()),
                    Ok(Err(status)) => status,
                    Err(_) => return Err(self.deadline_exceeded(rpc, deadline)),
                };
            // tonic's own timer (the `grpc-timeout` we sent, here or at the callee) answers
            // CANCELLED; a deadline that ran out is DEADLINE_EXCEEDED whoever noticed it.
            if status.code() == Code::Cancelled && Instant::now() >= ends {
                return Err(self.deadline_exceeded(rpc, deadline));
            }
            if status.code() != Code::Unavailable {
                return Err(status);
            }
            let Some(pause) = pause_before_retry(
                attempt,
                attempts,
                ends.saturating_duration_since(Instant::now()),
                rand::rng().random_range(0.5..=1.0),
            ) else {
                return Err(status);
            };
            tracing::debug!(
                service = self.service,
                rpc,
                attempt,
                error = %status.message(),
                "the service is unavailable; retrying"
            );
            tokio::time::sleep(pause).await;
            attempt += 1;
        }
    }

    /// `message` with this client's headers, the trace context and the time it has left.
    fn request<T>(
        &self,
        message: T,
        traceparent: Option<AsciiMetadataValue>,
        remaining: Duration,
    ) -> Request<T> {
        let mut request = Request::new(message);
        request.set_timeout(remaining);
        let metadata = request.metadata_mut();
        if let Some(value) = &self.headers.authorization {
            metadata.insert("authorization", value.clone());
        }
        if let Some(value) = &self.headers.caller {
            metadata.insert(CALLER_HEADER, value.clone());
        }
        if let Some(value) = traceparent {
            metadata.insert("traceparent", value);
        }
        if let Some(value) = &self.actor {
            metadata.insert(switchboard_contract::headers::ACTOR, value.clone());
        }
        request
    }

    fn deadline_exceeded(&self, rpc: &str, deadline: Duration) -> Status {
        Status::deadline_exceeded(format!(
            "{}.{rpc} did not answer within {} ms",
            self.service,
            deadline.as_millis()
        ))
    }
}

/// How long to wait before retrying after failed attempt number `attempt` (1 for the
/// first) of at most `attempts`, or `None` when no retry is left or the pause would not fit in `remaining`.
/// `jitter` (in `0.5..=1.0`) scales the pause.
fn pause_before_retry(
    attempt: u32,
    attempts: u32,
    remaining: Duration,
    jitter: f64,
) -> Option<Duration> {
    if attempt >= attempts {
        return None;
    }
    let backoff = FIRST_BACKOFF
        .saturating_mul(1 << (attempt - 1).min(16))
        .min(MAX_BACKOFF)
        .mul_f64(jitter.clamp(0.5, 1.0));
    (backoff < remaining).then_some(backoff)
}

/// Never prints the token.
impl fmt::Debug for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transport")
            .field("service", &self.service)
            .field("deadline", &self.deadline)
            .field("authenticated", &self.headers.authorization.is_some())
            .field("caller", &self.headers.caller)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    fn transport(deadline: Duration) -> Transport {
        let config = ClientConfig::new("http://127.0.0.1:1", Some("tok".into()), "flows")
            .with_deadline(deadline);
        Transport::connect_lazy(&config, "conversations").unwrap()
    }

    #[test]
    fn backoff_doubles_is_bounded_and_fits_the_deadline() {
        let plenty = Duration::from_secs(60);
        assert_eq!(
            pause_before_retry(1, MAX_ATTEMPTS, plenty, 1.0),
            Some(Duration::from_millis(100))
        );
        assert_eq!(
            pause_before_retry(2, MAX_ATTEMPTS, plenty, 0.5),
            Some(Duration::from_millis(100))
        );
        assert_eq!(
            pause_before_retry(MAX_ATTEMPTS, MAX_ATTEMPTS, plenty, 1.0),
            None
        );
        assert_eq!(
            pause_before_retry(1, MAX_ATTEMPTS, Duration::from_millis(50), 1.0),
            None,
            "no retry that cannot start before the deadline"
        );
    }

    #[tokio::test]
    async fn unavailable_is_retried_until_the_attempts_run_out() {
        let client = transport(Duration::from_secs(10));
        let seen = Mutex::new(Vec::new());
        let status = client
            .unary(
                "set_status",
                client.deadline(),
                MAX_ATTEMPTS,
                7u32,
                |_, request| {
                    let metadata = request.metadata();
                    seen.lock().unwrap().push((
                        *request.get_ref(),
                        metadata.get("authorization").cloned(),
                        metadata.get(CALLER_HEADER).cloned(),
                        metadata.get("grpc-timeout").is_some(),
                    ));
                    async { Err::<Response<()>, _>(Status::unavailable("starting")) }
                },
            )
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unavailable);
        let seen = seen.into_inner().unwrap();
        assert_eq!(seen.len(), MAX_ATTEMPTS as usize);
        for (message, authorization, caller, timeout) in seen {
            assert_eq!(message, 7);
            assert_eq!(authorization.unwrap(), "Bearer tok");
            assert_eq!(caller.unwrap(), "flows");
            assert!(timeout);
        }
    }

    #[tokio::test]
    async fn a_call_made_once_is_not_retried_even_when_unavailable() {
        let client = transport(Duration::from_secs(10));
        let calls = Mutex::new(0);
        let status = client
            .unary(
                "run_operation",
                client.deadline(),
                1,
                7u32,
                |_, _request: Request<u32>| {
                    *calls.lock().unwrap() += 1;
                    async { Err::<Response<()>, _>(Status::unavailable("connexease is down")) }
                },
            )
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(*calls.lock().unwrap(), 1);
    }

    #[tokio::test]
    async fn other_codes_are_never_retried() {
        let client = transport(Duration::from_secs(10));
        for code in [
            Code::Aborted,
            Code::Internal,
            Code::Unknown,
            Code::ResourceExhausted,
            Code::FailedPrecondition,
        ] {
            let calls = Mutex::new(0);
            let status = client
                .unary(
                    "add_message",
                    client.deadline(),
                    MAX_ATTEMPTS,
                    (),
                    |_, _| {
                        *calls.lock().unwrap() += 1;
                        async move { Err::<Response<()>, _>(Status::new(code, "no")) }
                    },
                )
                .await
                .unwrap_err();
            assert_eq!(status.code(), code);
            assert_eq!(*calls.lock().unwrap(), 1, "{code:?}");
        }
    }

    #[tokio::test]
    async fn a_retry_that_succeeds_answers() {
        let client = transport(Duration::from_secs(10));
        let calls = Mutex::new(0);
        let answer = client
            .unary(
                "get_conversation",
                client.deadline(),
                MAX_ATTEMPTS,
                (),
                |_, _| {
                    let mut calls = calls.lock().unwrap();
                    *calls += 1;
                    let first = *calls == 1;
                    async move {
                        if first {
                            Err(Status::unavailable("starting"))
                        } else {
                            Ok(Response::new("answer"))
                        }
                    }
                },
            )
            .await
            .unwrap();
        assert_eq!(answer, "answer");
    }

    #[tokio::test]
    async fn the_deadline_covers_the_whole_call() {
        let client = transport(Duration::from_millis(150));
        let started = std::time::Instant::now();
        let status = client
            .unary(
                "list_messages",
                client.deadline(),
                MAX_ATTEMPTS,
                (),
                |_, _| async {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    Ok(Response::new(()))
                },
            )
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[tokio::test]
    async fn a_pinned_trace_is_sent_and_an_empty_one_is_not() {
        let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        for (pinned, expected) in [(traceparent, Some(traceparent)), ("", None)] {
            let client = transport(Duration::from_secs(1)).with_traceparent(pinned);
            let seen = Mutex::new(None);
            client
                .unary(
                    "get_action",
                    client.deadline(),
                    MAX_ATTEMPTS,
                    (),
                    |_, request| {
                        *seen.lock().unwrap() = request
                            .metadata()
                            .get("traceparent")
                            .map(|v| v.to_str().unwrap().to_owned());
                        async { Ok(Response::new(())) }
                    },
                )
                .await
                .unwrap();
            assert_eq!(seen.into_inner().unwrap().as_deref(), expected);
        }
    }
}
