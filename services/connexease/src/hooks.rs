//! Connexease's webhook deliveries as published (help.connexease.com/dev, "Webhooks"): a
//! JSON body shaped around the hook's name, its payload and the channel,
//!
//! ```json
//! {"hook": "conversation.archived", "payload": {"uuid": "…", "customer": {"uuid": "…"}, …}, "channel": {…}}
//! ```
//!
//! signed in `X-Connexease-Webhook-Sign`, retried 30 times when not answered 2xx, then
//! dropped. Conversations and customers are named by `uuid` fields. What is documented:
//! the hook names ([`PUBLISHED`]), the three members, `uuid` ids, the retries and the
//! header. What is assumed, marked where it is read: where exactly inside a payload the
//! conversation and the customer are named (read from the plausible places below), the
//! optional top-level `timestamp`, the author of a message, and what is signed.
//!
//! Pure: no I/O.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::Value as Json;
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};
use switchboard_proto::connexease::v1::SignedInput;

pub use switchboard_contract::event_types::connexease_hooks::*;

/// The largest body accepted: `conversation.archived` carries every message and
/// attachment of the conversation.
pub const MAX_BODY: usize = 16 * 1024 * 1024;

/// The largest payload a published `connexease.webhook_received` carries; past it the
/// payload's largest members are left out (the whole body stays in the log). NATS
/// refuses messages over its `max_payload` (1 MiB by default).
pub const PUBLISHED_PAYLOAD_MAX: usize = 256 * 1024;

/// A delivery dated (by its optional `timestamp`) further from now than this is refused:
/// longer than Connexease's 30 retries take, so no retry of a real delivery is refused.
pub const REPLAY_WINDOW_SECS: i64 = 3 * 24 * 3600;
/// How far in the future a delivery's `timestamp` may be (clocks differ).
pub const CLOCK_SKEW_SECS: i64 = 5 * 60;

/// A delivery, read.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    /// Ours, derived: `<hook>.<the first 128 bits of the SHA-256 of the payload's
    /// canonical JSON, in hex>`. A retry carries the same payload, whatever its spacing or
    /// member order, so it has the same id; Connexease sends no delivery id of its own.
    pub id: String,
    pub hook: String,
    pub payload: Json,
    pub channel: Json,
    /// The delivery's `timestamp` (unix seconds), when it has one (assumed: not documented).
    pub timestamp: Option<i64>,
    /// The Connexease conversation the hook concerns, when named.
    pub conversation: Option<String>,
    /// The Connexease customer the hook concerns, when named.
    pub customer: Option<String>,
    /// What the hook is about: the payload's own `uuid` (a conversation, a message, an
    /// agent...), else its conversation, else its customer. A delivery is a retry only of
    /// the last one recorded for the same hook and subject, so a real change back (an
    /// agent online, away, online again) is not taken for a retry.
    pub subject: Option<String>,
}

/// Why a body is not a delivery.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    #[error("the body is not JSON: {0}")]
    NotJson(String),
    #[error("a delivery is a JSON object with `hook` (a hook's name) and `payload` (an object)")]
    Shape,
    #[error("`{0}` is not a hook's name (lowercase letters, `.` and `_`, at most 64)")]
    Hook(String),
}

/// The members a delivery is read from; the payload kept as sent for the signed input.
#[derive(Deserialize)]
struct Envelope<'a> {
    hook: Option<String>,
    #[serde(borrow)]
    payload: Option<&'a RawValue>,
    #[serde(default)]
    channel: Json,
    #[serde(default)]
    timestamp: Json,
}

