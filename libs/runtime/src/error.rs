//! The errors this crate returns, one enum per concern.
//!
//! [`RuntimeError`] covers serving (binding, transport, reflection descriptors);
//! [`TelemetryError`] covers installing logging and tracing. Configuration has its own
//! [`crate::ConfigError`] because its messages are written for the operator.

/// Serving failed; the process should log it and exit non-zero.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// A socket could not be bound, accepted on or served.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The gRPC transport failed (tonic could not serve the listener).
    #[error("gRPC transport error: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// A file descriptor set passed to `GrpcServer::with_descriptor` is not a valid
    /// encoded `FileDescriptorSet`; fix the build script that produced it.
    #[error("invalid gRPC reflection descriptor: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
}

/// Logging or tracing could not be installed.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// `log_filter` is not a valid `EnvFilter` directive string.
    #[error("invalid log filter {filter:?}: {reason}")]
    InvalidFilter {
        /// The rejected filter.
        filter: String,
        /// Why `EnvFilter` rejected it.
        reason: String,
    },
    /// The OTLP exporter needs a Tokio runtime to drive its gRPC channel; call
    /// `telemetry::init` from inside `#[tokio::main]`.
    #[error("OTLP export to {endpoint} needs a Tokio runtime; call telemetry::init inside one")]
    NoRuntime {
        /// The configured collector endpoint.
        endpoint: String,
    },
    /// The OTLP span exporter could not be built for the configured endpoint.
    #[error("cannot export traces to {endpoint}: {source}")]
    Exporter {
        /// The configured collector endpoint.
        endpoint: String,
        /// What the exporter builder rejected.
        #[source]
        source: opentelemetry_otlp::ExporterBuildError,
    },
}
