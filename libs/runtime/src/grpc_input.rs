//! The caller's mistakes that no service should see: a request body that is not a valid
//! message of the method's input type, and strings holding a NUL character (U+0000), which
//! no store keeps (Postgres refuses them, and that refusal would look like an outage).
//! Both answer `INVALID_ARGUMENT` (`SB-RPC-0400`) naming the fields, before the service
//! runs, and are logged at DEBUG: they are not the server's problem.
//!
//! The input type of each method comes from the Switchboard descriptor set; methods it does
//! not describe (health, reflection) pass unchecked, and so does a compressed frame.

use std::sync::LazyLock;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use futures::future::BoxFuture;
use http_body_util::BodyExt as _;
use prost_reflect::{
    DescriptorPool, DynamicMessage, MapKey, MessageDescriptor, ReflectMessage as _, Value,
};
use sha2::{Digest as _, Sha256};
use tonic::body::Body;
use tonic::codegen::http;
use tower::{Layer, Service};

use crate::codes;
use crate::grpc_wire::split_grpc_path;

static POOL: LazyLock<DescriptorPool> = LazyLock::new(|| {
    DescriptorPool::decode(switchboard_proto::FILE_DESCRIPTOR_SET)
        .expect("the compiled descriptor set decodes")
});

/// The largest request body read: no Switchboard method takes more than 8 MiB (flows'
/// bulk documents), so a larger body is refused before it is buffered.
const MAX_CHECKED: usize = 8 * 1024 * 1024 + 5;

/// The input message type of `path` (`/package.Service/Method`), when described.
fn input_of(path: &str) -> Option<MessageDescriptor> {
    let (service, method) = split_grpc_path(path);
    POOL.get_service_by_name(service)?
        .methods()
        .find(|m| m.name() == method)
        .map(|m| m.input())
}

/// Every field path of `message` holding a NUL character: `user_id`, `lead.name`,
/// `buttons[1].label`, `metafields[plan]`.
fn nul_fields(message: &DynamicMessage, prefix: &str, out: &mut Vec<String>) {
    for (field, value) in message.fields() {
        let path = format!("{prefix}{}", field.name());
        nul_in(value, &path, out);
    }
}

fn nul_in(value: &Value, path: &str, out: &mut Vec<String>) {
    match value {
        Value::String(s) if s.contains('\0') => out.push(path.to_owned()),
        Value::Message(m) => nul_fields(m, &format!("{path}."), out),
        Value::List(items) => {
            for (i, item) in items.iter().enumerate() {
                nul_in(item, &format!("{path}[{i}]"), out);
            }
        }
        Value::Map(entries) => {
            for (key, item) in entries {
                let key = match key {
                    MapKey::String(k) => {
                        if k.contains('\0') {
                            out.push(format!("{path} (a key)"));
                        }
                        k.replace('\0', "\\0")
                    }
                    other => format!("{other:?}"),
                };
                nul_in(item, &format!("{path}[{key}]"), out);
            }
        }
        _ => {}
    }
}

/// The name of the idempotency key field requests carry.
const REQUEST_ID: &str = "request_id";

/// A digest of `message` as a request body, its request id left out: the same for the
/// same request however its encoder ordered maps or fields, different for any other
/// value. Empty when the message carries no request id.
fn request_hash(message: &DynamicMessage) -> String {
    let carries_id = message
        .get_field_by_name(REQUEST_ID)
        .is_some_and(|id| id.as_str().is_some_and(|id| !id.is_empty()));
    if !carries_id {
        return String::new();
    }
    let mut hasher = Sha256::new();
    // Two methods whose requests look alike field for field are still two requests.
    hasher.update(message.descriptor().full_name().as_bytes());
    digest_message(message, true, &mut hasher);
    hex::encode(&hasher.finalize()[..16])
}

/// Feeds `message`'s set fields into `hasher` in field-number order, each with its number
/// and length-prefixed, map entries sorted by key.
fn digest_message(message: &DynamicMessage, top: bool, hasher: &mut Sha256) {
    let mut fields: Vec<_> = message
        .fields()
        .filter(|(field, _)| !(top && field.name() == REQUEST_ID))
        .collect();
    fields.sort_by_key(|(field, _)| field.number());
    for (field, value) in fields {
        hasher.update(field.number().to_be_bytes());
        digest_value(value, hasher);
    }
    hasher.update(b"}");
}

