//! The agent's model: any server that speaks OpenAI's chat-completions API (a hosted API,
//! vLLM, Ollama, llama.cpp's server), behind [`ChatModel`].
//!
//! One call is `POST {base_url}/chat/completions` with the model, the messages, the
//! temperature and, when there are any, the tools as functions; the answer's first choice
//! is the model's message (text, tool calls or both) and `usage` its tokens. A call has a
//! deadline (the provider's timeout, retries included); 429 (after `Retry-After`) and 5xx
//! and failures to connect are retried with backoff within it. The API key goes in
//! `Authorization: Bearer` and nowhere else: not in an error, a log line or a trace.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde_json::{Value as Json, json};
use switchboard_outbound::{GuardedClient, OutboundError};
use switchboard_secrets::Secret;

/// Where a call goes and how: a provider, resolved.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// Without `/chat/completions`.
    pub base_url: String,
    pub model: String,
    pub api_key: Option<Secret>,
    /// The deadline of a call, retries included.
    pub timeout: Duration,
    pub temperature: f64,
}

/// Who wrote a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    System,
    User,
    Assistant,
    Tool,
}

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::Tool => "tool",
        }
    }
}

/// A tool the model asked to call: its id (to answer with), the tool's name and the
/// arguments as the JSON text the model wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    pub arguments: String,
}

/// One message of the conversation sent to the model.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatMessage {
    pub role: Role,
    pub content: String,
    /// For the model's own earlier message: the tools it called.
    pub tool_calls: Vec<ToolCall>,
    /// For a tool's result: the call it answers.
    pub tool_call_id: String,
}

impl ChatMessage {
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Self {
            role,
            content: content.into(),
            tool_calls: Vec::new(),
            tool_call_id: String::new(),
        }
    }

    fn to_json(&self) -> Json {
        let mut message = json!({"role": self.role.as_str(), "content": self.content});
        if !self.tool_calls.is_empty() {
            message["tool_calls"] = self
                .tool_calls
                .iter()
                .map(|call| {
                    json!({"id": call.id, "type": "function",
                           "function": {"name": call.name, "arguments": call.arguments}})
                })
                .collect();
        }
        if !self.tool_call_id.is_empty() {
            message["tool_call_id"] = json!(self.tool_call_id);
        }
        message
    }
}

/// A tool the model may call: a function with a JSON Schema for its arguments.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolSpec {
    pub name: String,
    pub description: String,
    pub parameters: Json,
}

/// What to ask the model.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChatRequest {
    pub messages: Vec<ChatMessage>,
    pub tools: Vec<ToolSpec>,
    /// The most tokens it may answer with; 0 for the provider's default.
    pub max_tokens: u32,
}

/// Tokens a call used.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
}

/// The model's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    pub content: String,
    pub tool_calls: Vec<ToolCall>,
    /// `stop`, `tool_calls`, `length`...
    pub finish_reason: String,
    pub usage: Usage,
    pub latency: Duration,
    pub attempts: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelError {
    #[error("the model provider refused the API key ({0})")]
    Unauthorized(String),
    #[error("the model provider refused the request: {0}")]
    Refused(String),
    #[error("the model provider kept answering 429 Too Many Requests ({attempts} attempts)")]
    RateLimited { attempts: u32 },
    #[error("the model provider answered {status}: {message} ({attempts} attempts)")]
    Server {
        status: u16,
        message: String,
        attempts: u32,
    },
    #[error("the model provider cannot be reached: {message} ({attempts} attempts)")]
    Network { message: String, attempts: u32 },
    #[error("the model provider did not answer within {deadline_ms} ms ({attempts} attempts)")]
    Deadline { deadline_ms: u64, attempts: u32 },
    #[error("the model provider's answer is not a chat completion: {0}")]
    BadAnswer(String),
    #[error("{0}")]
    Blocked(String),
}