impl Delivery {
    /// Reads `body`. A hook outside [`PUBLISHED`] is accepted (Connexease may add hooks)
    /// and recorded as it came.
    pub fn parse(body: &[u8]) -> Result<Self, Malformed> {
        let envelope: Envelope<'_> = match serde_json::from_slice(body) {
            Ok(envelope) => envelope,
            Err(e) if e.is_data() => return Err(Malformed::Shape),
            Err(e) => return Err(Malformed::NotJson(e.to_string())),
        };
        let (Some(hook), Some(payload)) = (envelope.hook, envelope.payload) else {
            return Err(Malformed::Shape);
        };
        if !valid_hook(&hook) {
            return Err(Malformed::Hook(hook.chars().take(80).collect()));
        }
        let payload: Json =
            serde_json::from_str(payload.get()).map_err(|e| Malformed::NotJson(e.to_string()))?;
        if !payload.is_object() {
            return Err(Malformed::Shape);
        }
        // serde_json's maps are ordered by key: this is the canonical form.
        let canonical = serde_json::to_vec(&payload).expect("a value serializes");
        let digest = hex::encode(&Sha256::digest(&canonical)[..16]);
        Ok(Self {
            id: format!("{hook}.{digest}"),
            conversation: conversation_of(&hook, &payload),
            customer: customer_of(&hook, &payload),
            subject: uuid_at(&payload, "uuid")
                .or_else(|| conversation_of(&hook, &payload))
                .or_else(|| customer_of(&hook, &payload)),
            timestamp: timestamp_of(&envelope.timestamp),
            channel: envelope.channel,
            payload,
            hook,
        })
    }

    /// Whether the delivery is dated too far from `now` (unix seconds) to be trusted; a
    /// delivery without a date is never stale.
    pub fn stale(&self, now: i64) -> bool {
        self.timestamp
            .is_some_and(|at| at > now + CLOCK_SKEW_SECS || at < now - REPLAY_WINDOW_SECS)
    }

    /// The payload as a published event carries it: whole when it is small enough, else
    /// without its largest members (named in the second value), largest first.
    pub fn published_payload(&self) -> (String, Vec<String>) {
        abridge(&self.payload, PUBLISHED_PAYLOAD_MAX)
    }
}

/// What the signature is computed over, for `input`: the raw body; the `payload` member's
/// text as sent; or the body without insignificant whitespace. `None` when the body has
/// no such part.
pub fn signed_input(body: &[u8], input: SignedInput) -> Option<Cow<'_, [u8]>> {
    match input {
        SignedInput::Unspecified | SignedInput::RawBody => Some(Cow::Borrowed(body)),
        SignedInput::Payload => {
            #[derive(Deserialize)]
            struct Payload<'a> {
                #[serde(borrow)]
                payload: &'a RawValue,
            }
            let text = std::str::from_utf8(body).ok()?;
            let found: Payload<'_> = serde_json::from_str(text).ok()?;
            let start = found.payload.get().as_ptr() as usize - text.as_ptr() as usize;
            Some(Cow::Borrowed(
                &body[start..start + found.payload.get().len()],
            ))
        }
        SignedInput::CompactBody => Some(Cow::Owned(compact(body))),
    }
}

/// `body` without the whitespace outside its strings, every byte else as sent.
fn compact(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len());
    let (mut in_string, mut escaped) = (false, false);
    for &b in body {
        if in_string {
            out.push(b);
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
        } else if !b.is_ascii_whitespace() {
            in_string = b == b'"';
            out.push(b);
        }
    }
    out
}

fn valid_hook(hook: &str) -> bool {
    (1..=64).contains(&hook.len())
        && hook
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b == b'.' || b == b'_')
}

/// A `uuid` where it is named: `<key>.uuid`, `<key>_uuid` or `<key>` as a string, of at
/// most 128 bytes. Assumed: the documentation names the ids `uuid` without giving every
/// payload.
pub fn uuid_at(payload: &Json, key: &str) -> Option<String> {
    [
        &payload[key]["uuid"],
        &payload[format!("{key}_uuid").as_str()],
        &payload[key],
    ]
    .into_iter()
    .find_map(|v| v.as_str().filter(|s| !s.is_empty() && s.len() <= 128))
    .map(str::to_owned)
}

