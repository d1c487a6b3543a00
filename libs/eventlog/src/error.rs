//! The one error type of the event log, with variants a caller can act on.

/// What went wrong with an event-log operation.
#[derive(Debug, thiserror::Error)]
pub enum EventLogError {
    /// The stream is not at the expected version: another writer won the race. Reload,
    /// decide again, and retry.
    #[error("stream {stream} is at version {actual}, expected {expected}")]
    Conflict {
        stream: String,
        expected: String,
        actual: u64,
    },
    /// An argument is outside what the log accepts (empty batch, bad schema name, ...).
    #[error("invalid {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    /// A stored event could not be decoded; the log itself is intact.
    #[error("event {event_id} ({event_type}) cannot be decoded: {reason}")]
    Corrupt {
        event_id: String,
        event_type: String,
        reason: String,
    },
    /// A read model failed to apply events; the append was rolled back.
    #[error("projection {name} failed: {reason}")]
    Projection { name: String, reason: String },
    /// The database refused or could not be reached.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// The write had to come from the holder of a lease this writer no longer holds:
    /// another process took the role over, and this write was refused.
    #[error("lease {lease} is no longer held at token {token}; the write was refused")]
    Fenced { lease: String, token: i64 },
    /// NATS refused or could not be reached.
    #[error("nats: {0}")]
    Nats(String),
}

impl EventLogError {
    pub(crate) fn nats(err: impl std::fmt::Display) -> Self {
        Self::Nats(err.to_string())
    }
}
