//! Read models fed by the log, and upcasters that bring old event versions up to date.

use async_trait::async_trait;

use crate::EventLogError;
use crate::event::RecordedEvent;
use crate::tx::Tx;

/// A read model kept from the log. Registered with
/// [`EventLog::with_projection`](crate::EventLog::with_projection), it runs inside every
/// append's transaction (inline, as Marten calls it), and [`EventLog::rebuild`](crate::EventLog::rebuild)
/// can drop and refold it from position 0.
#[async_trait]
pub trait Projection: Send + Sync {
    /// Names the read model in logs and progress output.
    fn name(&self) -> &str;

    /// Folds `events` (one append's, or one rebuild batch, in log order) into the model.
    /// Events of types the projection does not know must be ignored.
    async fn apply(&self, tx: &mut Tx<'_>, events: &[RecordedEvent]) -> Result<(), EventLogError>;

    /// Deletes everything the projection stores, before a rebuild.
    async fn reset(&self, tx: &mut Tx<'_>) -> Result<(), EventLogError>;
}

/// Progress of a rebuild: events folded so far, of the log's total.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RebuildProgress {
    pub done: u64,
    pub total: u64,
}

/// Rewrites an old version of an event into the current one as it is read, so the log is
/// never rewritten and domain code only knows the latest schema. Pure: no I/O.
pub trait Upcaster: Send + Sync {
    /// Upgrades `event` in place if it is an old version this upcaster knows.
    fn upcast(&self, event: &mut RecordedEvent);
}
