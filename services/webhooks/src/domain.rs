//! The pure part of webhooks: what a valid endpoint is, which events it wants, how a
//! message is signed (Standard Webhooks), when the next attempt is due, and what an
//! attempt's failure was. No I/O.

use std::net::IpAddr;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use switchboard_proto::webhooks::v1::ErrorClass;
use url::Url;

/// Event types of the webhooks service's own log.
pub use switchboard_contract::event_types::webhooks as event_types;

/// Bounds of every input.
pub mod limits {
    pub const URL_BYTES: usize = 2048;
    pub const DESCRIPTION_BYTES: usize = 500;
    pub const EVENT_TYPES: usize = 50;
    pub const ENDPOINTS_PER_WORKSPACE: u64 = 50;
    pub const RATE_LIMIT_PER_SECOND: u32 = 10_000;
    pub const SECRET_MIN_BYTES: usize = 24;
    pub const SECRET_MAX_BYTES: usize = 64;
    pub const DEFAULT_GRACE_SECONDS: u32 = 24 * 3600;
    pub const MAX_GRACE_SECONDS: u32 = 7 * 24 * 3600;
    /// Response bodies are kept up to this many bytes in the attempts log.
    pub const RESPONSE_BODY_BYTES: usize = 20 * 1024;
}

use switchboard_contract::event_types::{actions, conversations};

/// Public event types a workspace can subscribe to, and the families (`<family>.*`).
/// Connexease's own events arrive as `connexease.<event>` and are matched by family.
pub const EVENT_TYPES: &[&str] = &[
    conversations::CREATED,
    conversations::UPDATED,
    conversations::ENDED,
    conversations::MESSAGE_CREATED,
    actions::EXECUTED,
    switchboard_contract::subjects::CONNEXEASE_STATS_TYPE,
];
pub const EVENT_FAMILIES: &[&str] = &["conversation", "message", "action", "connexease"];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    pub field: String,
    pub description: String,
}

#[derive(Default)]
pub struct Violations(pub Vec<FieldViolation>);

impl Violations {
    pub fn push(&mut self, field: impl Into<String>, description: impl Into<String>) {
        self.0.push(FieldViolation {
            field: field.into(),
            description: description.into(),
        });
    }

    pub fn finish(self) -> Result<(), Vec<FieldViolation>> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(self.0)
        }
    }
}

/// What the operator allows endpoints to be.
#[derive(Debug, Clone, Default)]
pub struct UrlRules {
    /// Hosts that may be reached over plain http (a receiver on a private network, tests).
    pub allow_http_hosts: Vec<String>,
    /// The SSRF policy: IP literals are checked here, names after DNS at delivery.
    pub policy: switchboard_outbound::Policy,
}

/// Checks an endpoint URL: absolute, https (or http for an allowed host), no credentials,
/// bounded, and not an IP literal the SSRF policy refuses.
pub fn check_url(v: &mut Violations, field: &str, raw: &str, rules: &UrlRules) {
    if raw.is_empty() {
        return v.push(field, "required");
    }
    if raw.len() > limits::URL_BYTES {
        return v.push(field, format!("at most {} bytes", limits::URL_BYTES));
    }
    let url = match Url::parse(raw) {
        Ok(url) => url,
        Err(e) => return v.push(field, format!("not a URL: {e}")),
    };
    let Some(host) = url.host_str() else {
        return v.push(field, "needs a host");
    };
    let host_plain = host.trim_start_matches('[').trim_end_matches(']');
    match url.scheme() {
        "https" => {}
        "http" if rules.allow_http_hosts.iter().any(|h| h == host_plain) => {}
        "http" => {
            return v.push(
                field,
                format!("must be https (the operator allows http only for: {})", {
                    let hosts = rules.allow_http_hosts.join(", ");
                    if hosts.is_empty() {
                        "no host".to_owned()
                    } else {
                        hosts
                    }
                }),
            );
        }
        other => return v.push(field, format!("scheme `{other}` is not http(s)")),
    }
    if !url.username().is_empty() || url.password().is_some() {
        return v.push(field, "must not carry credentials; they would be logged");
    }
    if url.fragment().is_some() {
        return v.push(field, "must not have a fragment");
    }
    if let Ok(ip) = host_plain.parse::<IpAddr>()
        && let Err(blocked) = rules.policy.check(host_plain, ip)
    {
        v.push(
            field,
            format!(
                "{ip} is a {} address; webhooks may not reach it",
                blocked.reason
            ),
        );
    }
}