/// The conversation a hook concerns: the payload itself for `conversation.*` hooks,
/// otherwise the conversation it names.
fn conversation_of(hook: &str, payload: &Json) -> Option<String> {
    uuid_at(payload, "conversation").or_else(|| {
        hook.starts_with("conversation.")
            .then(|| payload["uuid"].as_str().map(str::to_owned))
            .flatten()
    })
}

/// The customer a hook concerns: the payload itself for `customer.updated`, otherwise the
/// customer it names.
fn customer_of(hook: &str, payload: &Json) -> Option<String> {
    if hook == CUSTOMER_UPDATED
        && let Some(uuid) = payload["uuid"].as_str()
    {
        return Some(uuid.to_owned());
    }
    uuid_at(payload, "customer").or_else(|| uuid_at(&payload["conversation"], "customer"))
}

/// Unix seconds, or an RFC 3339 time.
fn timestamp_of(value: &Json) -> Option<i64> {
    match value {
        Json::Number(n) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)),
        Json::String(s) => {
            time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
                .ok()
                .map(|t| t.unix_timestamp())
        }
        _ => None,
    }
}

/// `payload` as JSON of at most `limit` bytes where leaving out its largest members can
/// make it so; the members left out, largest first.
pub fn abridge(payload: &Json, limit: usize) -> (String, Vec<String>) {
    let whole = payload.to_string();
    let Json::Object(members) = payload else {
        return (whole, Vec::new());
    };
    if whole.len() <= limit {
        return (whole, Vec::new());
    }
    let mut sized: Vec<(usize, &String)> = members
        .iter()
        .map(|(key, value)| (value.to_string().len(), key))
        .collect();
    sized.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(b.1)));
    let mut kept = members.clone();
    let mut left_out = Vec::new();
    let mut size = whole.len();
    for (bytes, key) in sized {
        if size <= limit {
            break;
        }
        kept.remove(key);
        left_out.push(key.clone());
        size = size.saturating_sub(bytes + key.len() + 4);
    }
    (Json::Object(kept).to_string(), left_out)
}

/// Whether a `message.created` was written by a human agent in Connexease (assumed
/// fields: `sender.type`, `sender_type` or `direction`).
pub fn written_by_agent(payload: &Json) -> bool {
    let kind = payload["sender"]["type"]
        .as_str()
        .or_else(|| payload["sender_type"].as_str())
        .unwrap_or_default();
    matches!(kind, "agent" | "user" | "operator") || payload["direction"] == "outgoing"
}

