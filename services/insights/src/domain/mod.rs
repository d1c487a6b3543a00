//! The insights domain, pure: the dimensions and filters ([`dimensions`]), a conversation's
//! classification ([`facts`]), trend buckets ([`buckets`]), and the two aggregates of the
//! service's own log, a workspace's saved segments ([`segments`]) and its findings
//! ([`findings`]), with the detection that proposes findings.

pub mod buckets;
pub mod dimensions;
pub mod facts;
pub mod findings;
pub mod segments;

use prost::Message as _;
use switchboard_eventlog::{EventLogError, RecordedEvent};
use switchboard_proto::insights::v1 as pb;

pub use switchboard_contract::event_types::insights as event_types;

/// One invalid input field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    pub field: String,
    pub description: String,
}

impl FieldViolation {
    pub fn new(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            description: description.into(),
        }
    }
}

/// Why a command or a question was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    #[error("invalid request: {}", .0.iter().map(|v| format!("{}: {}", v.field, v.description)).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<FieldViolation>),
    #[error("{0} not found")]
    NotFound(&'static str),
    /// A quota of the workspace is used up.
    #[error("{0}")]
    Quota(String),
}

/// `Ok` when nothing was violated.
pub fn finish(violations: Vec<FieldViolation>) -> Result<(), DomainError> {
    if violations.is_empty() {
        Ok(())
    } else {
        Err(DomainError::Invalid(violations))
    }
}

/// An event of the insights log.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    SegmentCreated(pb::SegmentCreated),
    SegmentDeleted(pb::SegmentDeleted),
    FindingRaised(pb::FindingRaised),
    FindingDismissed(pb::FindingDismissed),
}

impl Event {
    pub fn event_type(&self) -> &'static str {
        match self {
            Self::SegmentCreated(_) => event_types::SEGMENT_CREATED,
            Self::SegmentDeleted(_) => event_types::SEGMENT_DELETED,
            Self::FindingRaised(_) => event_types::FINDING_RAISED,
            Self::FindingDismissed(_) => event_types::FINDING_DISMISSED,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        match self {
            Self::SegmentCreated(e) => e.encode_to_vec(),
            Self::SegmentDeleted(e) => e.encode_to_vec(),
            Self::FindingRaised(e) => e.encode_to_vec(),
            Self::FindingDismissed(e) => e.encode_to_vec(),
        }
    }

    /// The event stored as `event`; `None` for a type this log does not hold.
    pub fn decode(event: &RecordedEvent) -> Result<Option<Self>, EventLogError> {
        Ok(Some(match event.event_type.as_str() {
            event_types::SEGMENT_CREATED => Self::SegmentCreated(event.decode()?),
            event_types::SEGMENT_DELETED => Self::SegmentDeleted(event.decode()?),
            event_types::FINDING_RAISED => Self::FindingRaised(event.decode()?),
            event_types::FINDING_DISMISSED => Self::FindingDismissed(event.decode()?),
            _ => return Ok(None),
        }))
    }
}

/// A protobuf time of `ms` milliseconds since the epoch.
pub fn timestamp(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: i32::try_from(ms.rem_euclid(1000) * 1_000_000).unwrap_or(0),
    }
}
