//! Shared helpers for cross-service tests and benchmarks.