/// Checks the event-type filter: known types or families, no repeats, bounded.
pub fn check_event_types(v: &mut Violations, event_types: &[String]) {
    if event_types.len() > limits::EVENT_TYPES {
        v.push(
            "event_types",
            format!("at most {} entries", limits::EVENT_TYPES),
        );
        return;
    }
    for (i, t) in event_types.iter().enumerate() {
        let field = format!("event_types[{i}]");
        let known = match t.strip_suffix(".*") {
            Some(family) => EVENT_FAMILIES.contains(&family),
            None => {
                EVENT_TYPES.contains(&t.as_str())
                    || t.strip_prefix("connexease.").is_some_and(|name| {
                        !name.is_empty()
                            && name.len() <= 64
                            && name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
                    })
            }
        };
        if !known {
            v.push(
                field,
                format!(
                    "unknown event type `{t}`; known: {}, or a family such as `conversation.*`",
                    EVENT_TYPES.join(", ")
                ),
            );
        } else if event_types[..i].contains(t) {
            v.push(field, format!("`{t}` is listed twice"));
        }
    }
}

/// Whether an endpoint filtering on `filter` wants `event_type`.
pub fn wants(filter: &[String], event_type: &str) -> bool {
    filter.is_empty()
        || filter.iter().any(|f| match f.strip_suffix(".*") {
            Some(family) => event_type
                .strip_prefix(family)
                .is_some_and(|rest| rest.starts_with('.')),
            None => f == event_type,
        })
}

/// The signing secret of `key` (24 to 64 bytes): `whsec_` + its base64. The random key
/// comes from the caller (the service's `generate_secret`), so this stays pure.
pub fn secret_from_key(key: &[u8]) -> String {
    format!("whsec_{}", BASE64.encode(key))
}

/// The key bytes of a `whsec_` secret, or why it is not one.
pub fn secret_key(secret: &str) -> Result<Vec<u8>, String> {
    let encoded = secret
        .strip_prefix("whsec_")
        .ok_or("must start with `whsec_`")?;
    let key = BASE64
        .decode(encoded)
        .map_err(|_| "after `whsec_` must come standard base64")?;
    if !(limits::SECRET_MIN_BYTES..=limits::SECRET_MAX_BYTES).contains(&key.len()) {
        return Err(format!(
            "must encode {} to {} bytes; this encodes {}",
            limits::SECRET_MIN_BYTES,
            limits::SECRET_MAX_BYTES,
            key.len()
        ));
    }
    Ok(key)
}