/// A message's text (assumed fields: `text`, `content` or `body`).
pub fn message_text(payload: &Json) -> Option<&str> {
    ["text", "content", "body"]
        .iter()
        .find_map(|key| payload[*key].as_str())
        .filter(|text| !text.trim().is_empty())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_retry_whatever_its_spacing_has_the_same_id() {
        let one = br#"{"hook":"message.created","payload":{"uuid":"m1","conversation":{"uuid":"c1"},"text":"hi"},"channel":{"uuid":"ch1"}}"#;
        let two = br#"{ "channel": {"uuid": "ch1"}, "payload": {"text": "hi", "conversation": {"uuid": "c1"}, "uuid": "m1"}, "hook": "message.created" }"#;
        let (a, b) = (Delivery::parse(one).unwrap(), Delivery::parse(two).unwrap());
        assert_eq!(a.id, b.id);
        assert!(a.id.starts_with("message.created."), "{}", a.id);
        assert_eq!(a.conversation.as_deref(), Some("c1"));
        let changed = String::from_utf8_lossy(one).replace("hi", "ho");
        assert_ne!(a.id, Delivery::parse(changed.as_bytes()).unwrap().id);
    }

    #[test]
    fn conversations_and_customers_are_found_by_their_uuids() {
        let d = |hook: &str, payload: Json| {
            Delivery::parse(
                json!({"hook": hook, "payload": payload})
                    .to_string()
                    .as_bytes(),
            )
            .unwrap()
        };
        let created = d(
            "conversation.created",
            json!({"uuid": "c1", "customer": {"uuid": "u1"}}),
        );
        assert_eq!(
            (created.conversation.as_deref(), created.customer.as_deref()),
            (Some("c1"), Some("u1"))
        );
        let feedback = d("feedback.received", json!({"conversation_uuid": "c2"}));
        assert_eq!(feedback.conversation.as_deref(), Some("c2"));
        let customer = d("customer.updated", json!({"uuid": "u3"}));
        assert_eq!(
            (customer.conversation, customer.customer.as_deref()),
            (None, Some("u3"))
        );
        let agent = d("agent.status_changed", json!({"uuid": "a1"}));
        assert_eq!((agent.conversation, agent.customer), (None, None));
    }

    #[test]
    fn what_is_not_a_delivery_is_named() {
        assert!(matches!(
            Delivery::parse(b"not json"),
            Err(Malformed::NotJson(_))
        ));
        assert_eq!(
            Delivery::parse(br#"{"payload": {}}"#),
            Err(Malformed::Shape)
        );
        assert_eq!(
            Delivery::parse(br#"{"hook": "x", "payload": []}"#),
            Err(Malformed::Shape)
        );
        assert_eq!(
            Delivery::parse(br#"{"hook": "Bad Hook", "payload": {}}"#),
            Err(Malformed::Hook("Bad Hook".into()))
        );
        // Today's old envelope is not a delivery.
        assert_eq!(
            Delivery::parse(br#"{"id": "e1", "event": "x", "created_at": 1, "data": {}}"#),
            Err(Malformed::Shape)
        );
    }

    #[test]
    fn only_a_dated_delivery_can_be_stale() {
        let at = |timestamp: Json| {
            Delivery::parse(
                json!({"hook": "customer.updated", "payload": {}, "timestamp": timestamp})
                    .to_string()
                    .as_bytes(),
            )
            .unwrap()
        };
        let now = 1_800_000_000;
        assert!(!at(Json::Null).stale(now));
        assert!(!at(json!(now - 3600)).stale(now));
        assert!(at(json!(now - REPLAY_WINDOW_SECS - 1)).stale(now));
        assert!(at(json!(now + 3600)).stale(now));
        assert!(!at(json!("2027-01-15T08:00:00Z")).stale(1_800_000_000));
    }

    #[test]
    fn the_signed_input_is_the_part_configured() {
        let body = br#"{"hook": "x.y", "payload": {"a": [1, 2], "s": "a b\" c"}}"#;
        assert_eq!(
            signed_input(body, SignedInput::RawBody).unwrap().as_ref(),
            body
        );
        assert_eq!(
            signed_input(body, SignedInput::Payload).unwrap().as_ref(),
            br#"{"a": [1, 2], "s": "a b\" c"}"#
        );
        assert_eq!(
            signed_input(body, SignedInput::CompactBody)
                .unwrap()
                .as_ref(),
            br#"{"hook":"x.y","payload":{"a":[1,2],"s":"a b\" c"}}"#
        );
        assert!(signed_input(b"{}", SignedInput::Payload).is_none());
    }

    #[test]
    fn a_large_payload_is_published_without_its_largest_members() {
        let messages: Vec<Json> = (0..2000)
            .map(|i| json!({"uuid": format!("m{i}"), "text": "x".repeat(200)}))
            .collect();
        let payload = json!({"uuid": "c1", "status": "archived", "messages": messages});
        let (text, left_out) = abridge(&payload, PUBLISHED_PAYLOAD_MAX);
        assert_eq!(left_out, ["messages"]);
        assert!(text.len() <= PUBLISHED_PAYLOAD_MAX);
        let kept: Json = serde_json::from_str(&text).unwrap();
        assert_eq!(kept, json!({"uuid": "c1", "status": "archived"}));
        let (whole, none) = abridge(&json!({"uuid": "c1"}), PUBLISHED_PAYLOAD_MAX);
        assert_eq!((whole.as_str(), none.len()), (r#"{"uuid":"c1"}"#, 0));
    }
}
