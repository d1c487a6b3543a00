//! Templates and response mapping, shared by the flows and actions services.
//!
//! - [`Renderer`] renders `{{variable}}` templates into URLs (values percent-encoded),
//!   headers (no injected line breaks) and JSON bodies (whole-expression strings keep their
//!   JSON type), with strict undefined variables, filters such as `default`, `json` and
//!   `urlencode`, and bounds on size, depth and work.
//! - [`Renderer::evaluate_expression`] evaluates expressions (arithmetic, comparisons,
//!   filters, and the date and unit functions of `functions`) for calculations.
//! - [`map_response`] pulls typed variables out of a JSON response with RFC 9535 JSONPath.
#![forbid(unsafe_code)]

mod functions;
mod mapping;
mod render;

pub use mapping::{Kind, Mapping, MappingError, map_response};
pub use render::{Limits, Renderer};

/// Why a template could not be rendered. `place` says which part of the request it was
/// (`url`, `headers.Authorization`, `body.customer.email`, ...).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("{place}: the variable `{name}` is not set (give it a value or use `| default(...)`)")]
    MissingVariable { place: String, name: String },
    #[error("{place}: template syntax: {reason}")]
    Syntax { place: String, reason: String },
    #[error("{place}: {reason}")]
    Invalid { place: String, reason: String },
    #[error("{place}: larger than {limit} bytes")]
    TooLarge { place: String, limit: usize },
    #[error("{place}: nested deeper than {limit} levels")]
    TooDeep { place: String, limit: usize },
    #[error("{place}: the template does too much work (out of fuel)")]
    TooExpensive { place: String },
}
