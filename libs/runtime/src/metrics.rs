//! The process-wide Prometheus recorder behind the `metrics` facade.
//!
//! Code anywhere in the workspace records with `metrics::counter!` and friends; this
//! module installs the one recorder that collects them, and the ops HTTP server renders
//! it at `/metrics` (see [`crate::http::ops_router`]).

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Bucket bounds (seconds) for every `*_seconds` histogram: 1 ms to 30 s, enough to tell
/// a cache hit from a database round trip from a timeout.
const DURATION_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// How often histogram samples are folded into buckets when nobody scrapes.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the global Prometheus recorder on first call and returns its handle; later
/// calls return the same handle, so tests in one process can call it freely.
///
/// If some other recorder was installed first, metrics go there and this handle renders
/// an empty page; a warning is logged once.
pub fn prometheus() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new();
            let builder = match builder
                .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), DURATION_BUCKETS)
            {
                Ok(builder) => builder,
                // Only fails for an empty bucket list, which DURATION_BUCKETS is not.
                Err(_) => PrometheusBuilder::new(),
            };
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            if let Err(error) = metrics::set_global_recorder(recorder) {
                tracing::warn!(%error, "another metrics recorder is installed; /metrics will be empty");
            }
            spawn_upkeep(handle.clone());
            handle
        })
        .clone()
}

/// Without the exporter's HTTP listener nothing drains histograms between scrapes, so
/// a small thread does it; it lives as long as the process, like the recorder.
fn spawn_upkeep(handle: PrometheusHandle) {
    let spawned = std::thread::Builder::new()
        .name("prometheus-upkeep".to_owned())
        .spawn(move || {
            loop {
                std::thread::sleep(UPKEEP_INTERVAL);
                handle.run_upkeep();
            }
        });
    if let Err(error) = spawned {
        tracing::warn!(%error, "cannot start metrics upkeep; histograms drain only on scrape");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_calls_share_one_recorder() {
        let first = prometheus();
        let second = prometheus();
        metrics::counter!("switchboard_runtime_test_total").increment(2);
        assert!(first.render().contains("switchboard_runtime_test_total 2"));
        assert!(second.render().contains("switchboard_runtime_test_total 2"));
    }
}