fn digest_value(value: &Value, hasher: &mut Sha256) {
    let mut bytes = |tag: u8, data: &[u8]| {
        hasher.update([tag]);
        hasher.update((data.len() as u64).to_be_bytes());
        hasher.update(data);
    };
    match value {
        Value::Bool(v) => bytes(b'b', &[u8::from(*v)]),
        Value::I32(v) | Value::EnumNumber(v) => bytes(b'i', &v.to_be_bytes()),
        Value::I64(v) => bytes(b'l', &v.to_be_bytes()),
        Value::U32(v) => bytes(b'u', &v.to_be_bytes()),
        Value::U64(v) => bytes(b'v', &v.to_be_bytes()),
        Value::F32(v) => bytes(b'f', &v.to_be_bytes()),
        Value::F64(v) => bytes(b'd', &v.to_be_bytes()),
        Value::String(v) => bytes(b's', v.as_bytes()),
        Value::Bytes(v) => bytes(b'y', v),
        Value::Message(m) => {
            hasher.update(b"{");
            digest_message(m, false, hasher);
        }
        Value::List(items) => {
            hasher.update(b"[");
            hasher.update((items.len() as u64).to_be_bytes());
            for item in items {
                digest_value(item, hasher);
            }
        }
        Value::Map(entries) => {
            let mut sorted: Vec<(Value, &Value)> = entries
                .iter()
                .map(|(key, item)| (Value::from(key.clone()), item))
                .collect();
            sorted.sort_by(|a, b| map_key_order(&a.0, &b.0));
            hasher.update(b"<");
            hasher.update((sorted.len() as u64).to_be_bytes());
            for (key, item) in sorted {
                digest_value(&key, hasher);
                digest_value(item, hasher);
            }
        }
    }
}

/// Orders map keys (strings, integers or booleans) by value.
fn map_key_order(a: &Value, b: &Value) -> std::cmp::Ordering {
    match (a, b) {
        (Value::String(a), Value::String(b)) => a.cmp(b),
        (Value::I32(a), Value::I32(b)) => a.cmp(b),
        (Value::I64(a), Value::I64(b)) => a.cmp(b),
        (Value::U32(a), Value::U32(b)) => a.cmp(b),
        (Value::U64(a), Value::U64(b)) => a.cmp(b),
        (Value::Bool(a), Value::Bool(b)) => a.cmp(b),
        _ => std::cmp::Ordering::Equal,
    }
}

/// What a unary request's frames hold for `input`: what is wrong with them, if anything,
/// else the request's digest ([`request_hash`]).
fn check(mut body: Bytes, input: &MessageDescriptor) -> Result<String, tonic::Status> {
    let mut problems = Vec::new();
    let mut hash = String::new();
    while body.has_remaining() {
        if body.remaining() < 5 {
            problems.push(("body".to_owned(), "a truncated gRPC frame".to_owned()));
            break;
        }
        let compressed = body.get_u8() != 0;
        let len = body.get_u32() as usize;
        if body.remaining() < len {
            problems.push(("body".to_owned(), "a truncated gRPC frame".to_owned()));
            break;
        }
        let frame = body.split_to(len);
        if compressed {
            continue;
        }
        match DynamicMessage::decode(input.clone(), frame) {
            Err(e) => problems.push((
                "body".to_owned(),
                format!("not a valid {}: {e}", input.full_name()),
            )),
            Ok(message) => {
                hash = request_hash(&message);
                let mut fields = Vec::new();
                nul_fields(&message, "", &mut fields);
                problems.extend(fields.into_iter().map(|f| {
                    (
                        f,
                        "holds a NUL character (U+0000), which is not allowed".to_owned(),
                    )
                }));
            }
        }
    }
    if problems.is_empty() {
        Ok(hash)
    } else {
        Err(crate::requests::invalid_argument(
            codes::RPC_INVALID_INPUT.id,
            problems,
        ))
    }
}

/// Refuses malformed requests and NUL characters before the service sees them.
#[derive(Debug, Clone, Copy, Default)]
pub struct InputCheckLayer;

impl<S> Layer<S> for InputCheckLayer {
    type Service = InputCheck<S>;

    fn layer(&self, inner: S) -> Self::Service {
        InputCheck { inner }
    }
}

#[derive(Debug, Clone)]
pub struct InputCheck<S> {
    inner: S,
}

