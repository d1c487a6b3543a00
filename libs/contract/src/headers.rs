//! Headers of every message the relay publishes: what a consumer needs to deduplicate,
//! trace and route an event without decoding it.

/// JetStream's deduplication id: the event id.
pub const MSG_ID: &str = "Nats-Msg-Id";
/// The stored event's type (`conversation.updated`, `flow_run.action_requested`).
pub const EVENT_TYPE: &str = "sb-event-type";
/// The event's schema version.
pub const SCHEMA_VERSION: &str = "sb-schema-version";
/// The workspace the event belongs to.
pub const WORKSPACE: &str = "sb-workspace";
/// `application/protobuf` (the envelope) or `application/json`.
pub const CONTENT_TYPE: &str = "content-type";
/// W3C trace context of the request that caused the event.
pub const TRACEPARENT: &str = "traceparent";
pub const TRACESTATE: &str = "tracestate";

/// The content type of an encoded envelope.
pub const PROTOBUF: &str = "application/protobuf";

/// gRPC metadata: who a call acts for, when not the calling service itself
/// (`api_key:<id>` for the gateway's callers). Services record it as the actor of the
/// events the call appends.
pub const ACTOR: &str = "x-switchboard-actor";
