//! The composition: the services this binary runs, and the commands that run them: all of
//! them in one process on SQLite (`dev`), or the named ones against Postgres and NATS
//! (`serve`). Everything else about a service is in its own crate's module; adding one is
//! one line in [`host`].

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use anyhow::Context as _;
use async_nats::jetstream;
use switchboard_eventlog::EventLog;
use switchboard_runtime::{Config, Host, Mode, ServiceModule, shutdown, telemetry};
use tracing::warn;

/// Every service the binary can run, in start order.
pub fn host() -> Host {
    Host::new(vec![
        Arc::new(switchboard_conversations::MODULE),
        Arc::new(switchboard_actions::MODULE),
        Arc::new(switchboard_connexease::MODULE),
        Arc::new(switchboard_webhooks::MODULE),
        Arc::new(switchboard_flows::MODULE),
        Arc::new(switchboard_insights::MODULE),
        Arc::new(switchboard_gateway::MODULE),
    ])
}

/// A service named on the command line, checked against [`host`].
#[derive(Clone)]
pub struct ServiceName(Arc<dyn ServiceModule>);

impl ServiceName {
    pub fn module(&self) -> &Arc<dyn ServiceModule> {
        &self.0
    }
}

impl fmt::Display for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.name())
    }
}

impl FromStr for ServiceName {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        host().module(s).map(ServiceName).map_err(|e| e.to_string())
    }
}

/// Opens a service's log (with its read models) and applies its migrations.
pub async fn open(config: &Config, service: &ServiceName) -> anyhow::Result<EventLog> {
    Ok(host().open(config, service.module().as_ref()).await?)
}

/// `switchboard dev`: every service, SQLite logs, no NATS, and the Connexease simulator
/// standing in for Connexease.
pub async fn dev(config: Config) -> anyhow::Result<()> {
    let mut config = config;
    config.database_url = None;
    config.nats_url = None;
    let telemetry = telemetry::init("switchboard", &config)?;
    let shutdown = shutdown::signal_token();
    let host = host();
    let header = [
        "switchboard dev: every service in one process".to_owned(),
        format!("  data directory  {}", config.data_dir.display()),
    ];
    let services = host.modules().to_vec();
    let result = host
        .run(config, Mode::Dev, &services, None, &header, shutdown)
        .await;
    telemetry.shutdown();
    Ok(result?)
}

/// `switchboard serve`: the named services against Postgres and NATS.
pub async fn serve(
    config: Config,
    services: Vec<ServiceName>,
    allow_unauthenticated: bool,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        config.service_token.is_some() || allow_unauthenticated,
        "SWITCHBOARD_SERVICE_TOKEN is required by `serve`: the gRPC API trusts the workspace \
         in each request, so only our own services may call it (pass --allow-unauthenticated \
         to run without, on a trusted network only)"
    );
    let telemetry = telemetry::init("switchboard", &config)?;
    let shutdown = shutdown::signal_token();
    anyhow::ensure!(
        config.database_url.is_some(),
        "SWITCHBOARD_DATABASE_URL is required by `serve` (use `dev` for the embedded mode)"
    );
    let nats_url = config
        .nats_url
        .clone()
        .context("SWITCHBOARD_NATS_URL is required by `serve` (use `dev` for the embedded mode)")?;
    // NATS being down must not stop writes: the log is the truth, and the relay catches up.
    let client = async_nats::ConnectOptions::new()
        .name("switchboard")
        .retry_on_initial_connect()
        .connect(&nats_url)
        .await
        .with_context(|| format!("connecting to NATS at {nats_url}"))?;
    let js = jetstream::new(client.clone());
    let services: Vec<_> = services.into_iter().map(|s| s.0).collect();
    let result = host()
        .run(config, Mode::Serve, &services, Some(js), &[], shutdown)
        .await;
    if let Err(e) = client.flush().await {
        warn!(error = %e, "could not flush NATS on shutdown");
    }
    telemetry.shutdown();
    Ok(result?)
}

/// `switchboard migrate`: the named services' migrations (every service's by default).
pub async fn migrate(config: Config, services: Vec<ServiceName>) -> anyhow::Result<()> {
    anyhow::ensure!(
        config.database_url.is_some(),
        "SWITCHBOARD_DATABASE_URL is required by `migrate`"
    );
    let host = host();
    let services: Vec<Arc<dyn ServiceModule>> = if services.is_empty() {
        host.modules().to_vec()
    } else {
        services.into_iter().map(|s| s.0).collect()
    };
    for service in services {
        host.open(&config, service.as_ref()).await?;
        println!("migrated {}", service.name());
    }
    Ok(())
}
