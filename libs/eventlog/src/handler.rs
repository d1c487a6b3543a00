//! What a consumer does with one event: the [`Handler`] trait and its [`HandleError`].
//!
//! Both the store ([`EventLog::process_once`](crate::EventLog::process_once) runs a handler
//! in the transaction that records the event as processed) and the subscriptions (which
//! deliver events to it) use these, so they live below both.

use async_trait::async_trait;

use crate::event::RecordedEvent;
use crate::tx::Tx;

/// Why a handler did not handle an event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandleError {
    /// Might work later (a dependency is down): redeliver after a backoff, up to the
    /// subscription's attempt limit.
    #[error("retry: {0}")]
    Retry(String),
    /// Can never work (malformed, refers to nothing): dead-letter it now.
    #[error("reject: {0}")]
    Reject(String),
}

/// What a consumer does with one event. Its writes go through `tx`, the transaction that
/// also records the event as processed.
#[async_trait]
pub trait Handler: Send + Sync {
    async fn handle(&self, tx: &mut Tx<'_>, event: &RecordedEvent) -> Result<(), HandleError>;

    /// Whether the event concerns this handler at all. An event it does not want is
    /// acknowledged without a transaction: handling it would change nothing, so there is
    /// nothing to record. The default wants every event.
    async fn wants(&self, _event: &RecordedEvent) -> bool {
        true
    }
}
