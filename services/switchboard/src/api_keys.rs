//! `switchboard api-keys`: create, list and revoke a workspace's API keys straight in the
//! gateway's log (SQLite in a `dev` data directory, also while `dev` runs; Postgres with
//! `SWITCHBOARD_DATABASE_URL`).

use std::time::Duration;

use anyhow::Context as _;
use switchboard_gateway::ApiKeys;
use switchboard_runtime::Config;

use crate::cluster::{self, ServiceName};

async fn keys(config: &Config) -> anyhow::Result<ApiKeys> {
    let gateway: ServiceName = switchboard_gateway::SERVICE
        .parse()
        .map_err(anyhow::Error::msg)?;
    Ok(ApiKeys::new(cluster::open(config, &gateway).await?))
}

/// Creates a key and prints it alone on the last line.
pub async fn create(
    config: Config,
    workspace: &str,
    name: &str,
    scopes: &[String],
    expires_in: Option<Duration>,
) -> anyhow::Result<()> {
    let keys = keys(&config).await?;
    let expires_at = match expires_in {
        Some(d) => switchboard_eventlog::now_micros() + i64::try_from(d.as_micros())?,
        None => 0,
    };
    let request_id = format!("cli_{}", uuid::Uuid::now_v7());
    let created = keys
        .create(workspace, &request_id, name, scopes, expires_at, "cli")
        .await
        .context("creating the API key")?;
    let record = &created.record;
    println!("created {} ({}) in {workspace}", record.id, record.name);
    println!("  scopes   {}", record.scopes.join(", "));
    if record.expires_at != 0 {
        println!(
            "  expires  {} (microseconds since the epoch)",
            record.expires_at
        );
    }
    println!("the key is shown once; keep it now:");
    println!("{}", created.key);
    Ok(())
}

/// Lists a workspace's keys, one a line.
pub async fn list(config: Config, workspace: &str) -> anyhow::Result<()> {
    let keys = keys(&config).await?;
    let now = switchboard_eventlog::now_micros();
    let mut after = None;
    loop {
        let (page, more) = keys.store().list(workspace, after.clone(), 100).await?;
        for key in &page {
            let state = if key.revoked_at != 0 {
                "revoked"
            } else if key.refused_at(now) {
                "expired"
            } else {
                "live"
            };
            println!(
                "{}  {}  {:<8} {}  [{}]",
                key.id,
                key.prefix,
                state,
                key.name,
                key.scopes.join(",")
            );
        }
        match (more, page.last()) {
            (true, Some(last)) => after = Some((last.created_at, last.id.clone())),
            _ => return Ok(()),
        }
    }
}

/// Revokes key `id` of `workspace`.
pub async fn revoke(config: Config, workspace: &str, id: &str) -> anyhow::Result<()> {
    let keys = keys(&config).await?;
    let request_id = format!("cli_{}", uuid::Uuid::now_v7());
    let key = keys
        .revoke(workspace, &request_id, id, "cli")
        .await
        .context("revoking the API key")?;
    println!("revoked {} ({})", key.id, key.name);
    Ok(())
}
