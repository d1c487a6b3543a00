//! End to end: the `switchboard` binary as a real process, called over gRPC, its events
//! seen on NATS, killed with SIGKILL and restarted, and everything still there. One module
//! per user journey; the fixtures they share are in `common`.
//!
//! The tests start the binary Cargo built next to them (`cargo build -p switchboard`, which
//! `make test` runs first), or the one `SWITCHBOARD_BIN` names. Like the rest of the suite
//! they need Postgres on 127.0.0.1:5432 and NATS on 127.0.0.1:4222.

mod common;

mod agent;
mod connexease;
mod faults;
mod forms_and_buttons;
mod lifecycle;
mod look_it_up_and_act;
mod ordering;
mod replicas;
mod rest_api;
mod secure_metadata;
mod traces;
mod variables;
mod webhooks;
mod workflows;
