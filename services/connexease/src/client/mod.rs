//! The Connexease API as the service uses it, behind a trait, and its HTTP implementation.
//!
//! What Connexease documents (help.connexease.com/dev and docs.connexease.com) and what we
//! assume are kept apart: [`documented`] holds the calls its pages describe (the account
//! access token and the legacy JWT flow, `/stats`, templates), each with its page named;
//! [`assumed`] holds the operations and directory reads the seeds need and no page
//! publishes, each marked as assumed. Both follow the documented conventions: paths end in
//! a slash, ids are `uuid`s, answers are bare JSON, errors are `{"detail": …}` or
//! `{"non_field_errors": […]}` (or a field's list of messages).
//!
//! Every request: the connection's credentials, a per-connection request rate, and
//! retries on 429 (after `Retry-After`, or the delay the body names) and on 5xx and on
//! failures to connect, with backoff. A change whose outcome is unknown (the request went
//! out and no answer came) is never sent again blindly: its target is read back first,
//! and it is sent again only when the change is not there. No idempotency key is
//! documented, so none is sent.

pub mod assumed;
pub mod documented;

use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use reqwest::Method;
use serde_json::Value as Json;
use switchboard_outbound::{GuardedClient, OutboundError};
use switchboard_secrets::Secret;

/// Who a conversation is assigned to: decided by the domain, sent by [`ConnexeaseApi::assign`].
pub use crate::domain::AssignTo;

/// How requests authenticate (help.connexease.com/dev, "Authentication").
#[derive(Debug, Clone)]
pub enum Auth {
    /// An account access token, sent as `Authorization: Bearer <token>`.
    Bearer(Secret),
    /// The legacy flow: `POST /jwt/` with the username and password answers a token valid
    /// for 24 hours, sent as `Authorization: JWT <token>`.
    Jwt { username: String, password: Secret },
}

/// Where and as whom to call.
#[derive(Debug, Clone)]
pub struct Target {
    pub workspace_id: String,
    pub base_url: String,
    pub auth: Auth,
    /// Requests a second for this connection.
    pub rate_per_second: u32,
}

/// What Connexease answered, and after how many attempts.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub body: Json,
    pub attempts: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    #[error("Connexease refused the credentials ({0}); reconnect with valid ones")]
    Unauthorized(String),
    #[error("Connexease: {0}")]
    NotFound(String),
    #[error("Connexease refused the value: {0}")]
    Invalid(String),
    #[error("Connexease kept answering 429 Too Many Requests ({attempts} attempts)")]
    RateLimited { attempts: u32 },
    #[error("Connexease answered {status}: {message} ({attempts} attempts)")]
    Server {
        status: u16,
        message: String,
        attempts: u32,
    },
    #[error("Connexease cannot be reached: {message} ({attempts} attempts)")]
    Network { message: String, attempts: u32 },
    /// A change went out and no answer came, and whether it happened cannot be read back.
    #[error(
        "Connexease did not answer a change ({message}) and it cannot be read back; \
         check it in Connexease before running it again"
    )]
    Unknown { message: String },
    #[error("{0}")]
    Blocked(String),
}

/// The operations the service needs from Connexease.
#[async_trait]
pub trait ConnexeaseApi: Send + Sync {
    /// Checks the connection with a documented read (`GET /templates/`): the number of
    /// templates the account has.
    async fn check(&self, target: &Target) -> Result<Answer, ClientError>;
    /// `GET /stats` (documented): per-channel and per-agent counters.
    async fn stats(&self, target: &Target) -> Result<Answer, ClientError>;
    /// `{"groups": [...], "agents": [...], "fields": [...]}` (assumed reads).
    async fn directory(&self, target: &Target) -> Result<Answer, ClientError>;
    async fn conversation(&self, target: &Target, id: &str) -> Result<Answer, ClientError>;
    async fn assign(
        &self,
        target: &Target,
        conversation: &str,
        to: &AssignTo,
    ) -> Result<Answer, ClientError>;
    async fn set_archived(
        &self,
        target: &Target,
        conversation: &str,
        archived: bool,
    ) -> Result<Answer, ClientError>;
    async fn set_conversation_fields(
        &self,
        target: &Target,
        conversation: &str,
        fields: &BTreeMap<String, Json>,
    ) -> Result<Answer, ClientError>;
    /// `update`: any of `name`, `email`, `phone`, `social` (an object).
    async fn update_customer(
        &self,
        target: &Target,
        customer: &str,
        update: &Json,
    ) -> Result<Answer, ClientError>;
    async fn set_customer_fields(
        &self,
        target: &Target,
        customer: &str,
        fields: &BTreeMap<String, Json>,
    ) -> Result<Answer, ClientError>;
}