/// A chat model.
#[async_trait]
pub trait ChatModel: Send + Sync {
    async fn complete(
        &self,
        endpoint: &Endpoint,
        request: &ChatRequest,
    ) -> Result<Completion, ModelError>;
}

/// The most of an answer read.
pub const MAX_ANSWER_BYTES: usize = 4 * 1024 * 1024;

/// The most attempts of one call, whatever time its deadline leaves.
pub const MAX_ATTEMPTS: u32 = 10;

/// The OpenAI-compatible client, through the outbound guard.
#[derive(Clone)]
pub struct OpenAiCompatible {
    client: GuardedClient,
    initial_backoff: Duration,
    max_backoff: Duration,
}

impl OpenAiCompatible {
    pub fn new(client: GuardedClient) -> Self {
        Self {
            client,
            initial_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(8),
        }
    }

    /// With other waits between attempts (tests make them short).
    pub fn with_backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.initial_backoff = initial;
        self.max_backoff = max;
        self
    }
}

/// The body of a chat-completions request.
pub fn request_body(endpoint: &Endpoint, request: &ChatRequest) -> Json {
    let mut body = json!({
        "model": endpoint.model,
        "messages": request.messages.iter().map(ChatMessage::to_json).collect::<Vec<_>>(),
        "temperature": endpoint.temperature,
    });
    if !request.tools.is_empty() {
        body["tools"] = request
            .tools
            .iter()
            .map(|tool| {
                json!({"type": "function", "function": {
                    "name": tool.name, "description": tool.description, "parameters": tool.parameters,
                }})
            })
            .collect();
        body["tool_choice"] = json!("auto");
    }
    if request.max_tokens > 0 {
        body["max_tokens"] = json!(request.max_tokens);
    }
    body
}

/// The first choice of a chat-completions answer.
pub fn completion_of(answer: &Json) -> Result<(String, Vec<ToolCall>, String, Usage), ModelError> {
    let choice = &answer["choices"][0];
    let message = &choice["message"];
    if !message.is_object() {
        return Err(ModelError::BadAnswer("no `choices[0].message`".into()));
    }
    let tool_calls = message["tool_calls"]
        .as_array()
        .map(|calls| {
            calls
                .iter()
                .map(|call| ToolCall {
                    id: call["id"].as_str().unwrap_or_default().to_owned(),
                    name: call["function"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                    arguments: match &call["function"]["arguments"] {
                        Json::String(text) => text.clone(),
                        Json::Null => "{}".into(),
                        other => other.to_string(),
                    },
                })
                .collect()
        })
        .unwrap_or_default();
    let count = |key: &str| {
        answer["usage"][key]
            .as_u64()
            .map_or(0, |n| u32::try_from(n).unwrap_or(u32::MAX))
    };
    Ok((
        message["content"].as_str().unwrap_or_default().to_owned(),
        tool_calls,
        choice["finish_reason"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        Usage {
            prompt_tokens: count("prompt_tokens"),
            completion_tokens: count("completion_tokens"),
        },
    ))
}

/// What an OpenAI-style error body says (`{"error": {"message"}}`), or its first bytes.
fn error_message(body: &[u8]) -> String {
    serde_json::from_slice::<Json>(body)
        .ok()
        .and_then(|b| {
            b["error"]["message"]
                .as_str()
                .or_else(|| b["error"].as_str())
                .or_else(|| b["detail"].as_str())
                .map(str::to_owned)
        })
        .unwrap_or_else(|| String::from_utf8_lossy(body).chars().take(200).collect())
}

/// A `Retry-After` (seconds) or `retry-after-ms` header.
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let read = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|v| v.is_finite() && *v >= 0.0)
    };
    read("retry-after-ms")
        .map(|ms| ms / 1000.0)
        .or_else(|| read("retry-after"))
        .and_then(|seconds| Duration::try_from_secs_f64(seconds.min(3600.0)).ok())
}

