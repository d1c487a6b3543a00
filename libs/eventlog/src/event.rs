//! The shapes of events going into and coming out of the log, and their NATS envelope.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use prost::Message;
use serde::{Deserialize, Serialize};
use switchboard_proto::events::v1::EventEnvelope;
use uuid::Uuid;

use crate::EventLogError;

/// Namespace of event ids derived from request ids (UUIDv5), fixed forever: changing it
/// would make retried requests append twice.
const EVENT_ID_NAMESPACE: Uuid = Uuid::from_u128(0x5b0a_7d1e_4c2f_4e39_9a51_3f6c_8e2d_1b47);

/// The event id for the `index`-th event produced by a request, so that a retried request
/// derives the same ids and its append is recognised as a duplicate.
pub fn derive_event_id(workspace_id: &str, request_id: &str, index: usize) -> Uuid {
    let name = format!("{workspace_id}\n{request_id}\n{index}");
    Uuid::new_v5(&EVENT_ID_NAMESPACE, name.as_bytes())
}

/// Microseconds since the Unix epoch, the log's unit of time.
pub fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or_default()
}

/// One stream: an aggregate instance. `stream_id` carries the workspace (`ws_1/conv_2`), so
/// no read of a stream can cross workspaces by accident.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StreamRef {
    pub stream_type: String,
    pub stream_id: String,
}

impl StreamRef {
    pub fn new(stream_type: impl Into<String>, stream_id: impl Into<String>) -> Self {
        Self {
            stream_type: stream_type.into(),
            stream_id: stream_id.into(),
        }
    }
}

impl fmt::Display for StreamRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.stream_type, self.stream_id)
    }
}

/// The version a writer believes its stream is at. Versions start at 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpectedVersion {
    /// The stream must not exist yet.
    NoStream,
    /// The stream's last event must have exactly this version.
    Exact(u64),
}

impl ExpectedVersion {
    pub(crate) fn as_u64(self) -> u64 {
        match self {
            Self::NoStream => 0,
            Self::Exact(v) => v,
        }
    }
}

impl fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoStream => f.write_str("no stream"),
            Self::Exact(v) => write!(f, "{v}"),
        }
    }
}

/// Envelope fields that travel with every event besides its payload.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    pub workspace_id: String,
    /// The request or run that started the chain.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub correlation_id: String,
    /// The event or command that caused this one.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub causation_id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub traceparent: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub tracestate: String,
    /// When the change happened, in microseconds since the epoch.
    pub occurred_at: i64,
    /// Who acted, when a call acted for someone (`api_key:<id>`); empty for the services'
    /// own work.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub actor: String,
    /// A digest of the request that stored the event under its request id, so the same id
    /// sent again with another body is refused rather than answered with this result.
    /// Kept in the log only, not on NATS.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub request_hash: String,
}

/// An event to append.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    pub event_id: Uuid,
    pub event_type: String,
    pub schema_version: u32,
    pub payload: Vec<u8>,
    pub metadata: Metadata,
}

/// A position in one service's log that a reader can resume after.
///
/// Postgres hands out `global_position` before commit, so positions can commit out of order.
/// Readers therefore follow `(transaction_id, global_position)`, reading only transactions
/// older than every transaction still running (`pg_snapshot_xmin`); once such a reader has
/// passed a position, nothing can commit before it. SQLite has one writer, so its
/// `transaction_id` is always 0 and the position alone orders the log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LogPosition {
    pub transaction_id: u64,
    pub global_position: i64,
}

impl LogPosition {
    pub const START: Self = Self {
        transaction_id: 0,
        global_position: 0,
    };
}

impl fmt::Display for LogPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.global_position, self.transaction_id)
    }
}

/// An event as stored in the log.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedEvent {
    pub event_id: Uuid,
    pub stream: StreamRef,
    pub stream_version: u64,
    pub global_position: i64,
    pub transaction_id: u64,
    pub event_type: String,
    pub schema_version: u32,
    pub payload: Vec<u8>,
    pub metadata: Metadata,
    /// When the log stored it, in microseconds since the epoch.
    pub recorded_at: i64,
}

impl RecordedEvent {
    pub fn position(&self) -> LogPosition {
        LogPosition {
            transaction_id: self.transaction_id,
            global_position: self.global_position,
        }
    }

    pub fn workspace_id(&self) -> &str {
        &self.metadata.workspace_id
    }

