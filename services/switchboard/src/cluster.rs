//! Starting services: all of them in one process on SQLite (`dev`), or the named ones
//! against Postgres and NATS (`serve`), each with its gRPC API, its relay and its
//! consumers, all stopped by one cancellation token.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream;
use switchboard_eventlog::{
    EventLog, Relay, RelayConfig, Router, StoreConfig, StreamSpec, ensure_stream,
};
use switchboard_outbound::{ClientOptions, GuardedClient, Policy};
use switchboard_runtime::{Config, GrpcServer, http, metrics, shutdown, telemetry};
use switchboard_secrets::Keyring;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// The services the binary can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceName {
    Conversations,
    Actions,
}

impl ServiceName {
    pub const ALL: [ServiceName; 2] = [ServiceName::Conversations, ServiceName::Actions];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Conversations => switchboard_conversations::SERVICE,
            Self::Actions => switchboard_actions::SERVICE,
        }
    }
}

impl fmt::Display for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ServiceName {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "conversations" => Ok(Self::Conversations),
            "actions" => Ok(Self::Actions),
            "flows" | "connexease" | "webhooks" | "gateway" => Err(format!(
                "the {s} service is not built yet; available: conversations, actions"
            )),
            other => Err(format!(
                "unknown service `{other}`; available: conversations, actions"
            )),
        }
    }
}

/// Where a service's log lives under `config`: Postgres when a database URL is set,
/// otherwise a SQLite file in the data directory.
pub fn store_config(config: &Config, service: ServiceName) -> StoreConfig {
    match &config.database_url {
        Some(url) => StoreConfig::Postgres {
            url: url.clone(),
            schema: format!("{}{}", config.database_schema_prefix, service.as_str()),
        },
        None => StoreConfig::Sqlite {
            path: config.data_dir.join(format!("{}.db", service.as_str())),
        },
    }
}

/// Opens a service's log (with its projections) and applies its migrations.
pub async fn open(config: &Config, service: ServiceName) -> anyhow::Result<EventLog> {
    let store = store_config(config, service);
    let log = match service {
        ServiceName::Conversations => switchboard_conversations::open_log(&store).await,
        ServiceName::Actions => switchboard_actions::open_log(&store).await,
    }
    .with_context(|| format!("opening the {service} event log"))?;
    log.migrate()
        .await
        .with_context(|| format!("migrating the {service} event log"))?;
    Ok(log)
}

/// A service ready to serve: its log and how it publishes.
struct Running {
    name: ServiceName,
    log: EventLog,
    /// Seals secrets at rest; loaded only for services that keep secrets.
    keyring: Option<Arc<Keyring>>,
    /// The SSRF-guarded client of services that call out.
    outbound: Option<GuardedClient>,
}

impl Running {
    fn router(&self) -> Arc<dyn Router> {
        match self.name {
            ServiceName::Conversations => Arc::new(switchboard_conversations::PublicEvents),
            ServiceName::Actions => Arc::new(switchboard_actions::PublicEvents),
        }
    }

    fn stream(&self, replicas: usize) -> StreamSpec {
        match self.name {
            ServiceName::Conversations => switchboard_conversations::stream_spec(replicas),
            ServiceName::Actions => switchboard_actions::stream_spec(replicas),
        }
    }

    /// The actions command handler, for the consumer of action requests.
    fn action_service(&self) -> switchboard_actions::ActionService {
        switchboard_actions::ActionService::new(
            self.log.clone(),
            self.keyring
                .clone()
                .expect("the actions service is started with a keyring"),
            self.outbound
                .clone()
                .expect("the actions service is started with an outbound client"),
        )
    }

    fn add_to(&self, server: GrpcServer) -> GrpcServer {
        match self.name {
            ServiceName::Conversations => server.add_service(
                switchboard_conversations::GRPC_SERVICE,
                switchboard_conversations::api(self.log.clone()).into_server(),
            ),
            ServiceName::Actions => server.add_service(
                switchboard_actions::GRPC_SERVICE,
                switchboard_actions::api(
                    self.log.clone(),
                    self.keyring
                        .clone()
                        .expect("the actions service is started with a keyring"),
                    self.outbound
                        .clone()
                        .expect("the actions service is started with an outbound client"),
                )
                .into_server(),
            ),
        }
    }
}

