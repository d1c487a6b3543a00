//! The bus contract: everything two services (or a service and an outside consumer) must
//! agree on to talk over NATS JetStream or read each other's logs: service names, streams,
//! subjects, event types, durable consumer names and message headers.
//!
//! These are the only places such strings are spelled in production code; a typo is a
//! compile error, and this crate is the reference list (DESIGN.md's "NATS contract" is
//! its prose form). It depends on nothing, so every crate can use it.
#![forbid(unsafe_code)]

pub mod consumers;
pub mod event_types;
pub mod headers;
pub mod services;
pub mod streams;
pub mod subjects;

pub use streams::Stream;
