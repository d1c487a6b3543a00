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
    Connexease,
    Webhooks,
    Flows,
}

impl ServiceName {
    pub const ALL: [ServiceName; 5] = [
        ServiceName::Conversations,
        ServiceName::Actions,
        ServiceName::Connexease,
        ServiceName::Webhooks,
        ServiceName::Flows,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Conversations => switchboard_conversations::SERVICE,
            Self::Actions => switchboard_actions::SERVICE,
            Self::Connexease => switchboard_connexease::SERVICE,
            Self::Webhooks => switchboard_webhooks::SERVICE,
            Self::Flows => switchboard_flows::SERVICE,
        }
    }

    /// Whether the service keeps secrets (and needs the encryption key).
    fn keeps_secrets(self) -> bool {
        matches!(self, Self::Actions | Self::Connexease | Self::Webhooks)
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
            "connexease" => Ok(Self::Connexease),
            "webhooks" => Ok(Self::Webhooks),
            "flows" => Ok(Self::Flows),
            "gateway" => Err(format!(
                "the {s} service is not built yet; available: conversations, actions, \
                 connexease, webhooks, flows"
            )),
            other => Err(format!(
                "unknown service `{other}`; available: conversations, actions, connexease, \
                 webhooks, flows"
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
        ServiceName::Connexease => switchboard_connexease::open_log(&store).await,
        ServiceName::Webhooks => switchboard_webhooks::open_log(&store).await,
        ServiceName::Flows => switchboard_flows::open_log(&store).await,
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
    /// What the actions service's integration kinds reach.
    integrations: Option<switchboard_actions::integrations::Integrations>,
    /// The connexease command handler (its gRPC API, webhooks and directory sync share it).
    connexease: Option<switchboard_connexease::ConnexeaseService>,
    /// The webhooks command handler (its gRPC API, the fan-out and the dispatcher share it).
    webhooks: Option<switchboard_webhooks::WebhooksService>,
    /// The flows command handler.
    flows: Option<switchboard_flows::FlowsService>,
}

impl Running {
    fn router(&self) -> Arc<dyn Router> {
        match self.name {
            ServiceName::Conversations => Arc::new(switchboard_conversations::PublicEvents),
            ServiceName::Actions => Arc::new(switchboard_actions::PublicEvents),
            ServiceName::Connexease => Arc::new(switchboard_connexease::PublicEvents),
            ServiceName::Webhooks => Arc::new(switchboard_webhooks::PublicEvents),
            ServiceName::Flows => Arc::new(switchboard_flows::PublicEvents),
        }
    }

    fn stream(&self, replicas: usize) -> StreamSpec {
        match self.name {
            ServiceName::Conversations => switchboard_conversations::stream_spec(replicas),
            ServiceName::Actions => switchboard_actions::stream_spec(replicas),
            ServiceName::Connexease => switchboard_connexease::stream_spec(replicas),
            ServiceName::Webhooks => switchboard_webhooks::stream_spec(replicas),
            ServiceName::Flows => switchboard_flows::stream_spec(replicas),
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
        .with_integrations(self.integrations.clone().unwrap_or_default())
    }

    fn add_to(&self, server: GrpcServer) -> GrpcServer {
        match self.name {
            ServiceName::Conversations => {
                let mut api = switchboard_conversations::api(self.log.clone());
                if let Some(keyring) = &self.keyring {
                    api = api.with_keyring(keyring.clone());
                }
                server.add_service(switchboard_conversations::GRPC_SERVICE, api.into_server())
            }
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
                    self.integrations.clone().unwrap_or_default(),
                )
                .into_server(),
            ),
            ServiceName::Connexease => server.add_service(
                switchboard_connexease::GRPC_SERVICE,
                switchboard_connexease::ConnexeaseApi::new(
                    self.connexease
                        .clone()
                        .expect("the connexease service is started with its handler"),
                )
                .into_server(),
            ),
            ServiceName::Webhooks => server.add_service(
                switchboard_webhooks::GRPC_SERVICE,
                switchboard_webhooks::WebhooksApi::new(
                    self.webhooks
                        .clone()
                        .expect("the webhooks service is started with its handler"),
                )
                .into_server(),
            ),
            ServiceName::Flows => server.add_service(
                switchboard_flows::GRPC_SERVICE,
                switchboard_flows::FlowsApi::new(
                    self.flows
                        .clone()
                        .expect("the flows service is started with its handler"),
                )
                .into_server(),
            ),
        }
    }
}

/// `switchboard dev`: every service, SQLite logs, no NATS, and the Connexease simulator
/// standing in for Connexease.
pub async fn dev(config: Config) -> anyhow::Result<()> {
    let mut config = config;
    config.database_url = None;
    config.nats_url = None;
    let telemetry = telemetry::init("switchboard", &config)?;
    let shutdown = shutdown::signal_token();
    let sim = start_simulator(&config, shutdown.clone()).await?;
    let mut running = Vec::new();
    for name in ServiceName::ALL {
        let log = open(&config, name).await?;
        let keyring = keyring_for(&config, name, KeySource::DataDir)?;
        let outbound = outbound_for(&config, name, Some(sim.addr), true)?;
        running.push(Running {
            name,
            connexease: connexease_for(name, &log, keyring.as_ref(), outbound.as_ref(), Some(&sim)),
            webhooks: webhooks_for(&config, name, &log, keyring.as_ref(), true)?,
            flows: flows_for(&config, name, &log, &ServiceName::ALL)?,
            log,
            keyring,
            outbound,
            integrations: integrations_for(&config, name, &ServiceName::ALL)?,
        });
    }
    println!("switchboard dev: every service in one process");
    println!("  data directory  {}", config.data_dir.display());
    println!(
        "  Connexease sim  {} (token {}; its webhooks go to {})",
        sim.base_url(),
        sim.config.token,
        config.connexease_sim_workspace
    );
    let result = serve_all(&config, running, None, shutdown).await;
    telemetry.shutdown();
    result
}

/// The Connexease simulator of `dev`: workspaces with no connection are connected to it
/// on first use, and it sends its webhooks to `SWITCHBOARD_CONNEXEASE_SIM_WORKSPACE`.
async fn start_simulator(
    config: &Config,
    shutdown: CancellationToken,
) -> anyhow::Result<switchboard_connexease::sim::RunningSim> {
    use switchboard_connexease::sim::{SimConfig, serve};
    let listener = TcpListener::bind(config.connexease_sim_addr)
        .await
        .with_context(|| {
            format!(
                "binding the Connexease simulator to {} (SWITCHBOARD_CONNEXEASE_SIM_ADDR)",
                config.connexease_sim_addr
            )
        })?;
    let http = loopback(config.http_addr);
    let sim = SimConfig {
        webhook_url: Some(format!(
            "http://{http}/connexease/webhooks/{}",
            config.connexease_sim_workspace
        )),
        ..SimConfig::default()
    };
    Ok(serve(listener, sim, shutdown).await?)
}

/// `switchboard connexease-sim`: the simulator alone, until ctrl-c.
pub async fn connexease_sim(
    addr: std::net::SocketAddr,
    sim: switchboard_connexease::sim::SimConfig,
) -> anyhow::Result<()> {
    let shutdown = shutdown::signal_token();
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the Connexease simulator to {addr}"))?;
    let running = switchboard_connexease::sim::serve(listener, sim, shutdown.clone()).await?;
    println!("Connexease simulator on {}", running.base_url());
    println!("  token           {}", running.config.token);
    println!(
        "  webhooks        {}",
        running.config.webhook_url.as_deref().unwrap_or("(none)")
    );
    println!(
        "  rate            {} requests/s",
        running.config.rate_per_second
    );
    println!("ready; ctrl-c stops");
    shutdown.cancelled().await;
    Ok(())
}

/// The address to reach a listener on `addr` from this machine.
fn loopback(addr: std::net::SocketAddr) -> std::net::SocketAddr {
    if addr.ip().is_unspecified() {
        std::net::SocketAddr::new(std::net::IpAddr::from([127, 0, 0, 1]), addr.port())
    } else {
        addr
    }
}

/// The connexease command handler of a process that runs the connexease service.
fn connexease_for(
    name: ServiceName,
    log: &EventLog,
    keyring: Option<&Arc<Keyring>>,
    outbound: Option<&GuardedClient>,
    sim: Option<&switchboard_connexease::sim::RunningSim>,
) -> Option<switchboard_connexease::ConnexeaseService> {
    use switchboard_connexease::client::{HttpConnexease, RetryPolicy};
    if name != ServiceName::Connexease {
        return None;
    }
    let api = HttpConnexease::new(outbound?.clone(), RetryPolicy::default());
    let service = switchboard_connexease::ConnexeaseService::new(
        log.clone(),
        keyring?.clone(),
        Arc::new(api),
    );
    Some(match sim {
        Some(sim) => {
            service.with_default_connection(switchboard_proto::connexease::v1::Connection {
                base_url: sim.base_url(),
                access_token: sim.config.token.clone(),
                webhook_secret: sim.config.webhook_secret.clone(),
                ..Default::default()
            })
        }
        None => service,
    })
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
    for &name in &services {
        let log = open(&config, name).await?;
        let keyring = keyring_for(&config, name, KeySource::Required)?;
        let outbound = outbound_for(&config, name, None, false)?;
        running.push(Running {
            name,
            connexease: connexease_for(name, &log, keyring.as_ref(), outbound.as_ref(), None),
            webhooks: webhooks_for(&config, name, &log, keyring.as_ref(), false)?,
            flows: flows_for(&config, name, &log, &services)?,
            log,
            keyring,
            outbound,
            integrations: integrations_for(&config, name, &services)?,
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
        }
        if let Some(connexease) = &service.connexease {
            tasks.spawn(sync_directories(connexease.clone(), shutdown.clone()));
        }
        if let Some(flows) = &service.flows {
            start_flows(config, flows, &running, js.as_ref(), &mut tasks, &shutdown)?;
        }
        if js.is_none()
            && service.name == ServiceName::Actions
            && let Some(flows) = running.iter().find(|r| r.name == ServiceName::Flows)
        {
            consume_action_requests_locally(config, service, &flows.log, &mut tasks, &shutdown)
                .await?;
        }
        if let (Some(webhooks), Some(outbound)) = (&service.webhooks, &service.outbound) {
            start_webhooks(
                webhooks,
                outbound.clone(),
                &running,
                js.as_ref(),
                &config.nats_prefix,
                &mut tasks,
                &shutdown,
            );
        }
        if service.name == ServiceName::Actions {
            tasks.spawn(prune_execution_log(
                switchboard_actions::ActionStore::new(service.log.clone()),
                config.execution_retention_days,
                shutdown.clone(),
            ));
        }
        if let Some(js) = &js
            && service.name == ServiceName::Actions
        {
            use switchboard_actions::consumers::{
                ACTION_REQUESTED_SUBJECT, ActionRequests, CONSUMER, FLOWS_STREAM,
            };
            let stream = StreamSpec {
                name: FLOWS_STREAM.into(),
                subjects: vec![],
                replicas: 1,
            };
            tasks.spawn(consume_stream(
                js.clone(),
                stream.prefixed_name(&config.nats_prefix),
                config.nats_prefix.clone(),
                ACTION_REQUESTED_SUBJECT,
                switchboard_eventlog::SubscriptionConfig::new(CONSUMER, service.log.clone())
                    .with_lanes(lanes_for(&service.log)),
                Arc::new(ActionRequests::new(service.action_service())),
                shutdown.clone(),
            ));
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

    let mut ops = http::ops_router(metrics::prometheus());
    let names_running: Vec<ServiceName> = running.iter().map(|s| s.name).collect();
    for service in &running {
        if let Some(connexease) = &service.connexease {
            let conversations = service_url(config, &names_running, ServiceName::Conversations)
                .map(|url| {
                    switchboard_connexease::inbound::GrpcConversations::connect_lazy(
                        &url,
                        config.service_token.clone(),
                    )
                    .with_context(|| format!("SWITCHBOARD_CONVERSATIONS_URL={url}"))
                })
                .transpose()?
                .map(|c| Arc::new(c) as Arc<dyn switchboard_connexease::inbound::Conversations>);
            ops = ops.merge(switchboard_connexease::inbound::router(
                connexease.clone(),
                switchboard_connexease::ConnexeaseStore::new(service.log.clone()),
                conversations,
            ));
        }
    }
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

/// Keeps the queryable execution log to its retention: prunes at start and every hour.
async fn prune_execution_log(
    store: switchboard_actions::ActionStore,
    retention_days: u32,
    shutdown: CancellationToken,
) {
    let retention = i64::from(retention_days) * 86_400 * 1_000_000;
    loop {
        let before = switchboard_eventlog::now_micros() - retention;
        match store.prune_executions(before).await {
            Ok(0) => {}
            Ok(removed) => info!(removed, retention_days, "pruned the execution log"),
            Err(e) => warn!(error = %e, "could not prune the execution log"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(3600)) => {}
        }
    }
}

/// What the actions service's integration kinds reach: the conversations service over gRPC
/// (this process's own server when it runs it, unless `SWITCHBOARD_CONVERSATIONS_URL`
/// says otherwise) and the operator's query databases. Connexease and action workflows
/// answer "not connected" until their services exist.
fn integrations_for(
    config: &Config,
    service: ServiceName,
    running: &[ServiceName],
) -> anyhow::Result<Option<switchboard_actions::integrations::Integrations>> {
    use switchboard_actions::integrations::{GrpcConversations, Integrations, QueryDatabases};
    if service != ServiceName::Actions {
        return Ok(None);
    }
    let mut integrations = Integrations {
        databases: QueryDatabases::from_config(&config.query_databases)?,
        ..Integrations::default()
    };
    if let Some(url) = service_url(config, running, ServiceName::Conversations) {
        integrations.conversations = Arc::new(
            GrpcConversations::connect_lazy(&url, config.service_token.clone())
                .with_context(|| format!("SWITCHBOARD_CONVERSATIONS_URL={url}"))?,
        );
    }
    if let Some(url) = service_url(config, running, ServiceName::Flows) {
        integrations.workflows = Arc::new(
            switchboard_actions::integrations::GrpcWorkflows::connect_lazy(
                &url,
                config.service_token.clone(),
            )
            .with_context(|| format!("SWITCHBOARD_FLOWS_URL={url}"))?,
        );
    }
    if let Some(url) = service_url(config, running, ServiceName::Connexease) {
        integrations.connexease = Arc::new(
            switchboard_actions::integrations::GrpcConnexease::connect_lazy(
                &url,
                config.service_token.clone(),
            )
            .with_context(|| format!("SWITCHBOARD_CONNEXEASE_URL={url}"))?,
        );
    }
    Ok(Some(integrations))
}

/// Where another service's gRPC API is: its configured URL, or this process's own server
/// when the process runs it.
fn service_url(config: &Config, running: &[ServiceName], service: ServiceName) -> Option<String> {
    let configured = match service {
        ServiceName::Conversations => config.conversations_url.clone(),
        ServiceName::Connexease => config.connexease_url.clone(),
        ServiceName::Actions => config.actions_url.clone(),
        ServiceName::Flows => config.flows_url.clone(),
        ServiceName::Webhooks => None,
    };
    configured.or_else(|| {
        running
            .contains(&service)
            .then(|| format!("http://{}", loopback(config.grpc_addr)))
    })
}

/// Pulls the directory of every connected workspace every 15 minutes (and at start).
async fn sync_directories(
    service: switchboard_connexease::ConnexeaseService,
    shutdown: CancellationToken,
) {
    let store = switchboard_connexease::ConnexeaseStore::new(service.log().clone());
    loop {
        match store.connected_workspaces().await {
            Ok(workspaces) => {
                for workspace in workspaces {
                    if let Err(e) = service.sync_directory(&workspace).await {
                        warn!(workspace, error = %e, "could not sync the Connexease directory");
                    }
                }
            }
            Err(e) => warn!(error = %e, "could not list the connected workspaces"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(15 * 60)) => {}
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

/// The keyring of a service that keeps secrets (`None` for the others). The
/// conversations service seals secure metadata when it has a key, and in `serve` runs
/// without one (refusing secure metadata) rather than requiring it.
fn keyring_for(
    config: &Config,
    service: ServiceName,
    source: KeySource,
) -> anyhow::Result<Option<Arc<Keyring>>> {
    if service == ServiceName::Conversations
        && config.encryption_key.is_none()
        && source == KeySource::Required
    {
        return Ok(None);
    }
    if !service.keeps_secrets() && service != ServiceName::Conversations {
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
/// In `dev`, the connexease service may also reach the simulator at `sim`.
fn outbound_for(
    config: &Config,
    service: ServiceName,
    sim: Option<std::net::SocketAddr>,
    dev: bool,
) -> anyhow::Result<Option<GuardedClient>> {
    let policy = outbound_policy(config, service, sim, dev)?;
    let options = match service {
        // Each action sets its own timeout (at most 120 s); this only bounds the client.
        ServiceName::Actions | ServiceName::Connexease => ClientOptions {
            timeout: Duration::from_secs(125),
            ..Default::default()
        },
        // A receiver that hangs is cut here; redirects are failures, never followed.
        ServiceName::Webhooks => ClientOptions {
            timeout: Duration::from_secs(config.webhook_timeout_secs),
            max_redirects: 0,
            ..Default::default()
        },
        ServiceName::Conversations | ServiceName::Flows => return Ok(None),
    };
    Ok(Some(
        GuardedClient::new(policy, &options).context("building the outbound HTTP client")?,
    ))
}

/// What a calling service may reach: public addresses, the ranges in
/// `SWITCHBOARD_OUTBOUND_ALLOW`, and in `dev` the simulator (connexease) and loopback
/// (webhooks to a receiver on the laptop).
fn outbound_policy(
    config: &Config,
    service: ServiceName,
    sim: Option<std::net::SocketAddr>,
    dev: bool,
) -> anyhow::Result<Policy> {
    let mut allowed: Vec<String> = config
        .outbound_allow_ranges()
        .into_iter()
        .map(str::to_owned)
        .collect();
    if let (ServiceName::Connexease, Some(sim)) = (service, sim) {
        allowed.push(loopback(sim).ip().to_string());
    }
    if dev && service == ServiceName::Webhooks {
        allowed.extend(["127.0.0.0/8".to_owned(), "::1/128".to_owned()]);
    }
    let allowed: Vec<&str> = allowed.iter().map(String::as_str).collect();
    Policy::allowing(&allowed).context("SWITCHBOARD_OUTBOUND_ALLOW")
}

/// The flows command handler of a process that runs the flows service: it checks the
/// actions a graph refers to in the actions service (this process's, unless
/// `SWITCHBOARD_ACTIONS_URL` says otherwise).
fn flows_for(
    config: &Config,
    name: ServiceName,
    log: &EventLog,
    running: &[ServiceName],
) -> anyhow::Result<Option<switchboard_flows::FlowsService>> {
    if name != ServiceName::Flows {
        return Ok(None);
    }
    let actions = service_url(config, running, ServiceName::Actions)
        .map(|url| {
            switchboard_flows::GrpcActions::connect_lazy(&url, config.service_token.clone())
                .with_context(|| format!("SWITCHBOARD_ACTIONS_URL={url}"))
        })
        .transpose()?
        .map(|a| Arc::new(a) as Arc<dyn switchboard_flows::ActionCatalog>);
    Ok(Some(switchboard_flows::FlowsService::new(
        log.clone(),
        actions,
    )))
}

/// The webhooks command handler of a process that runs the webhooks service. In `dev`,
/// endpoints may use plain http to `localhost` and `127.0.0.1`.
fn webhooks_for(
    config: &Config,
    name: ServiceName,
    log: &EventLog,
    keyring: Option<&Arc<Keyring>>,
    dev: bool,
) -> anyhow::Result<Option<switchboard_webhooks::WebhooksService>> {
    use switchboard_webhooks::domain::{RetrySchedule, UrlRules};
    if name != ServiceName::Webhooks {
        return Ok(None);
    }
    let mut allow_http_hosts = config.webhook_http_hosts();
    if dev {
        allow_http_hosts.extend(["localhost".to_owned(), "127.0.0.1".to_owned()]);
    }
    let settings = switchboard_webhooks::Settings {
        urls: UrlRules {
            allow_http_hosts,
            policy: outbound_policy(config, name, None, dev)?,
        },
        schedule: RetrySchedule {
            delays: config
                .webhook_retry_delays()
                .map_err(anyhow::Error::msg)
                .context("SWITCHBOARD_WEBHOOK_RETRY_SCHEDULE")?,
            ..RetrySchedule::default()
        },
        disable_after: Duration::from_secs(config.webhook_disable_after_hours * 3600),
    };
    let keyring = keyring
        .context("the webhooks service keeps secrets")?
        .clone();
    Ok(Some(switchboard_webhooks::WebhooksService::new(
        log.clone(),
        keyring,
        settings,
    )))
}

/// Delivers webhooks: the fan-out of every producer's public events (tailing the logs of
/// this process's producers when there is no NATS, otherwise one durable JetStream
/// consumer per producer stream) and the dispatcher.
fn start_webhooks(
    service: &switchboard_webhooks::WebhooksService,
    outbound: GuardedClient,
    running: &[Running],
    js: Option<&jetstream::Context>,
    prefix: &str,
    tasks: &mut JoinSet<()>,
    shutdown: &CancellationToken,
) {
    use switchboard_eventlog::{LogTailSubscription, Subscription, SubscriptionConfig};
    use switchboard_webhooks::consumers::{FanOut, consumer_name};
    let dispatcher = Arc::new(switchboard_webhooks::Dispatcher::new(
        service.clone(),
        outbound,
        switchboard_webhooks::DeliveryConfig::default(),
    ));
    tasks.spawn(dispatcher.run(shutdown.clone()));
    let producers: [(ServiceName, Arc<dyn Router>); 3] = [
        (
            ServiceName::Conversations,
            Arc::new(switchboard_conversations::PublicEvents),
        ),
        (
            ServiceName::Actions,
            Arc::new(switchboard_actions::PublicEvents),
        ),
        (
            ServiceName::Connexease,
            Arc::new(switchboard_connexease::PublicEvents),
        ),
    ];
    for (producer, router) in producers {
        let handler = Arc::new(FanOut::new(service.clone(), router.clone()));
        let config =
            SubscriptionConfig::new(consumer_name(producer.as_str()), service.log().clone());
        match js {
            Some(js) => {
                let stream = match producer {
                    ServiceName::Conversations => switchboard_conversations::stream_spec(1),
                    ServiceName::Actions => switchboard_actions::stream_spec(1),
                    _ => switchboard_connexease::stream_spec(1),
                }
                .prefixed_name(prefix);
                tasks.spawn(consume_stream(
                    js.clone(),
                    stream,
                    prefix.to_owned(),
                    "events.>",
                    config,
                    handler,
                    shutdown.clone(),
                ));
            }
            None => {
                let Some(source) = running.iter().find(|r| r.name == producer) else {
                    continue;
                };
                let filter = Arc::new(move |e: &switchboard_eventlog::RecordedEvent| {
                    router.subject(e).is_some_and(|s| s.starts_with("events."))
                });
                let subscription =
                    Box::new(LogTailSubscription::new(source.log.clone(), filter, config));
                let shutdown = shutdown.clone();
                tasks.spawn(async move {
                    if let Err(e) = subscription.run(handler, shutdown).await {
                        warn!(error = %e, "webhook fan-out stopped");
                    }
                });
            }
        }
    }
}

/// The flow runtime's subscriptions: conversations' events start runs and feed them
/// customers' messages; the actions service's answers go back to the runs that asked; and
/// the runs' own messages and effects are carried out from the flows log itself.
fn start_flows(
    config: &Config,
    flows: &switchboard_flows::FlowsService,
    running: &[Running],
    js: Option<&jetstream::Context>,
    tasks: &mut JoinSet<()>,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    use switchboard_eventlog::{LogTailSubscription, Subscription, SubscriptionConfig};
    use switchboard_flows::consumers::ConversationEvents;
    use switchboard_flows::effects::{Effects, GrpcConnexease, GrpcConversations};
    use switchboard_flows::runtime::{ACTION_COMPLETED, ActionOutcomes, RunService};
    let names: Vec<ServiceName> = running.iter().map(|r| r.name).collect();
    let runs = RunService::new(flows.clone());
    let inbox = flows.log().clone();
    tasks.spawn(runs.clone().run_timers(shutdown.clone()));

    // Effects: tail our own log.
    let conversations_url = service_url(config, &names, ServiceName::Conversations);
    let mut transcripts = None;
    match conversations_url {
        Some(url) => {
            let conversations = Arc::new(
                GrpcConversations::connect_lazy(&url, config.service_token.clone())
                    .with_context(|| format!("SWITCHBOARD_CONVERSATIONS_URL={url}"))?,
            );
            transcripts =
                Some(conversations.clone() as Arc<dyn switchboard_flows::effects::Conversations>);
            let connexease = service_url(config, &names, ServiceName::Connexease)
                .map(|url| {
                    GrpcConnexease::connect_lazy(&url, config.service_token.clone())
                        .with_context(|| format!("SWITCHBOARD_CONNEXEASE_URL={url}"))
                })
                .transpose()?
                .map(|c| Arc::new(c) as Arc<dyn switchboard_flows::effects::Connexease>);
            let handler = Arc::new(Effects::new(runs.clone(), conversations, connexease));
            let filter = Arc::new(|e: &switchboard_eventlog::RecordedEvent| {
                e.event_type.starts_with("flow_run.")
            });
            let subscription = Box::new(LogTailSubscription::new(
                inbox.clone(),
                filter,
                SubscriptionConfig::new("flows-effects", inbox.clone())
                    .with_lanes(lanes_for(&inbox)),
            ));
            let shutdown = shutdown.clone();
            tasks.spawn(async move {
                if let Err(e) = subscription.run(handler, shutdown).await {
                    warn!(error = %e, "flow effects stopped");
                }
            });
        }
        None => warn!(
            "flows: no conversations service (SWITCHBOARD_CONVERSATIONS_URL); runs' messages wait"
        ),
    }

    let mut conversation_events = ConversationEvents::new(flows.clone(), runs.clone());
    if let Some(conversations) = &transcripts {
        conversation_events = conversation_events.with_transcripts(conversations.clone());
    }
    let conversation_events = Arc::new(conversation_events);
    let outcomes = Arc::new(ActionOutcomes::new(runs));
    let conversations_config =
        SubscriptionConfig::new(switchboard_flows::consumers::CONSUMER, inbox.clone())
            .with_lanes(lanes_for(&inbox));
    let outcomes_config = SubscriptionConfig::new("flows-action-outcomes", inbox.clone())
        .with_lanes(lanes_for(&inbox));
    match js {
        Some(js) => {
            let prefix = config.nats_prefix.clone();
            tasks.spawn(consume_stream(
                js.clone(),
                switchboard_conversations::stream_spec(1).prefixed_name(&prefix),
                prefix.clone(),
                "events.>",
                conversations_config,
                conversation_events,
                shutdown.clone(),
            ));
            tasks.spawn(consume_stream(
                js.clone(),
                switchboard_actions::stream_spec(1).prefixed_name(&prefix),
                prefix,
                "internal.actions.action_completed",
                outcomes_config,
                outcomes,
                shutdown.clone(),
            ));
        }
        None => {
            let tail = |producer: ServiceName,
                        filter: Arc<
                dyn Fn(&switchboard_eventlog::RecordedEvent) -> bool + Send + Sync,
            >,
                        config: SubscriptionConfig,
                        handler: Arc<dyn switchboard_eventlog::Handler>| {
                running.iter().find(|r| r.name == producer).map(|source| {
                    let subscription =
                        Box::new(LogTailSubscription::new(source.log.clone(), filter, config));
                    let shutdown = shutdown.clone();
                    async move {
                        if let Err(e) = subscription.run(handler, shutdown).await {
                            warn!(error = %e, "a flows subscription stopped");
                        }
                    }
                })
            };
            let public = Arc::new(|e: &switchboard_eventlog::RecordedEvent| {
                switchboard_conversations::PublicEvents
                    .subject(e)
                    .is_some_and(|s| s.starts_with("events."))
            });
            if let Some(task) = tail(
                ServiceName::Conversations,
                public,
                conversations_config,
                conversation_events,
            ) {
                tasks.spawn(task);
            }
            let completed = Arc::new(|e: &switchboard_eventlog::RecordedEvent| {
                e.event_type == ACTION_COMPLETED
            });
            if let Some(task) = tail(ServiceName::Actions, completed, outcomes_config, outcomes) {
                tasks.spawn(task);
            }
        }
    }
    Ok(())
}

/// In `dev`, the actions service runs the flows' action requests by tailing the flows log.
/// Its processed records live in a store of their own (`actions-inbox.db`): the handler
/// appends to the actions log, and SQLite has one writer per file. The actions service's
/// own claim by idempotency key keeps a redelivered request from running twice.
async fn consume_action_requests_locally(
    config: &Config,
    actions: &Running,
    flows_log: &EventLog,
    tasks: &mut JoinSet<()>,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    use switchboard_actions::consumers::{ACTION_REQUESTED, ActionRequests, CONSUMER};
    use switchboard_eventlog::{LogTailSubscription, Subscription, SubscriptionConfig};
    let inbox = EventLog::open(&StoreConfig::Sqlite {
        path: config.data_dir.join("actions-inbox.db"),
    })
    .await
    .context("opening the actions inbox")?;
    inbox
        .migrate()
        .await
        .context("migrating the actions inbox")?;
    let handler = Arc::new(ActionRequests::new(actions.action_service()));
    let filter =
        Arc::new(|e: &switchboard_eventlog::RecordedEvent| e.event_type == ACTION_REQUESTED);
    let subscription = Box::new(LogTailSubscription::new(
        flows_log.clone(),
        filter,
        SubscriptionConfig::new(CONSUMER, inbox),
    ));
    let shutdown = shutdown.clone();
    tasks.spawn(async move {
        if let Err(e) = subscription.run(handler, shutdown).await {
            warn!(error = %e, "running flows' action requests stopped");
        }
    });
    Ok(())
}

/// Events a consumer handles at once, one stream per lane: several on Postgres, where
/// each lane's transaction runs beside the others; one on SQLite, which has one writer.
fn lanes_for(inbox: &EventLog) -> usize {
    if inbox.takes_concurrent_writers() {
        8
    } else {
        1
    }
}

/// A durable consumer of one stream's `filter` subject. Until the producer creates its
/// stream this waits and tries again.
async fn consume_stream(
    js: jetstream::Context,
    stream: String,
    prefix: String,
    filter: &'static str,
    config: switchboard_eventlog::SubscriptionConfig,
    handler: Arc<dyn switchboard_eventlog::Handler>,
    shutdown: CancellationToken,
) {
    use switchboard_eventlog::{JetStreamSubscription, Subscription};
    while !shutdown.is_cancelled() {
        let subscription = Box::new(JetStreamSubscription::new(
            js.clone(),
            stream.clone(),
            &prefix,
            filter,
            config.clone(),
        ));
        match subscription.run(handler.clone(), shutdown.clone()).await {
            Ok(()) => return,
            Err(e) => warn!(stream = %stream, error = %e, "cannot consume yet; retrying"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    }
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