/// How requests are retried.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// The longest `Retry-After` honoured; a longer one ends the retries.
    pub max_retry_after: Duration,
    pub timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: 5,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(5),
            max_retry_after: Duration::from_secs(30),
            timeout: Duration::from_secs(15),
        }
    }
}

/// The HTTP implementation, through the SSRF guard.
#[derive(Clone)]
pub struct HttpConnexease {
    client: GuardedClient,
    policy: RetryPolicy,
    limiters: Arc<Mutex<Limiters>>,
    tokens: Arc<Mutex<HashMap<TokenKey, Token>>>,
    pacing: bool,
}

/// A rate limiter per connection (and rate, so a changed rate takes effect).
type Limiters = HashMap<(String, u32), Arc<DefaultDirectRateLimiter>>;

/// Whose JWT: the workspace, the base URL, the username and a digest of the password (a
/// changed password is never answered with the old one's token).
type TokenKey = (String, String, String, [u8; 32]);

fn token_key(target: &Target, username: &str, password: &Secret) -> TokenKey {
    use sha2::Digest as _;
    (
        target.workspace_id.clone(),
        target.base_url.clone(),
        username.to_owned(),
        sha2::Sha256::digest(password.expose().as_bytes()).into(),
    )
}

/// The most of an answer read: a server cannot make us buffer more.
pub const MAX_ANSWER_BYTES: usize = 8 * 1024 * 1024;

/// A JWT and when to fetch the next one.
#[derive(Clone)]
struct Token {
    value: Secret,
    refresh_at: Instant,
}

/// A JWT is valid for 24 hours (documented); the next is fetched an hour before.
const JWT_REFRESH_AFTER: Duration = Duration::from_secs(23 * 3600);

/// One request: what to send, and for a change, how to learn whether it happened when no
/// answer came.
pub struct Call {
    pub method: Method,
    pub path: String,
    pub body: Option<Json>,
    pub read_back: Option<ReadBack>,
}

impl Call {
    pub fn get(path: impl Into<String>) -> Self {
        Self {
            method: Method::GET,
            path: path.into(),
            body: None,
            read_back: None,
        }
    }

    /// A change: `method` with `body`.
    pub fn change(method: Method, path: impl Into<String>, body: Option<Json>) -> Self {
        Self {
            method,
            path: path.into(),
            body,
            read_back: None,
        }
    }

    /// How to tell, reading `path`, whether the change happened.
    pub fn read_back(
        mut self,
        path: impl Into<String>,
        applied: impl Fn(&Json) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.read_back = Some(ReadBack {
            path: path.into(),
            applied: Box::new(applied),
        });
        self
    }
}

/// Reads a change's target back: `applied` says whether the change is there.
pub struct ReadBack {
    pub path: String,
    pub applied: Box<dyn Fn(&Json) -> bool + Send + Sync>,
}

/// How one attempt ended, before the retry policy.
enum Attempt {
    Answered(u16, Option<Duration>, Json, String),
    /// Nothing was sent: connecting failed.
    NotSent(String),
    /// It was sent (or may have been) and no answer came.
    NoAnswer(String),
}

impl HttpConnexease {
    pub fn new(client: GuardedClient, policy: RetryPolicy) -> Self {
        Self {
            client,
            policy,
            limiters: Arc::default(),
            tokens: Arc::default(),
            pacing: true,
        }
    }

    /// Without the per-connection pacing: only for measuring our own overhead against a
    /// simulator (`make bench`); Connexease itself must be paced.
    pub fn without_pacing(mut self) -> Self {
        self.pacing = false;
        self
    }

