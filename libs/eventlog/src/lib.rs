//! The event log: the source of truth of every Switchboard service.
//!
//! Each service owns one append-only log (a Postgres schema in production, a SQLite file in
//! embedded mode). Appends state an expected stream version and are idempotent by event id;
//! inline [`Projection`]s update read models in the same transaction; readers follow the
//! log by a gap-safe [`LogPosition`]; the [`Relay`] publishes it to NATS JetStream; and
//! [`Subscription`]s deliver another service's events to a [`Handler`] exactly once in
//! effect (processed-event records written in the handler's own transaction).
//! Command handlers load, decide and append through one skeleton, [`Command`], which
//! retries a bounded number of times when another writer wins the race.
#![forbid(unsafe_code)]

pub mod backfill;
mod command;
mod error;
mod event;
mod handler;
mod lease;
mod postgres;
mod projection;
mod relay;
mod sqlite;
mod store;
mod subscription;
/// Per-test Postgres schemas and NATS prefixes. Test support only: compiled into this
/// crate's own unit tests and, through the `testing` feature, into the tests of crates that
/// ask for it in their dev-dependencies; never into a production build.
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod trace;
mod tx;

pub use command::{
    Aggregate, Command, CommandError, DEFAULT_ATTEMPTS, Decision, Executed, Loaded, SnapshotPolicy,
    VersionOnly, load_stream,
};
pub use error::EventLogError;
pub use event::{
    ExpectedVersion, LogPosition, Metadata, NewEvent, RecordedEvent, StreamRef, derive_event_id,
    micros, now_micros, timestamp,
};
pub use handler::{HandleError, Handler};
pub use lease::{DEFAULT_LEASE_TERM, Fence, Lease};
pub use postgres::{set_acquire_timeout, set_idle_in_transaction_timeout};
pub use projection::{Projection, RebuildProgress, Upcaster};
pub use relay::{Relay, RelayConfig, Retention, Router, StreamSpec, ensure_stream};
pub use store::{Appended, DeadLetter, EventLog, RelayLag, Snapshot, StoreConfig};
pub use subscription::{
    JetStreamSubscription, LogTailSubscription, Subscription, SubscriptionConfig,
};
pub use tx::Tx;