#[async_trait]
impl ChatModel for OpenAiCompatible {
    /// A provider's error text is ours to show, so its key is scrubbed from it (a server
    /// or a proxy may echo it).
    async fn complete(
        &self,
        endpoint: &Endpoint,
        request: &ChatRequest,
    ) -> Result<Completion, ModelError> {
        self.call(endpoint, request)
            .await
            .map_err(|e| match &endpoint.api_key {
                Some(key) => e.redacted(key),
                None => e,
            })
    }
}

impl ModelError {
    /// The error with `key` nowhere in its text.
    fn redacted(self, key: &Secret) -> Self {
        let scrub = |text: String| switchboard_secrets::redact(&text, &[key]);
        match self {
            ModelError::Unauthorized(m) => ModelError::Unauthorized(scrub(m)),
            ModelError::Refused(m) => ModelError::Refused(scrub(m)),
            ModelError::Server {
                status,
                message,
                attempts,
            } => ModelError::Server {
                status,
                message: scrub(message),
                attempts,
            },
            ModelError::Network { message, attempts } => ModelError::Network {
                message: scrub(message),
                attempts,
            },
            ModelError::BadAnswer(m) => ModelError::BadAnswer(scrub(m)),
            ModelError::Blocked(m) => ModelError::Blocked(scrub(m)),
            other => other,
        }
    }
}