    /// Waits until the connection's rate admits one more request.
    async fn pace(&self, target: &Target) {
        if !self.pacing {
            return;
        }
        let rate = NonZeroU32::new(target.rate_per_second.max(1)).expect("at least one");
        let limiter = {
            let mut limiters = self.limiters.lock().expect("limiters");
            limiters
                .entry((target.workspace_id.clone(), target.rate_per_second))
                .or_insert_with(|| Arc::new(RateLimiter::direct(Quota::per_second(rate))))
                .clone()
        };
        limiter.until_ready().await;
    }

    /// The `Authorization` header for `target`: its access token, or a JWT, fetched when
    /// there is none or it is close to expiring.
    async fn authorization(&self, target: &Target) -> Result<String, ClientError> {
        match &target.auth {
            Auth::Bearer(token) => Ok(format!("Bearer {}", token.expose())),
            Auth::Jwt { username, password } => {
                let key = token_key(target, username, password);
                let cached = self.tokens.lock().expect("tokens").get(&key).cloned();
                if let Some(token) = cached.filter(|t| Instant::now() < t.refresh_at) {
                    return Ok(format!("JWT {}", token.value.expose()));
                }
                let token = self.jwt(target, username, password).await?;
                let header = format!("JWT {}", token.expose());
                self.tokens.lock().expect("tokens").insert(
                    key,
                    Token {
                        value: token,
                        refresh_at: Instant::now() + JWT_REFRESH_AFTER,
                    },
                );
                Ok(header)
            }
        }
    }

    /// Forgets `target`'s JWT, after Connexease refused it.
    fn forget_token(&self, target: &Target) -> bool {
        let Auth::Jwt { username, password } = &target.auth else {
            return false;
        };
        let key = token_key(target, username, password);
        self.tokens.lock().expect("tokens").remove(&key).is_some()
    }

    /// One attempt of `method path` with `body` and `authorization` (none for `/jwt/`).
    async fn attempt(
        &self,
        target: &Target,
        method: &Method,
        path: &str,
        body: Option<&Json>,
        authorization: Option<&str>,
    ) -> Result<Attempt, ClientError> {
        self.pace(target).await;
        let url = format!("{}{path}", target.base_url.trim_end_matches('/'));
        let mut request = self
            .client
            .inner()
            .request(method.clone(), &url)
            .timeout(self.policy.timeout)
            .header("accept", "application/json");
        if let Some(authorization) = authorization {
            request = request.header("authorization", authorization);
        }
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        let request = request
            .build()
            .map_err(|e| ClientError::Invalid(format!("the request cannot be built: {e}")))?;
        let response = match self.client.execute(request).await {
            Ok(response) => response,
            Err(OutboundError::Blocked(blocked)) => {
                return Err(ClientError::Blocked(blocked.to_string()));
            }
            Err(OutboundError::Http(e)) if e.is_connect() => {
                return Ok(Attempt::NotSent(describe(&e)));
            }
            Err(OutboundError::Http(e)) => return Ok(Attempt::NoAnswer(describe(&e))),
        };
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let (body, more) = match switchboard_outbound::read_capped(response, MAX_ANSWER_BYTES).await
        {
            Ok(read) => read,
            Err(e) => return Ok(Attempt::NoAnswer(describe(&e))),
        };
        if more {
            let message = format!("the answer is larger than {MAX_ANSWER_BYTES} bytes");
            return Ok(Attempt::Answered(502, None, Json::Null, message));
        }
        let parsed: Json = serde_json::from_slice(&body).unwrap_or(Json::Null);
        let message = error_message(&parsed)
            .unwrap_or_else(|| String::from_utf8_lossy(&body).chars().take(200).collect());
        let retry_after = retry_after.or_else(|| body_retry_after(&parsed));
        Ok(Attempt::Answered(status, retry_after, parsed, message))
    }

