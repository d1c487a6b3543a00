//! Re-feeding a JetStream consumer from the producer's log.
//!
//! Streams keep messages for a while (their retention); the producer's log keeps every
//! event for ever. A durable consumer that stayed away longer than its stream's retention
//! would find the events it had not acknowledged gone, and JetStream moves it past them
//! without a word. So each consumer records, now and then, up to which event of the log
//! it has settled everything ([`Progress`]), and when it starts it compares what the
//! stream still holds with what it acknowledged: if messages went before it acknowledged
//! them, it reads the producer's log from its record up to the stream's first message and
//! hands every event it takes to its handler (events already handled are skipped by their
//! processed records), then goes on with the stream.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::EventLogError;
use crate::event::{LogPosition, RecordedEvent};
use crate::store::EventLog;

/// Opens the producer's log, when a re-feed needs it.
pub type OpenLog =
    Arc<dyn Fn() -> BoxFuture<'static, Result<EventLog, EventLogError>> + Send + Sync>;

/// Which of the producer's events a consumer takes (its subject filter, through the
/// producer's router).
pub type EventFilter = Arc<dyn Fn(&RecordedEvent) -> bool + Send + Sync>;

/// Where a consumer is re-fed from: the producer's log and the consumer's filter on it.
#[derive(Clone)]
pub struct Backfill {
    pub open: OpenLog,
    pub filter: EventFilter,
}

/// The name under which a consumer's progress through the producer's log is recorded in
/// its inbox.
pub(crate) fn checkpoint_name(consumer: &str) -> String {
    format!("jetstream:{consumer}")
}

/// The messages a consumer received, in stream order, and which it has settled: what it
/// has settled everything up to is where a re-feed starts.
#[derive(Default)]
pub(crate) struct Progress {
    /// Stream sequence, the event's log position, settled.
    received: VecDeque<(u64, i64, bool)>,
    /// The log position of the last event before which everything is settled.
    settled_through: Option<i64>,
    saved: Option<i64>,
}

impl Progress {
    /// A message delivered (again, after a restart, perhaps out of order): kept in stream
    /// order, once.
    pub(crate) fn received(&mut self, sequence: u64, global_position: i64) {
        if let Err(at) = self
            .received
            .binary_search_by_key(&sequence, |(seq, _, _)| *seq)
        {
            self.received.insert(at, (sequence, global_position, false));
        }
    }

    pub(crate) fn settled(&mut self, sequence: u64) {
        for entry in self.received.iter_mut() {
            if entry.0 == sequence {
                entry.2 = true;
            }
        }
        while let Some(&(_, position, true)) = self.received.front() {
            self.settled_through = Some(position);
            self.received.pop_front();
        }
    }

    /// What to record, if it moved since the last record.
    fn take_unsaved(&mut self) -> Option<i64> {
        let through = self.settled_through?;
        (self.saved != Some(through)).then(|| {
            self.saved = Some(through);
            through
        })
    }
}

/// Records `progress` of `consumer` in its `inbox` every few seconds until `shutdown`.
pub(crate) async fn record_progress(
    consumer: String,
    inbox: EventLog,
    progress: Arc<Mutex<Progress>>,
    shutdown: CancellationToken,
) {
    let name = checkpoint_name(&consumer);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
        let through = progress.lock().expect("not poisoned").take_unsaved();
        if let Some(global_position) = through {
            let position = LogPosition {
                transaction_id: 0,
                global_position,
            };
            if let Err(e) = inbox.save_checkpoint(&name, position).await {
                warn!(consumer = %consumer, error = %e, "could not record the consumer's progress");
            }
        }
        if shutdown.is_cancelled() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_is_what_is_settled_in_stream_order() {
        let mut progress = Progress::default();
        progress.received(3, 30);
        progress.received(5, 50);
        progress.received(9, 90);
        progress.settled(5);
        assert_eq!(progress.take_unsaved(), None, "3 is not settled yet");
        progress.settled(3);
        assert_eq!(progress.take_unsaved(), Some(50));
        assert_eq!(progress.take_unsaved(), None, "recorded once");
        progress.received(5, 50); // a redelivery of a settled message: tracked again
        progress.received(7, 70); // one redelivered out of order, after a restart
        progress.settled(9);
        assert_eq!(
            progress.take_unsaved(),
            None,
            "5 and 7 are not settled again yet"
        );
        progress.settled(5);
        progress.settled(7);
        assert_eq!(progress.take_unsaved(), Some(90));
    }
}