impl<S> Service<http::Request<Body>> for InputCheck<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        // The clone serves this call; `self.inner`, which was polled ready, stays ready.
        let mut inner = self.inner.clone();
        std::mem::swap(&mut inner, &mut self.inner);
        let Some(input) = input_of(request.uri().path()) else {
            return Box::pin(inner.call(request));
        };
        let path = request.uri().path().to_owned();
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            let bytes = match http_body_util::Limited::new(body, MAX_CHECKED)
                .collect()
                .await
            {
                Ok(collected) => collected.to_bytes(),
                Err(_) => {
                    let status = codes::RPC_INVALID_INPUT
                        .status("the request body is unreadable or too large");
                    return Ok(status.into_http());
                }
            };
            let hash = match check(bytes.clone(), &input) {
                Ok(hash) => hash,
                Err(status) => {
                    tracing::debug!(%path, message = status.message(), "refused malformed input");
                    return Ok(status.into_http());
                }
            };
            let request =
                http::Request::from_parts(parts, Body::new(http_body_util::Full::new(bytes)));
            crate::requests::REQUEST_HASH
                .scope(hash, inner.call(request))
                .await
        })
    }
}

#[cfg(test)]
mod tests {
    use prost_reflect::prost::Message as _;
    use switchboard_proto::conversations::v1::{SetMetafieldsRequest, StartConversationRequest};
    use switchboard_proto::events::v1::Lead;

    use super::*;

    fn framed(message: &[u8]) -> Bytes {
        let mut out = vec![0u8];
        out.extend_from_slice(&(message.len() as u32).to_be_bytes());
        out.extend_from_slice(message);
        Bytes::from(out)
    }

    #[test]
    fn nul_characters_and_bad_messages_are_named() {
        let input = input_of("/switchboard.conversations.v1.Conversations/StartConversation")
            .expect("described");
        let request = StartConversationRequest {
            workspace_id: "ws_1".into(),
            user_id: "a\0b".into(),
            lead: Some(Lead {
                name: "Ada\0".into(),
                email: String::new(),
            }),
            metafields: [("plan".to_owned(), "p\0".to_owned())].into(),
            ..Default::default()
        };
        let status = check(framed(&request.encode_to_vec()), &input).expect_err("refused");
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        for field in ["user_id", "lead.name", "metafields[plan]"] {
            assert!(
                status.message().contains(field),
                "{field}: {}",
                status.message()
            );
        }
        // A length-delimited field 3 where the schema has an enum: not this message.
        let garbage = [0x1a, 0x02, b'h', b'i'];
        let status = check(framed(&garbage), &input).expect_err("refused");
        assert!(status.message().contains("body"), "{}", status.message());
        let fine = StartConversationRequest {
            workspace_id: "ws_1".into(),
            ..Default::default()
        };
        assert_eq!(check(framed(&fine.encode_to_vec()), &input).unwrap(), "");
        assert!(input_of("/grpc.health.v1.Health/Check").is_none());
    }

    #[test]
    fn a_request_digest_ignores_its_id_and_map_order_and_nothing_else() {
        let input = input_of("/switchboard.conversations.v1.Conversations/SetMetafields")
            .expect("described");
        let digest = |request_id: &str, entries: &[(&str, &str)], version: u64| {
            let mut metafields = std::collections::HashMap::new();
            for (k, v) in entries {
                metafields.insert((*k).to_owned(), (*v).to_owned());
            }
            let request = SetMetafieldsRequest {
                workspace_id: "ws_1".into(),
                request_id: request_id.into(),
                conversation_id: "conv_1".into(),
                metafields,
                expected_version: version,
            };
            check(framed(&request.encode_to_vec()), &input).unwrap()
        };
        let many: Vec<(String, String)> = (0..40)
            .map(|i| (format!("k{i}"), format!("v{i}")))
            .collect();
        let forward: Vec<(&str, &str)> =
            many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let backward: Vec<(&str, &str)> = forward.iter().rev().copied().collect();
        let first = digest("req_1", &forward, 0);
        assert_eq!(first.len(), 32);
        assert_eq!(
            first,
            digest("req_1", &backward, 0),
            "map order does not count"
        );
        assert_eq!(
            first,
            digest("req_2", &forward, 0),
            "the id itself does not count"
        );
        assert_ne!(first, digest("req_1", &forward[1..], 0));
        assert_ne!(first, digest("req_1", &forward, 3));
        let mut changed = forward.clone();
        changed[0] = ("k0", "other");
        assert_ne!(first, digest("req_1", &changed, 0));
        assert_eq!(
            digest("", &forward, 0),
            "",
            "no request id, nothing to compare"
        );
    }
}