    /// Sends `call` with the retry policy: 429 after the delay named, 5xx and failures to
    /// connect with backoff; a change that got no answer is read back before it is sent
    /// again, and fails [`ClientError::Unknown`] when it cannot be.
    pub async fn send(&self, target: &Target, call: Call) -> Result<Answer, ClientError> {
        let mut backoff = self.policy.initial_backoff;
        let mut attempts = 0;
        let mut renewed = false;
        loop {
            attempts += 1;
            let last_attempt = attempts >= self.policy.attempts;
            let authorization = self.authorization(target).await?;
            let attempt = self
                .attempt(
                    target,
                    &call.method,
                    &call.path,
                    call.body.as_ref(),
                    Some(&authorization),
                )
                .await?;
            let wait = match attempt {
                Attempt::Answered(200..=299, _, body, _) => return Ok(Answer { body, attempts }),
                Attempt::Answered(401, ..) if !renewed && self.forget_token(target) => {
                    // The JWT expired early or was revoked: fetch a new one, once.
                    renewed = true;
                    attempts -= 1;
                    continue;
                }
                Attempt::Answered(401 | 403, _, _, message) => {
                    return Err(ClientError::Unauthorized(message));
                }
                Attempt::Answered(404, _, _, message) => {
                    return Err(ClientError::NotFound(message));
                }
                Attempt::Answered(400 | 409 | 422, _, _, message) => {
                    return Err(ClientError::Invalid(message));
                }
                Attempt::Answered(429, retry_after, ..) => {
                    let wait = retry_after.unwrap_or(backoff);
                    if last_attempt || wait > self.policy.max_retry_after {
                        return Err(ClientError::RateLimited { attempts });
                    }
                    wait
                }
                // A change answered 500, 502 or 504 (a proxy's timeout) may have happened:
                // it is read back like a change that got no answer. 503 says it did not.
                Attempt::Answered(status @ (500 | 502 | 504), _, _, message)
                    if call.method != Method::GET =>
                {
                    let message = format!("answered {status}: {message}");
                    match self.read_back(target, &call, message, attempts).await? {
                        Some(answer) => return Ok(answer),
                        None if last_attempt => {
                            return Err(ClientError::Server {
                                status,
                                message: "the change is not there".into(),
                                attempts,
                            });
                        }
                        None => backoff,
                    }
                }
                Attempt::Answered(status @ 500..=599, retry_after, _, message) => {
                    if last_attempt {
                        return Err(ClientError::Server {
                            status,
                            message,
                            attempts,
                        });
                    }
                    retry_after
                        .unwrap_or(backoff)
                        .min(self.policy.max_retry_after)
                }
                Attempt::Answered(status, _, _, message) => {
                    return Err(ClientError::Server {
                        status,
                        message,
                        attempts,
                    });
                }
                Attempt::NotSent(message) => {
                    if last_attempt {
                        return Err(ClientError::Network { message, attempts });
                    }
                    backoff
                }
                Attempt::NoAnswer(message) if call.method == Method::GET => {
                    if last_attempt {
                        return Err(ClientError::Network { message, attempts });
                    }
                    backoff
                }
                Attempt::NoAnswer(message) => {
                    match self
                        .read_back(target, &call, message.clone(), attempts)
                        .await?
                    {
                        Some(answer) => return Ok(answer),
                        None if last_attempt => {
                            return Err(ClientError::Network { message, attempts });
                        }
                        None => backoff,
                    }
                }
            };
            tokio::time::sleep(wait).await;
            backoff = (backoff * 2).min(self.policy.max_backoff);
        }
    }
}

impl HttpConnexease {
    /// Whether a change whose outcome is unknown (`message` says why) happened, read back:
    /// its target's answer when it did, `None` when it did not (it may be sent again), and
    /// [`ClientError::Unknown`] when it cannot be told.
    async fn read_back(
        &self,
        target: &Target,
        call: &Call,
        message: String,
        attempts: u32,
    ) -> Result<Option<Answer>, ClientError> {
        let Some(read_back) = &call.read_back else {
            return Err(ClientError::Unknown { message });
        };
        let now = Box::pin(self.send(target, Call::get(read_back.path.clone())))
            .await
            .map_err(|e| ClientError::Unknown {
                message: format!("{message}; reading it back: {e}"),
            })?;
        Ok((read_back.applied)(&now.body).then(|| Answer {
            body: now.body,
            attempts: attempts + now.attempts,
        }))
    }
}

