//! Everything a Switchboard service needs around its domain code: layered and validated
//! configuration ([`config`]), logging and distributed tracing ([`telemetry`]), the one
//! shutdown token ([`shutdown`]), the Prometheus recorder ([`metrics`]), the gRPC
//! server with health, reflection, auth and per-call metrics ([`grpc`]), and the ops
//! HTTP server ([`http`]).
//!
//! A service's wiring is, in order: [`Config::load`], [`telemetry::init`],
//! [`shutdown::signal_token`], then [`GrpcServer::serve`] and [`http::serve_http`] with
//! clones of that token, then [`telemetry::TelemetryGuard::shutdown`].

#![forbid(unsafe_code)]

pub mod codes;
pub mod config;
pub mod error;
pub mod grpc;
pub mod grpc_input;
mod grpc_wire;
pub mod host;
pub mod http;
pub mod metrics;
pub mod requests;
pub mod service;
pub mod shutdown;
pub mod telemetry;

pub use config::{Config, ConfigError, LogFormat};
pub use error::{RuntimeError, TelemetryError};
pub use grpc::GrpcServer;
pub use host::Host;
pub use service::{Mode, ServiceModule, Wiring};