    /// Decodes the payload as the protobuf message `M`.
    pub fn decode<M: Message + Default>(&self) -> Result<M, EventLogError> {
        M::decode(self.payload.as_slice()).map_err(|e| EventLogError::Corrupt {
            event_id: self.event_id.to_string(),
            event_type: self.event_type.clone(),
            reason: e.to_string(),
        })
    }

    /// The envelope sent on NATS.
    pub fn to_envelope(&self) -> EventEnvelope {
        EventEnvelope {
            event_id: self.event_id.to_string(),
            stream_type: self.stream.stream_type.clone(),
            stream_id: self.stream.stream_id.clone(),
            stream_version: self.stream_version,
            global_position: self.global_position,
            event_type: self.event_type.clone(),
            schema_version: self.schema_version,
            workspace_id: self.metadata.workspace_id.clone(),
            occurred_at: Some(timestamp(self.metadata.occurred_at)),
            recorded_at: Some(timestamp(self.recorded_at)),
            correlation_id: self.metadata.correlation_id.clone(),
            causation_id: self.metadata.causation_id.clone(),
            traceparent: self.metadata.traceparent.clone(),
            payload: self.payload.clone(),
            tracestate: self.metadata.tracestate.clone(),
            actor: self.metadata.actor.clone(),
        }
    }

    /// Rebuilds an event from its NATS envelope. The transaction id is not carried on NATS
    /// and is 0.
    pub fn from_envelope(envelope: EventEnvelope) -> Result<Self, EventLogError> {
        let event_id = Uuid::parse_str(&envelope.event_id).map_err(|e| EventLogError::Corrupt {
            event_id: envelope.event_id.clone(),
            event_type: envelope.event_type.clone(),
            reason: format!("event id is not a UUID: {e}"),
        })?;
        Ok(Self {
            event_id,
            stream: StreamRef::new(envelope.stream_type, envelope.stream_id),
            stream_version: envelope.stream_version,
            global_position: envelope.global_position,
            transaction_id: 0,
            event_type: envelope.event_type,
            schema_version: envelope.schema_version,
            payload: envelope.payload,
            metadata: Metadata {
                workspace_id: envelope.workspace_id,
                correlation_id: envelope.correlation_id,
                causation_id: envelope.causation_id,
                traceparent: envelope.traceparent,
                tracestate: envelope.tracestate,
                actor: envelope.actor,
                request_hash: String::new(),
                occurred_at: envelope
                    .occurred_at
                    .as_ref()
                    .map(micros)
                    .unwrap_or_default(),
            },
            recorded_at: envelope
                .recorded_at
                .as_ref()
                .map(micros)
                .unwrap_or_default(),
        })
    }
}

/// A protobuf timestamp from microseconds since the epoch.
pub fn timestamp(micros: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: micros.div_euclid(1_000_000),
        nanos: (micros.rem_euclid(1_000_000) * 1000) as i32,
    }
}

/// Microseconds since the epoch of a protobuf timestamp.
pub fn micros(ts: &prost_types::Timestamp) -> i64 {
    ts.seconds * 1_000_000 + i64::from(ts.nanos) / 1000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_ids_are_stable_and_distinct() {
        assert_eq!(
            derive_event_id("ws_1", "req", 0),
            derive_event_id("ws_1", "req", 0)
        );
        assert_ne!(
            derive_event_id("ws_1", "req", 0),
            derive_event_id("ws_1", "req", 1)
        );
        assert_ne!(
            derive_event_id("ws_1", "req", 0),
            derive_event_id("ws_2", "req", 0)
        );
    }

    #[test]
    fn envelope_round_trips() {
        let event = RecordedEvent {
            event_id: Uuid::now_v7(),
            stream: StreamRef::new("conversation", "ws_1/conv_1"),
            stream_version: 3,
            global_position: 42,
            transaction_id: 0,
            event_type: "conversation.started".into(),
            schema_version: 1,
            payload: vec![1, 2, 3],
            metadata: Metadata {
                workspace_id: "ws_1".into(),
                correlation_id: "req_1".into(),
                causation_id: String::new(),
                traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
                tracestate: "vendor=1".into(),
                occurred_at: 1_700_000_000_123_456,
                actor: "api_key:key_1".into(),
                request_hash: String::new(),
            },
            recorded_at: -1_500_001,
        };
        let back = RecordedEvent::from_envelope(event.to_envelope()).unwrap();
        assert_eq!(back, event);
    }
}
