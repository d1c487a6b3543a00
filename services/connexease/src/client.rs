//! The Connexease API as the service uses it, behind a trait, and its HTTP implementation
//! against the endpoint set of `services/connexease/README.md`: bearer token, the
//! `Idempotency-Key` of the operation, a per-connection request rate, and retries on 429
//! (after `Retry-After`) and on 5xx and network failures, with backoff.

use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use reqwest::Method;
use serde_json::{Value as Json, json};
use switchboard_outbound::{GuardedClient, OutboundError};
use switchboard_secrets::Secret;

/// Who a conversation is assigned to: decided by the domain, sent by [`ConnexeaseApi::assign`].
pub use crate::domain::AssignTo;

/// Where and as whom to call.
#[derive(Debug, Clone)]
pub struct Target {
    pub workspace_id: String,
    pub base_url: String,
    pub token: Secret,
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
    #[error("Connexease refused the access token (401); reconnect with a valid token")]
    Unauthorized,
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
    #[error("{0}")]
    Blocked(String),
}

/// The operations the service needs from Connexease.
#[async_trait]
pub trait ConnexeaseApi: Send + Sync {
    /// The account the token belongs to: `{"id", "name"}`.
    async fn account(&self, target: &Target) -> Result<Answer, ClientError>;
    /// `{"groups": [...], "agents": [...], "fields": [...]}`.
    async fn directory(&self, target: &Target) -> Result<Answer, ClientError>;
    async fn conversation(&self, target: &Target, id: &str) -> Result<Answer, ClientError>;
    async fn assign(
        &self,
        target: &Target,
        conversation: &str,
        to: &AssignTo,
        key: &str,
    ) -> Result<Answer, ClientError>;
    async fn set_archived(
        &self,
        target: &Target,
        conversation: &str,
        archived: bool,
        key: &str,
    ) -> Result<Answer, ClientError>;
    async fn set_conversation_fields(
        &self,
        target: &Target,
        conversation: &str,
        fields: &BTreeMap<String, Json>,
        key: &str,
    ) -> Result<Answer, ClientError>;
    /// `update`: any of `name`, `email`, `phone`, `social` (an object).
    async fn update_customer(
        &self,
        target: &Target,
        customer: &str,
        update: &Json,
        key: &str,
    ) -> Result<Answer, ClientError>;
    async fn set_customer_fields(
        &self,
        target: &Target,
        customer: &str,
        fields: &BTreeMap<String, Json>,
        key: &str,
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
    pacing: bool,
}

/// A rate limiter per connection (and rate, so a changed rate takes effect).
type Limiters = HashMap<(String, u32), Arc<DefaultDirectRateLimiter>>;

impl HttpConnexease {
    pub fn new(client: GuardedClient, policy: RetryPolicy) -> Self {
        Self {
            client,
            policy,
            limiters: Arc::default(),
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

    async fn send(
        &self,
        target: &Target,
        method: Method,
        path: &str,
        body: Option<&Json>,
        key: Option<&str>,
    ) -> Result<Answer, ClientError> {
        let url = format!("{}{path}", target.base_url.trim_end_matches('/'));
        let mut backoff = self.policy.initial_backoff;
        let mut attempts = 0;
        loop {
            attempts += 1;
            self.pace(target).await;
            let mut request = self
                .client
                .inner()
                .request(method.clone(), &url)
                .timeout(self.policy.timeout)
                .bearer_auth(target.token.expose())
                .header("accept", "application/json");
            if let Some(key) = key {
                request = request.header("idempotency-key", key);
            }
            if let Some(body) = body {
                request = request
                    .header("content-type", "application/json")
                    .body(body.to_string());
            }
            let request = request
                .build()
                .map_err(|e| ClientError::Invalid(format!("the request cannot be built: {e}")))?;
            let last_attempt = attempts >= self.policy.attempts;
            let response = match self.client.execute(request).await {
                Ok(response) => response,
                Err(OutboundError::Blocked(blocked)) => {
                    return Err(ClientError::Blocked(blocked.to_string()));
                }
                Err(OutboundError::Http(e)) => {
                    if last_attempt {
                        return Err(ClientError::Network {
                            message: describe(&e),
                            attempts,
                        });
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(self.policy.max_backoff);
                    continue;
                }
            };
            let status = response.status().as_u16();
            let retry_after = response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            let text = response.text().await.unwrap_or_default();
            let parsed: Json = serde_json::from_str(&text).unwrap_or(Json::Null);
            let message = parsed["error"]["message"]
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| text.chars().take(200).collect());
            match status {
                200..=299 => {
                    return Ok(Answer {
                        body: parsed,
                        attempts,
                    });
                }
                401 | 403 => return Err(ClientError::Unauthorized),
                404 => return Err(ClientError::NotFound(message)),
                400 | 409 | 422 => return Err(ClientError::Invalid(message)),
                429 => {
                    let wait = retry_after.unwrap_or(backoff);
                    if last_attempt || wait > self.policy.max_retry_after {
                        return Err(ClientError::RateLimited { attempts });
                    }
                    tokio::time::sleep(wait).await;
                }
                500..=599 => {
                    if last_attempt {
                        return Err(ClientError::Server {
                            status,
                            message,
                            attempts,
                        });
                    }
                    tokio::time::sleep(
                        retry_after
                            .unwrap_or(backoff)
                            .min(self.policy.max_retry_after),
                    )
                    .await;
                    backoff = (backoff * 2).min(self.policy.max_backoff);
                }
                other => {
                    return Err(ClientError::Server {
                        status: other,
                        message,
                        attempts,
                    });
                }
            }
        }
    }
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

fn data(answer: Answer) -> Answer {
    Answer {
        body: answer.body.get("data").cloned().unwrap_or(answer.body),
        attempts: answer.attempts,
    }
}

#[async_trait]
impl ConnexeaseApi for HttpConnexease {
    async fn account(&self, target: &Target) -> Result<Answer, ClientError> {
        self.send(target, Method::GET, "/v1/me", None, None)
            .await
            .map(data)
    }

    async fn directory(&self, target: &Target) -> Result<Answer, ClientError> {
        let groups = data(
            self.send(target, Method::GET, "/v1/groups", None, None)
                .await?,
        );
        let agents = data(
            self.send(target, Method::GET, "/v1/agents", None, None)
                .await?,
        );
        let fields = data(
            self.send(target, Method::GET, "/v1/custom-fields", None, None)
                .await?,
        );
        Ok(Answer {
            body: json!({"groups": groups.body, "agents": agents.body, "fields": fields.body}),
            attempts: groups.attempts + agents.attempts + fields.attempts,
        })
    }

    async fn conversation(&self, target: &Target, id: &str) -> Result<Answer, ClientError> {
        self.send(
            target,
            Method::GET,
            &format!("/v1/conversations/{}", segment(id)),
            None,
            None,
        )
        .await
        .map(data)
    }

    async fn assign(
        &self,
        target: &Target,
        conversation: &str,
        to: &AssignTo,
        key: &str,
    ) -> Result<Answer, ClientError> {
        let body = match to {
            AssignTo::Group(group) => json!({"group_id": group}),
            AssignTo::Agent(agent) => json!({"agent_id": agent}),
            AssignTo::Auto(group) => json!({"auto": true, "group_id": group}),
        };
        self.send(
            target,
            Method::POST,
            &format!("/v1/conversations/{}/assign", segment(conversation)),
            Some(&body),
            Some(key),
        )
        .await
        .map(data)
    }

    async fn set_archived(
        &self,
        target: &Target,
        conversation: &str,
        archived: bool,
        key: &str,
    ) -> Result<Answer, ClientError> {
        let action = if archived { "archive" } else { "unarchive" };
        self.send(
            target,
            Method::POST,
            &format!("/v1/conversations/{}/{action}", segment(conversation)),
            None,
            Some(key),
        )
        .await
        .map(data)
    }

    async fn set_conversation_fields(
        &self,
        target: &Target,
        conversation: &str,
        fields: &BTreeMap<String, Json>,
        key: &str,
    ) -> Result<Answer, ClientError> {
        self.send(
            target,
            Method::PATCH,
            &format!("/v1/conversations/{}/custom-fields", segment(conversation)),
            Some(&json!({"fields": fields})),
            Some(key),
        )
        .await
        .map(data)
    }

    async fn update_customer(
        &self,
        target: &Target,
        customer: &str,
        update: &Json,
        key: &str,
    ) -> Result<Answer, ClientError> {
        self.send(
            target,
            Method::PATCH,
            &format!("/v1/customers/{}", segment(customer)),
            Some(update),
            Some(key),
        )
        .await
        .map(data)
    }

    async fn set_customer_fields(
        &self,
        target: &Target,
        customer: &str,
        fields: &BTreeMap<String, Json>,
        key: &str,
    ) -> Result<Answer, ClientError> {
        self.send(
            target,
            Method::PATCH,
            &format!("/v1/customers/{}/custom-fields", segment(customer)),
            Some(&json!({"fields": fields})),
            Some(key),
        )
        .await
        .map(data)
    }
}

/// An id as one path segment: nothing in it can change the path.
fn segment(id: &str) -> String {
    percent_encoding::utf8_percent_encode(id, percent_encoding::NON_ALPHANUMERIC).to_string()
}
