//! What the gRPC layers read off a call: the service and method of its path and the status
//! code of its response. The server's metrics layer (module `grpc`) and the trace layer
//! (module `telemetry`) both label calls with these, so they live below both.

use tonic::codegen::http;

/// Splits `/package.Service/Method` into `("package.Service", "Method")`.
pub(crate) fn split_grpc_path(path: &str) -> (&str, &str) {
    let trimmed = path.trim_start_matches('/');
    trimmed.split_once('/').unwrap_or((trimmed, ""))
}

/// The gRPC status code in the response headers; a missing header counts as OK.
///
/// Streaming responses put the status in trailers, which a header-level layer cannot
/// see without wrapping the body, so they are reported as OK unless they failed before
/// sending headers (a "trailers-only" response).
pub(crate) fn grpc_status_code(headers: &http::HeaderMap) -> i32 {
    headers
        .get("grpc-status")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse().ok())
        .unwrap_or(0)
}

/// The canonical upper-case name of a gRPC status code, as Prometheus label value.
pub(crate) fn code_name(code: i32) -> &'static str {
    match code {
        0 => "OK",
        1 => "CANCELLED",
        2 => "UNKNOWN",
        3 => "INVALID_ARGUMENT",
        4 => "DEADLINE_EXCEEDED",
        5 => "NOT_FOUND",
        6 => "ALREADY_EXISTS",
        7 => "PERMISSION_DENIED",
        8 => "RESOURCE_EXHAUSTED",
        9 => "FAILED_PRECONDITION",
        10 => "ABORTED",
        11 => "OUT_OF_RANGE",
        12 => "UNIMPLEMENTED",
        13 => "INTERNAL",
        14 => "UNAVAILABLE",
        15 => "DATA_LOSS",
        16 => "UNAUTHENTICATED",
        _ => "UNKNOWN",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_grpc_paths() {
        assert_eq!(
            split_grpc_path("/switchboard.conversations.v1.Conversations/Start"),
            ("switchboard.conversations.v1.Conversations", "Start")
        );
        assert_eq!(split_grpc_path("/odd"), ("odd", ""));
    }

    #[test]
    fn reads_grpc_status_header() {
        let mut headers = http::HeaderMap::new();
        assert_eq!(grpc_status_code(&headers), 0);
        headers.insert("grpc-status", http::HeaderValue::from_static("16"));
        assert_eq!(grpc_status_code(&headers), 16);
        assert_eq!(code_name(16), "UNAUTHENTICATED");
    }
}
