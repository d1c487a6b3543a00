//! The ops HTTP server: Prometheus metrics and liveness/readiness probes.
//!
//! It is separate from the gRPC port so that scrapers and orchestrators never need the
//! service token, and so a saturated gRPC server still answers probes.

use std::sync::Arc;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::error::RuntimeError;

/// What `/readyz` asks: `Ok` when the process can do its work, else what it cannot reach.
pub type Readiness =
    Arc<dyn Fn() -> futures::future::BoxFuture<'static, Result<(), String>> + Send + Sync>;

/// `GET /metrics` (Prometheus text exposition), `GET /healthz` and `GET /readyz`
/// (both `200 ok` while the process serves).
pub fn ops_router(handle: PrometheusHandle) -> Router {
    ops_router_with(handle, Arc::new(|| Box::pin(async { Ok(()) })))
}

/// [`ops_router`] whose `/readyz` answers `503` with the reason while `ready` says the
/// process cannot work (its database or NATS out of reach); `/healthz` stays a liveness
/// probe: `200` while the process runs.
pub fn ops_router_with(handle: PrometheusHandle, ready: Readiness) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(move || {
                let body = handle.render();
                async move {
                    (
                        [(
                            header::CONTENT_TYPE,
                            "text/plain; version=0.0.4; charset=utf-8",
                        )],
                        body,
                    )
                        .into_response()
                }
            }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let ready = ready.clone();
                async move {
                    match ready().await {
                        Ok(()) => (StatusCode::OK, "ok".to_owned()),
                        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}")),
                    }
                }
            }),
        )
}

/// Serves `router` on `listener` until `shutdown` is cancelled, then stops accepting and
/// lets in-flight requests finish.
pub async fn serve_http(
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
) -> Result<(), RuntimeError> {
    let local_addr = listener.local_addr()?;
    tracing::info!(%local_addr, "ops HTTP server listening");
    axum::serve(listener, router)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await?;
    tracing::info!(%local_addr, "ops HTTP server stopped");
    Ok(())
}
