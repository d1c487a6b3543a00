//! The event log: the source of truth of every Switchboard service.
//!
//! Each service owns one append-only log (a Postgres schema in production, a SQLite file in
//! embedded mode). Appends state an expected stream version and are idempotent by event id;
//! inline [`Projection`]s update read models in the same transaction; readers follow the
//! log by a gap-safe [`LogPosition`]; the [`Relay`] publishes it to NATS JetStream; and
//! [`Subscription`]s deliver another service's events to a [`Handler`] exactly once in
//! effect (processed-event records written in the handler's own transaction).
#![forbid(unsafe_code)]

mod error;
mod event;
mod postgres;
mod projection;
mod relay;
mod sqlite;
mod store;
mod subscription;
pub mod testing;
mod tx;

pub use error::EventLogError;
pub use event::{
    ExpectedVersion, LogPosition, Metadata, NewEvent, RecordedEvent, StreamRef, derive_event_id,
    micros, now_micros, timestamp,
};
pub use projection::{Projection, RebuildProgress, Upcaster};
pub use relay::{Relay, RelayConfig, Router, StreamSpec, ensure_stream};
pub use store::{Appended, DeadLetter, EventLog, Leadership, Snapshot, StoreConfig};
pub use subscription::{
    HandleError, Handler, JetStreamSubscription, LogTailSubscription, Subscription,
    SubscriptionConfig,
};
pub use tx::Tx;