/// What a documented error body says: `detail`, `non_field_errors`, or each field's
/// messages (`{"email": ["Enter a valid email address."]}`).
pub fn error_message(body: &Json) -> Option<String> {
    if let Some(detail) = body["detail"].as_str() {
        return Some(detail.to_owned());
    }
    let strings = |v: &Json| -> Vec<String> {
        match v {
            Json::String(s) => vec![s.clone()],
            Json::Array(items) => items
                .iter()
                .filter_map(|i| i.as_str().map(str::to_owned))
                .collect(),
            _ => Vec::new(),
        }
    };
    let general = strings(&body["non_field_errors"]);
    if !general.is_empty() {
        return Some(general.join("; "));
    }
    let Json::Object(fields) = body else {
        return None;
    };
    let named: Vec<String> = fields
        .iter()
        .filter_map(|(field, v)| {
            let messages = strings(v);
            (!messages.is_empty()).then(|| format!("{field}: {}", messages.join(" ")))
        })
        .collect();
    (!named.is_empty()).then(|| named.join("; "))
}

/// The delay a throttled answer's body names: "Request was throttled. Expected available
/// in 12 seconds."
pub fn body_retry_after(body: &Json) -> Option<Duration> {
    let detail = body["detail"].as_str()?;
    let after = &detail[detail.find("available in ")? + "available in ".len()..];
    let number: String = after
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    let seconds: f64 = number.parse().ok()?;
    // Whatever the body says, never more than a day (and never a panic).
    Duration::try_from_secs_f64(seconds.ceil().min(86_400.0)).ok()
}

fn describe(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        return "no answer in time".into();
    }
    let mut message = if e.is_connect() {
        "could not connect".to_owned()
    } else {
        "the connection failed".to_owned()
    };
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        message = format!("{message}: {cause}");
        source = cause.source();
    }
    message
}

/// An id as one path segment: nothing in it can change the path; a uuid stays as it is
/// (RFC 3986's unreserved characters are not encoded).
fn segment(id: &str) -> String {
    const RESERVED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~');
    let encoded = percent_encoding::utf8_percent_encode(id, RESERVED).to_string();
    // `.` and `..` alone would climb the path.
    match encoded.as_str() {
        "." | ".." => encoded.replace('.', "%2E"),
        _ => encoded,
    }
}

pub use crate::hooks::uuid_at;

/// The items of a list answer: a bare array, or a page's `results`.
fn items(body: &Json) -> Vec<Json> {
    body.as_array()
        .or_else(|| body["results"].as_array())
        .cloned()
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn documented_error_bodies_are_read() {
        assert_eq!(
            error_message(&json!({"detail": "Not found."})).as_deref(),
            Some("Not found.")
        );
        assert_eq!(
            error_message(&json!({"non_field_errors": ["Unable to log in.", "Twice."]})).as_deref(),
            Some("Unable to log in.; Twice.")
        );
        assert_eq!(
            error_message(&json!({"email": ["Enter a valid email address."]})).as_deref(),
            Some("email: Enter a valid email address.")
        );
        assert_eq!(error_message(&json!({"ok": true})), None);
    }

    #[test]
    fn an_id_is_one_path_segment_and_a_uuid_stays_as_it_is() {
        let uuid = "3f8a1c2e-9b7d-4e6f-8a5c-2d1e0f9a8b7c";
        assert_eq!(segment(uuid), uuid);
        assert_eq!(segment("a/b?c#d"), "a%2Fb%3Fc%23d");
        assert_eq!(segment(".."), "%2E%2E");
        assert_eq!(segment("."), "%2E");
    }

    #[test]
    fn a_throttled_body_names_the_delay() {
        let throttled =
            json!({"detail": "Request was throttled. Expected available in 12 seconds."});
        assert_eq!(body_retry_after(&throttled), Some(Duration::from_secs(12)));
        let one = json!({"detail": "Request was throttled. Expected available in 1 second."});
        assert_eq!(body_retry_after(&one), Some(Duration::from_secs(1)));
        assert_eq!(body_retry_after(&json!({"detail": "Not found."})), None);
        let endless =
            json!({"detail": format!("Expected available in 9{} seconds.", "9".repeat(400))});
        assert_eq!(
            body_retry_after(&endless),
            Some(Duration::from_secs(86_400)),
            "a day at most, never a panic"
        );
    }
}