/// The `webhook-signature` header value: `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`
/// per secret, space-separated.
pub fn signature_header<K: AsRef<[u8]>>(
    keys: &[K],
    message_id: &str,
    timestamp: i64,
    body: &[u8],
) -> String {
    keys.iter()
        .map(|key| {
            let mut mac =
                Hmac::<Sha256>::new_from_slice(key.as_ref()).expect("HMAC takes any key length");
            mac.update(message_id.as_bytes());
            mac.update(b".");
            mac.update(timestamp.to_string().as_bytes());
            mac.update(b".");
            mac.update(body);
            format!("v1,{}", BASE64.encode(mac.finalize().into_bytes()))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// When attempts are made: the first at once, then after each delay of the schedule, each
/// delay varied by ±`jitter` (a fraction) so failing receivers are not hit in waves.
#[derive(Debug, Clone)]
pub struct RetrySchedule {
    pub delays: Vec<Duration>,
    pub jitter: f64,
    /// `Retry-After` is honoured up to this long.
    pub max_retry_after: Duration,
}

impl Default for RetrySchedule {
    fn default() -> Self {
        let s = Duration::from_secs;
        Self {
            delays: vec![
                s(5),
                s(5 * 60),
                s(30 * 60),
                s(2 * 3600),
                s(5 * 3600),
                s(10 * 3600),
                s(10 * 3600),
            ],
            jitter: 0.2,
            max_retry_after: s(3600),
        }
    }
}

impl RetrySchedule {
    /// The delay before the attempt after attempt number `attempts` (1-based; attempts of
    /// this round), or `None` when the schedule is used up. `retry_after` from the receiver
    /// pushes it later, up to `max_retry_after`; `unit` in `[0, 1)` picks the jitter.
    pub fn next_delay(
        &self,
        attempts: u32,
        retry_after: Option<Duration>,
        unit: f64,
    ) -> Option<Duration> {
        let base = *self.delays.get(attempts.checked_sub(1)? as usize)?;
        let factor = 1.0 + self.jitter * (2.0 * unit - 1.0);
        let jittered = base.mul_f64(factor.max(0.0));
        Some(match retry_after {
            Some(wanted) => jittered.max(wanted.min(self.max_retry_after)),
            None => jittered,
        })
    }
}

/// What happened to an attempt, as the attempts log records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Delivered,
    /// Try again (per the schedule).
    Retry,
    /// Give up on the message now.
    Fail,
    /// Give up and disable the endpoint (410 Gone).
    Gone,
}

/// How a response status is judged: 2xx delivered; 410 gone; everything else, 3xx
/// included (redirects are not followed), retried.
pub fn judge_status(status: u16) -> Verdict {
    match status {
        200..=299 => Verdict::Delivered,
        410 => Verdict::Gone,
        _ => Verdict::Retry,
    }
}

/// Statuses that ask us to slow down: `Retry-After` is honoured for them.
pub fn throttles(status: u16) -> bool {
    matches!(status, 429 | 502 | 503 | 504)
}

/// What an attempt's transport error says, read off the error at the edge (the
/// dispatcher) so that judging it stays here, without the HTTP client's types.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TransportFailure {
    /// The outbound guard refused the destination, somewhere in the error's causes.
    pub blocked: bool,
    /// The HTTP client reports that the request timed out.
    pub timed_out: bool,
    /// The error and each of its causes, lower-cased, separated by spaces.
    pub causes: String,
}

/// The class of a transport failure.
pub fn classify_failure(failure: &TransportFailure) -> ErrorClass {
    if failure.blocked {
        return ErrorClass::SsrfBlocked;
    }
    if failure.timed_out {
        return ErrorClass::Timeout;
    }
    let text = failure.causes.as_str();
    if text.contains("timed out") || text.contains("timeout") {
        ErrorClass::Timeout
    } else if text.contains("dns") || text.contains("failed to lookup") || text.contains("resolve")
    {
        ErrorClass::Dns
    } else if text.contains("certificate") || text.contains("tls") || text.contains("handshake") {
        ErrorClass::Tls
    } else if text.contains("connect") || text.contains("refused") {
        ErrorClass::Connect
    } else {
        ErrorClass::Other
    }
}

/// The conversation a public event's JSON concerns (its ordered lane), if any.
pub fn lane_of(data: &serde_json::Value) -> String {
    let candidates = [
        data.pointer("/conversation/id"),
        data.pointer("/conversation_id"),
        data.pointer("/message/conversation_id"),
    ];
    candidates
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str())
        .find(|s| !s.is_empty())
        .unwrap_or_default()
        .to_owned()
}