impl OpenAiCompatible {
    async fn call(
        &self,
        endpoint: &Endpoint,
        request: &ChatRequest,
    ) -> Result<Completion, ModelError> {
        let started = Instant::now();
        let deadline = started + endpoint.timeout;
        let url = format!(
            "{}/chat/completions",
            endpoint.base_url.trim_end_matches('/')
        );
        let body = request_body(endpoint, request).to_string();
        let mut backoff = self.initial_backoff;
        let mut attempts = 0;
        let out_of_time = |attempts| ModelError::Deadline {
            deadline_ms: endpoint.timeout.as_millis() as u64,
            attempts,
        };
        loop {
            attempts += 1;
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(out_of_time(attempts - 1));
            }
            let mut builder = self
                .client
                .inner()
                .post(&url)
                .timeout(left)
                .header("content-type", "application/json")
                .header("accept", "application/json")
                .body(body.clone());
            if let Some(key) = &endpoint.api_key {
                builder = builder.bearer_auth(key.expose());
            }
            let built = builder
                .build()
                .map_err(|e| ModelError::Refused(format!("the request cannot be built: {e}")))?;
            // Why this attempt failed, if it may be tried again, and how long to wait.
            let (wait, failure) = match self.client.execute(built).await {
                Err(OutboundError::Blocked(blocked)) => {
                    return Err(ModelError::Blocked(blocked.to_string()));
                }
                // The deadline passed while it waited; a connect timeout before it is a
                // failure to connect like any other, tried again.
                Err(OutboundError::Http(e)) if e.is_timeout() && Instant::now() >= deadline => {
                    return Err(out_of_time(attempts));
                }
                Err(OutboundError::Http(e)) => (
                    backoff,
                    ModelError::Network {
                        message: if e.is_connect() {
                            "could not connect".into()
                        } else {
                            "the connection failed".into()
                        },
                        attempts,
                    },
                ),
                Ok(response) => {
                    let status = response.status().as_u16();
                    let after = retry_after(response.headers());
                    let read = switchboard_outbound::read_capped(response, MAX_ANSWER_BYTES).await;
                    match (status, read) {
                        (_, Err(_)) if Instant::now() >= deadline => {
                            return Err(out_of_time(attempts));
                        }
                        (_, Err(_)) => (
                            backoff,
                            ModelError::Network {
                                message: "the answer was cut off".into(),
                                attempts,
                            },
                        ),
                        (status, Ok((answer, more))) => match status {
                            200..=299 if more => {
                                return Err(ModelError::BadAnswer(format!(
                                    "larger than {MAX_ANSWER_BYTES} bytes"
                                )));
                            }
                            200..=299 => {
                                let answer: Json = serde_json::from_slice(&answer)
                                    .map_err(|e| ModelError::BadAnswer(e.to_string()))?;
                                let (content, tool_calls, finish_reason, usage) =
                                    completion_of(&answer)?;
                                return Ok(Completion {
                                    content,
                                    tool_calls,
                                    finish_reason,
                                    usage,
                                    latency: started.elapsed(),
                                    attempts,
                                });
                            }
                            401 | 403 => {
                                return Err(ModelError::Unauthorized(error_message(&answer)));
                            }
                            // Never sooner than the backoff, whatever the server says.
                            429 => (
                                after.unwrap_or(backoff).max(backoff),
                                ModelError::RateLimited { attempts },
                            ),
                            500..=599 => (
                                after.unwrap_or(backoff).max(backoff),
                                ModelError::Server {
                                    status,
                                    message: error_message(&answer),
                                    attempts,
                                },
                            ),
                            _ => return Err(ModelError::Refused(error_message(&answer))),
                        },
                    }
                }
            };
            // Only within the deadline and the attempts: a wait that would pass the
            // deadline ends the call.
            if attempts >= MAX_ATTEMPTS || Instant::now() + wait >= deadline {
                return Err(failure);
            }
            tokio::time::sleep(wait).await;
            backoff = (backoff * 2).min(self.max_backoff);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint() -> Endpoint {
        Endpoint {
            base_url: "http://model.example/v1".into(),
            model: "m-1".into(),
            api_key: None,
            timeout: Duration::from_secs(5),
            temperature: 0.2,
        }
    }

    #[test]
    fn a_request_carries_the_tools_as_functions_and_the_conversation_in_order() {
        let mut answered = ChatMessage::new(Role::Assistant, "");
        answered.tool_calls = vec![ToolCall {
            id: "call_1".into(),
            name: "order_status".into(),
            arguments: r#"{"order":"A-17"}"#.into(),
        }];
        let mut result = ChatMessage::new(Role::Tool, r#"{"status":"shipped"}"#);
        result.tool_call_id = "call_1".into();
        let request = ChatRequest {
            messages: vec![
                ChatMessage::new(Role::System, "Be brief."),
                ChatMessage::new(Role::User, "Where is A-17?"),
                answered,
                result,
            ],
            tools: vec![ToolSpec {
                name: "order_status".into(),
                description: "Looks up an order".into(),
                parameters: json!({"type": "object"}),
            }],
            max_tokens: 0,
        };
        let body = request_body(&endpoint(), &request);
        assert_eq!(body["model"], "m-1");
        assert_eq!(body["tools"][0]["function"]["name"], "order_status");
        assert_eq!(body["tool_choice"], "auto");
        assert_eq!(
            body["messages"][2]["tool_calls"][0]["function"]["arguments"],
            r#"{"order":"A-17"}"#
        );
        assert_eq!(body["messages"][3]["tool_call_id"], "call_1");
        assert!(body.get("max_tokens").is_none());
        let bare = request_body(&endpoint(), &ChatRequest::default());
        assert!(bare.get("tools").is_none(), "no tools, no tool_choice");
    }

    #[test]
    fn an_answer_is_read_with_its_tool_calls_and_usage() {
        let answer = json!({
            "choices": [{"finish_reason": "tool_calls", "message": {"role": "assistant", "content": null,
                "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "lookup", "arguments": "{\"q\":1}"}}]}}],
            "usage": {"prompt_tokens": 12, "completion_tokens": 3},
        });
        let (content, calls, finish, usage) = completion_of(&answer).unwrap();
        assert_eq!(content, "");
        assert_eq!(calls[0].name, "lookup");
        assert_eq!(calls[0].arguments, "{\"q\":1}");
        assert_eq!(finish, "tool_calls");
        assert_eq!(
            usage,
            Usage {
                prompt_tokens: 12,
                completion_tokens: 3
            }
        );
        assert!(matches!(
            completion_of(&json!({"choices": []})),
            Err(ModelError::BadAnswer(_))
        ));
    }
}