/// `switchboard dev`: every service, SQLite logs, no NATS.
pub async fn dev(config: Config) -> anyhow::Result<()> {
    let mut config = config;
    config.database_url = None;
    config.nats_url = None;
    let telemetry = telemetry::init("switchboard", &config)?;
    let shutdown = shutdown::signal_token();
    let mut running = Vec::new();
    for name in ServiceName::ALL {
        running.push(Running {
            name,
            log: open(&config, name).await?,
            keyring: keyring_for(&config, name, KeySource::DataDir)?,
            outbound: outbound_for(&config, name)?,
        });
    }
    println!("switchboard dev: every service in one process");
    println!("  data directory  {}", config.data_dir.display());
    let result = serve_all(&config, running, None, shutdown).await;
    telemetry.shutdown();
    result
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
    let mut running = Vec::new();
    for name in services {
        running.push(Running {
            name,
            keyring: keyring_for(&config, name, KeySource::Required)?,
            outbound: outbound_for(&config, name)?,
            log: open(&config, name).await?,
        });
    }
    let result = serve_all(&config, running, Some(js), shutdown).await;
    if let Err(e) = client.flush().await {
        warn!(error = %e, "could not flush NATS on shutdown");
    }
    telemetry.shutdown();
    result
}

async fn serve_all(
    config: &Config,
    running: Vec<Running>,
    js: Option<jetstream::Context>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut grpc = GrpcServer::new()
        .with_descriptor(switchboard_proto::FILE_DESCRIPTOR_SET)
        .with_service_token(config.service_token.clone())
        .with_shutdown_grace(Duration::from_secs(config.shutdown_grace_secs));
    let mut tasks = JoinSet::new();
    for service in &running {
        grpc = service.add_to(grpc);
        if let Some(js) = &js {
            let relay = Relay::new(
                service.log.clone(),
                js.clone(),
                service.router(),
                RelayConfig {
                    service: service.name.as_str().to_owned(),
                    prefix: config.nats_prefix.clone(),
                    batch_size: 256,
                    poll_interval: Duration::from_millis(config.relay_poll_ms),
                },
            );
            let stream = service.stream(config.nats_replicas);
            {
                let js = js.clone();
                let prefix = config.nats_prefix.clone();
                let shutdown = shutdown.clone();
                tasks.spawn(async move {
                    ensure_stream_until_ready(&js, &prefix, &stream, &shutdown).await;
                    relay.run(shutdown).await;
                });
            }
            if service.name == ServiceName::Actions {
                tasks.spawn(consume_action_requests(
                    service.action_service(),
                    js.clone(),
                    config.nats_prefix.clone(),
                    shutdown.clone(),
                ));
            }
        }
    }
    let grpc_listener = TcpListener::bind(config.grpc_addr).await.with_context(|| {
        format!(
            "binding gRPC to {} (SWITCHBOARD_GRPC_ADDR)",
            config.grpc_addr
        )
    })?;
    let http_listener = TcpListener::bind(config.http_addr).await.with_context(|| {
        format!(
            "binding HTTP to {} (SWITCHBOARD_HTTP_ADDR)",
            config.http_addr
        )
    })?;
    let names: Vec<&str> = running.iter().map(|s| s.name.as_str()).collect();
    println!("  services        {}", names.join(", "));
    println!(
        "  gRPC            {} (health, reflection)",
        grpc_listener.local_addr()?
    );
    println!(
        "  HTTP            http://{} (/metrics, /healthz, /readyz)",
        http_listener.local_addr()?
    );
    println!("ready; ctrl-c stops");
    info!(services = ?names, "switchboard started");

    let ops = http::ops_router(metrics::prometheus());
    // Whichever server stops first, for whatever reason, stops the process.
    let (grpc_result, http_result) = tokio::join!(
        async {
            let result = grpc.serve(grpc_listener, shutdown.clone()).await;
            shutdown.cancel();
            result
        },
        async {
            let result = http::serve_http(http_listener, ops, shutdown.clone()).await;
            shutdown.cancel();
            result
        },
    );
    while let Some(finished) = tasks.join_next().await {
        if let Err(e) = finished {
            warn!(error = %e, "a background task failed");
        }
    }
    grpc_result.context("gRPC server")?;
    http_result.context("HTTP server")?;
    info!("switchboard stopped cleanly");
    Ok(())
}

