//! `switchboard events`: read a service's log as JSON lines, or rebuild its read models.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use switchboard_eventlog::{LogPosition, RecordedEvent};
use switchboard_runtime::Config;

use crate::cluster::{self, ServiceName};

pub async fn tail(
    config: Config,
    service: ServiceName,
    after: i64,
    limit: u64,
    follow: bool,
) -> anyhow::Result<()> {
    let log = cluster::open(&config, &service).await?;
    // Positions, not transaction ids, are what a person knows; the first read from a bare
    // position may repeat nothing and skip nothing already committed.
    let mut position = LogPosition {
        transaction_id: 0,
        global_position: after,
    };
    let mut printed = 0u64;
    loop {
        let batch = log.read_all(position, 500).await?;
        for event in &batch {
            position = event.position();
            if event.global_position <= after {
                continue;
            }
            println!("{}", describe(&service, event));
            printed += 1;
            if limit > 0 && printed >= limit {
                return Ok(());
            }
        }
        if batch.is_empty() {
            if !follow {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

fn describe(service: &ServiceName, event: &RecordedEvent) -> serde_json::Value {
    let payload = service.module().describe(event);
    serde_json::json!({
        "global_position": event.global_position,
        "event_id": event.event_id.to_string(),
        "stream_type": event.stream.stream_type,
        "stream_id": event.stream.stream_id,
        "stream_version": event.stream_version,
        "event_type": event.event_type,
        "schema_version": event.schema_version,
        "workspace_id": event.metadata.workspace_id,
        "correlation_id": event.metadata.correlation_id,
        "occurred_at_us": event.metadata.occurred_at,
        "recorded_at_us": event.recorded_at,
        "payload": payload,
    })
}

pub async fn rebuild(config: Config, service: ServiceName) -> anyhow::Result<()> {
    let log = cluster::open(&config, &service).await?;
    let projection = service.module().read_models().projection;
    let bar = ProgressBar::new(log.count_events().await?);
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} events ({per_sec}, eta {eta})")?
            .progress_chars("=> "),
    );
    bar.set_message(format!("rebuilding {}", projection.name()));
    let folded = log
        .rebuild(projection.as_ref(), &mut |p| {
            bar.set_length(p.total.max(p.done));
            bar.set_position(p.done);
        })
        .await?;
    bar.finish();
    println!("rebuilt {} from {folded} events", projection.name());
    Ok(())
}