/// `body` cut at `limit` bytes on a character boundary, and whether it was cut.
pub fn truncate(body: &[u8], limit: usize) -> (String, bool) {
    let text = String::from_utf8_lossy(body);
    if text.len() <= limit {
        return (text.into_owned(), false);
    }
    let mut end = limit;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    (text[..end].to_owned(), true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> UrlRules {
        UrlRules {
            allow_http_hosts: vec!["127.0.0.1".into()],
            policy: switchboard_outbound::Policy::allowing(&["127.0.0.0/8"]).unwrap(),
        }
    }

    fn url_problem(url: &str) -> Option<String> {
        let mut v = Violations::default();
        check_url(&mut v, "url", url, &rules());
        v.0.pop().map(|v| v.description)
    }

    #[test]
    fn endpoint_urls_are_checked() {
        assert_eq!(url_problem("https://example.com/hook"), None);
        assert_eq!(url_problem("http://127.0.0.1:9000/hook"), None);
        assert!(
            url_problem("http://example.com/hook")
                .unwrap()
                .contains("https")
        );
        assert!(url_problem("ftp://example.com").unwrap().contains("scheme"));
        assert!(
            url_problem("https://u:p@example.com")
                .unwrap()
                .contains("credentials")
        );
        assert!(
            url_problem("https://10.0.0.8/hook")
                .unwrap()
                .contains("private")
        );
        assert!(
            url_problem("https://169.254.169.254/")
                .unwrap()
                .contains("link-local")
        );
        assert!(url_problem("https://[::1]/").unwrap().contains("loopback"));
    }

    #[test]
    fn event_type_filters_know_their_types() {
        let mut v = Violations::default();
        check_event_types(
            &mut v,
            &[
                "conversation.updated".into(),
                "conversation.*".into(),
                "connexease.conversation_archived".into(),
                "conversation.exploded".into(),
                "conversation.updated".into(),
            ],
        );
        let fields: Vec<_> = v.0.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(fields, ["event_types[3]", "event_types[4]"]);
        assert!(wants(&["conversation.*".into()], "conversation.updated"));
        assert!(!wants(&["conversation.*".into()], "conversations.updated"));
        assert!(!wants(&["message.created".into()], "conversation.updated"));
        assert!(wants(&[], "action.executed"));
    }

    #[test]
    fn secrets_are_whsec_and_24_to_64_bytes() {
        assert_eq!(secret_key(&secret_from_key(&[7; 32])).unwrap(), vec![7; 32]);
        assert!(secret_key("abc").unwrap_err().contains("whsec_"));
        let short = format!("whsec_{}", BASE64.encode([1u8; 16]));
        assert!(secret_key(&short).unwrap_err().contains("24 to 64"));
        let long = format!("whsec_{}", BASE64.encode([1u8; 65]));
        assert!(secret_key(&long).is_err());
    }

    #[test]
    fn the_signature_matches_the_specifications_example() {
        // The example of the Standard Webhooks specification.
        let key = secret_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = br#"{"test": 2432232314}"#;
        let header = signature_header(&[key], "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body);
        assert_eq!(header, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn the_schedule_is_jittered_and_honours_retry_after_within_bounds() {
        let schedule = RetrySchedule::default();
        assert_eq!(
            schedule.next_delay(1, None, 0.5),
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            schedule.next_delay(1, None, 0.0),
            Some(Duration::from_secs(4))
        );
        assert_eq!(
            schedule.next_delay(1, None, 1.0),
            Some(Duration::from_secs(6))
        );
        assert_eq!(schedule.next_delay(8, None, 0.5), None);
        assert_eq!(
            schedule.next_delay(1, Some(Duration::from_secs(60)), 0.5),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            schedule.next_delay(1, Some(Duration::from_secs(86_400)), 0.5),
            Some(Duration::from_secs(3600))
        );
    }

    #[test]
    fn statuses_are_judged_like_the_issue_says() {
        assert_eq!(judge_status(204), Verdict::Delivered);
        assert_eq!(judge_status(302), Verdict::Retry);
        assert_eq!(judge_status(410), Verdict::Gone);
        assert_eq!(judge_status(500), Verdict::Retry);
        assert!(throttles(429) && throttles(502) && throttles(504) && !throttles(500));
    }

    #[test]
    fn lanes_and_truncation() {
        let data = serde_json::json!({"conversation": {"id": "conv_1"}});
        assert_eq!(lane_of(&data), "conv_1");
        assert_eq!(lane_of(&serde_json::json!({"x": 1})), "");
        let (cut, truncated) = truncate("héllo".as_bytes(), 2);
        assert_eq!((cut.as_str(), truncated), ("h", true));
    }

    #[test]
    fn transport_failures_are_classified() {
        let failure = |causes: &str| TransportFailure {
            causes: causes.into(),
            ..Default::default()
        };
        let blocked = TransportFailure {
            blocked: true,
            timed_out: true,
            ..failure("timed out")
        };
        assert_eq!(classify_failure(&blocked), ErrorClass::SsrfBlocked);
        let timed_out = TransportFailure {
            timed_out: true,
            ..failure("error sending request")
        };
        assert_eq!(classify_failure(&timed_out), ErrorClass::Timeout);
        assert_eq!(
            classify_failure(&failure("operation timed out")),
            ErrorClass::Timeout
        );
        assert_eq!(
            classify_failure(&failure("failed to lookup address")),
            ErrorClass::Dns
        );
        assert_eq!(
            classify_failure(&failure("invalid peer certificate")),
            ErrorClass::Tls
        );
        assert_eq!(
            classify_failure(&failure("connection refused")),
            ErrorClass::Connect
        );
        assert_eq!(
            classify_failure(&failure("something else")),
            ErrorClass::Other
        );
    }
}