/// Runs the actions flow runs request over NATS. The flows service owns the stream; until
/// it exists this waits and tries again.
async fn consume_action_requests(
    service: switchboard_actions::ActionService,
    js: jetstream::Context,
    prefix: String,
    shutdown: CancellationToken,
) {
    use switchboard_actions::consumers::{
        ACTION_REQUESTED_SUBJECT, ActionRequests, CONSUMER, FLOWS_STREAM,
    };
    use switchboard_eventlog::{JetStreamSubscription, Subscription, SubscriptionConfig};
    let stream = StreamSpec {
        name: FLOWS_STREAM.into(),
        subjects: vec![],
        replicas: 1,
    }
    .prefixed_name(&prefix);
    let handler = Arc::new(ActionRequests::new(service.clone()));
    while !shutdown.is_cancelled() {
        let subscription = Box::new(JetStreamSubscription::new(
            js.clone(),
            stream.clone(),
            &prefix,
            ACTION_REQUESTED_SUBJECT,
            SubscriptionConfig::new(CONSUMER, service.log().clone()),
        ));
        match subscription.run(handler.clone(), shutdown.clone()).await {
            Ok(()) => return,
            Err(e) => {
                warn!(stream = %stream, error = %e, "cannot consume action requests yet; retrying")
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    }
}

/// Creates the service's stream, retrying while NATS is unreachable.
async fn ensure_stream_until_ready(
    js: &jetstream::Context,
    prefix: &str,
    spec: &StreamSpec,
    shutdown: &CancellationToken,
) {
    let mut delay = Duration::from_millis(200);
    loop {
        match ensure_stream(js, prefix, spec).await {
            Ok(_) => return,
            Err(e) => warn!(stream = %spec.name, error = %e, "cannot create stream yet; retrying"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

/// Where a keyring comes from when `SWITCHBOARD_ENCRYPTION_KEY` is not set.
#[derive(Clone, Copy, PartialEq, Eq)]
enum KeySource {
    /// `dev`: a key generated once into the data directory.
    DataDir,
    /// `serve`: none; the operator must provide the key.
    Required,
}

/// The keyring of a service that keeps secrets (`None` for the others).
fn keyring_for(
    config: &Config,
    service: ServiceName,
    source: KeySource,
) -> anyhow::Result<Option<Arc<Keyring>>> {
    if service != ServiceName::Actions {
        return Ok(None);
    }
    let key = match (&config.encryption_key, source) {
        (Some(key), _) => key.clone(),
        (None, KeySource::Required) => anyhow::bail!(
            "SWITCHBOARD_ENCRYPTION_KEY is required by the {service} service: base64 of 32 \
             random bytes (e.g. `openssl rand -base64 32`)"
        ),
        (None, KeySource::DataDir) => dev_key(&config.data_dir)?,
    };
    let keyring = Keyring::from_base64(&[key]).context("SWITCHBOARD_ENCRYPTION_KEY")?;
    Ok(Some(Arc::new(keyring)))
}

/// The outbound HTTP client of a service that calls out (`None` for the others), refusing
/// private destinations except the ranges in `SWITCHBOARD_OUTBOUND_ALLOW`.
fn outbound_for(config: &Config, service: ServiceName) -> anyhow::Result<Option<GuardedClient>> {
    if service != ServiceName::Actions {
        return Ok(None);
    }
    let policy =
        Policy::allowing(&config.outbound_allow_ranges()).context("SWITCHBOARD_OUTBOUND_ALLOW")?;
    // Each action sets its own timeout (at most 120 s); this only bounds the client.
    let options = ClientOptions {
        timeout: Duration::from_secs(125),
        ..Default::default()
    };
    Ok(Some(
        GuardedClient::new(policy, &options).context("building the outbound HTTP client")?,
    ))
}

/// The development key in `<data dir>/encryption.key`, created on first use (mode 0600).
fn dev_key(data_dir: &std::path::Path) -> anyhow::Result<String> {
    use base64::Engine as _;
    use std::io::Write as _;
    let path = data_dir.join("encryption.key");
    if let Ok(key) = std::fs::read_to_string(&path) {
        return Ok(key.trim().to_owned());
    }
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let key = base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 32]>());
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options
        .open(&path)
        .and_then(|mut f| f.write_all(key.as_bytes()))
        .with_context(|| format!("writing the development key to {}", path.display()))?;
    Ok(key)
}

/// `switchboard migrate`.
pub async fn migrate(config: Config, services: Vec<ServiceName>) -> anyhow::Result<()> {
    anyhow::ensure!(
        config.database_url.is_some(),
        "SWITCHBOARD_DATABASE_URL is required by `migrate`"
    );
    let services = if services.is_empty() {
        ServiceName::ALL.to_vec()
    } else {
        services
    };
    for service in services {
        open(&config, service).await?;
        println!("migrated {service}");
    }
    Ok(())
}
