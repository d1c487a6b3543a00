//! A scripted OpenAI-compatible model server on loopback, for tests and demos: it answers
//! `POST /v1/chat/completions` with the replies it was given, in order (text, tool calls,
//! or an error status), keeps every request it got (to check what a model was sent), and
//! answers `"ok"` when its script is empty. It checks the bearer key when it has one.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// One scripted answer.
#[derive(Debug, Clone)]
pub enum Reply {
    /// The model answers with text.
    Text(String),
    /// The model calls tools: each a name and its arguments.
    ToolCalls(Vec<(String, Value)>),
    /// An error status, with `Retry-After` seconds when given.
    Status(u16, Option<u32>),
}

/// A request the server got: its body and its `Authorization` header.
#[derive(Debug, Clone)]
pub struct Received {
    pub body: Value,
    pub authorization: Option<String>,
}

#[derive(Default)]
struct Script {
    replies: VecDeque<Reply>,
    received: Vec<Received>,
    calls: u64,
}

/// A running fake model.
#[derive(Clone)]
pub struct FakeModel {
    pub addr: SocketAddr,
    script: Arc<Mutex<Script>>,
    key: Option<String>,
}

impl FakeModel {
    /// The base URL a provider names: `http://<addr>/v1`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Adds replies to the end of the script.
    pub fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        self.script.lock().expect("script").replies.extend(replies);
    }

    /// Every request received so far.
    pub fn received(&self) -> Vec<Received> {
        self.script.lock().expect("script").received.clone()
    }
}

/// Serves a fake model on `listener` until `shutdown`; `key`: the bearer key it requires.
pub async fn serve(
    listener: tokio::net::TcpListener,
    key: Option<String>,
    shutdown: CancellationToken,
) -> std::io::Result<FakeModel> {
    let fake = FakeModel {
        addr: listener.local_addr()?,
        script: Arc::default(),
        key,
    };
    let app = Router::new()
        .route("/v1/chat/completions", post(complete))
        .with_state(fake.clone());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
    });
    Ok(fake)
}

fn error(status: StatusCode, message: &str) -> Response {
    (
        status,
        Json(json!({"error": {"message": message, "type": "invalid_request_error"}})),
    )
        .into_response()
}

async fn complete(
    State(fake): State<FakeModel>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let authorization = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let reply = {
        let mut script = fake.script.lock().expect("script");
        script.calls += 1;
        script.received.push(Received {
            body: body.clone(),
            authorization: authorization.clone(),
        });
        script.replies.pop_front()
    };
    if let Some(key) = &fake.key
        && authorization.as_deref() != Some(format!("Bearer {key}").as_str())
    {
        // As some servers and proxies do: the key it got, echoed back.
        let got = authorization.unwrap_or_default();
        return error(
            StatusCode::UNAUTHORIZED,
            &format!("Incorrect API key provided: {got}."),
        );
    }
    let prompt_tokens = body["messages"].as_array().map_or(0, |m| {
        m.iter().map(|m| m.to_string().len() / 4).sum::<usize>()
    });
    let (message, finish) = match reply.unwrap_or(Reply::Text("ok".into())) {
        Reply::Text(text) => (json!({"role": "assistant", "content": text}), "stop"),
        Reply::ToolCalls(calls) => (
            json!({"role": "assistant", "content": null, "tool_calls": calls.iter().enumerate().map(|(i, (name, args))| json!({
                "id": format!("call_{i}_{}", uuid::Uuid::now_v7().simple()),
                "type": "function",
                "function": {"name": name, "arguments": args.to_string()},
            })).collect::<Vec<_>>()}),
            "tool_calls",
        ),
        Reply::Status(status, retry_after) => {
            let mut response = error(
                StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                "scripted failure",
            );
            if let Some(seconds) = retry_after {
                response.headers_mut().insert(
                    "retry-after",
                    HeaderValue::from_str(&seconds.to_string()).expect("digits"),
                );
            }
            return response;
        }
    };
    Json(json!({
        "id": format!("chatcmpl-{}", uuid::Uuid::now_v7().simple()),
        "object": "chat.completion",
        "model": body["model"],
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": 5, "total_tokens": prompt_tokens + 5},
    }))
    .into_response()
}
