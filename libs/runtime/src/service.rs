//! The service module: the one value every service crate exposes, saying what the service
//! is (its name, read models, what it publishes, whether it keeps secrets) and how it
//! starts (its gRPC services, HTTP routes, subscriptions and background tasks).
//!
//! A module never starts anything itself: [`ServiceModule::start`] declares its parts on a
//! [`Wiring`], and the [`Host`](crate::Host) runs them, the same way in `serve` (Postgres,
//! JetStream) and in `dev` (SQLite, log tails). So a service says once what it consumes
//! ([`Source::Stream`]: a producer's stream and a subject pattern), and the host decides how
//! the events get there.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;
use futures::future::BoxFuture;
use switchboard_contract::Stream;
use switchboard_eventlog::{
    EventLog, EventLogError, Handler, Projection, RecordedEvent, Router, StoreConfig,
};
use switchboard_outbound::{ClientOptions, GuardedClient, Policy};
use switchboard_secrets::Keyring;
use tokio_util::sync::CancellationToken;
use tonic::codegen::http;
use tonic::server::NamedService;

use crate::{Config, GrpcServer};

/// Any error a service meets while starting; the host adds which service it was.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How the process runs its services.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `switchboard dev`: every service, SQLite logs, no NATS (subscriptions tail logs).
    Dev,
    /// `switchboard serve`: the named services on Postgres, publishing to JetStream.
    Serve,
}

/// Whether a service seals secrets at rest, and so needs `SWITCHBOARD_ENCRYPTION_KEY`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Secrets {
    /// It keeps none.
    None,
    /// It seals some when it has a key, and refuses them without one in `serve`.
    Optional,
    /// It cannot run without the key in `serve`.
    Required,
}

/// A service's read models: their DDL and the projection that keeps them in step with the
/// log, in the same transaction as each append.
pub struct ReadModels {
    pub postgres: String,
    pub sqlite: String,
    pub projection: Arc<dyn Projection>,
}

impl ReadModels {
    /// The read models of `(postgres, sqlite)` DDL, kept by `projection`.
    pub fn new(
        (postgres, sqlite): (String, String),
        projection: impl Projection + 'static,
    ) -> Self {
        Self {
            postgres,
            sqlite,
            projection: Arc::new(projection),
        }
    }
}

/// What a service publishes: its stream, and which events go where.
pub struct Publication {
    pub stream: Stream,
    pub router: Arc<dyn Router>,
}

impl Publication {
    /// Publishing to `stream` what `router` routes.
    pub fn new(stream: Stream, router: impl Router + 'static) -> Self {
        Self {
            stream,
            router: Arc::new(router),
        }
    }
}

/// One service. Each service crate exposes one value implementing it (`MODULE`); the
/// binary composes a list of them and knows no service otherwise.
#[async_trait]
pub trait ServiceModule: Send + Sync + 'static {
    /// Its name (`switchboard_contract::services`): schema, SQLite file, relay, `--services`.
    fn name(&self) -> &'static str;

    /// Its read models (the migrations beyond the log's own tables).
    fn read_models(&self) -> ReadModels;

    /// Its stream and router; `None` for a service whose events stay in its log.
    fn publication(&self) -> Option<Publication> {
        None
    }

    /// Whether it seals secrets.
    fn secrets(&self) -> Secrets {
        Secrets::None
    }

    /// A stored event's payload for people (`switchboard events tail`); never a secret.
    fn describe(&self, event: &RecordedEvent) -> String {
        format!("<{} bytes>", event.payload.len())
    }

    /// Declares the service's running parts on `wiring`.
    async fn start(&self, wiring: &mut Wiring) -> Result<(), BoxError>;
}

/// Opens a service's log with its read models and projection. Call `migrate` on it before
/// serving.
pub async fn open_log(
    module: &dyn ServiceModule,
    config: &StoreConfig,
) -> Result<EventLog, EventLogError> {
    let models = module.read_models();
    Ok(EventLog::open(config)
        .await?
        .with_read_models(&models.postgres, &models.sqlite)
        .with_projection(models.projection))
}

/// Where a subscription's events come from.
pub enum Source {
    /// A producer's published events whose subject matches `subject` (a NATS pattern, from
    /// `switchboard_contract::subjects`): a durable JetStream consumer in `serve`, a tail of
    /// the producer's log through its router in `dev`.
    Stream {
        stream: Stream,
        subject: &'static str,
    },
    /// The service's own log, the events `filter` keeps, tailed in every mode.
    OwnLog(Arc<dyn Fn(&RecordedEvent) -> bool + Send + Sync>),
}

/// Where a subscription records what it processed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inbox {
    /// In the service's own log, in the handler's transaction.
    Log,
    /// In a store of its own when the log is SQLite (`<service>-inbox.db`), for handlers that
    /// append to the service's log outside the handler's transaction (SQLite has one writer
    /// per file); in the service's log on Postgres.
    Dedicated,
}

/// In which order a subscription's events must be handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// Each stream's events in order, different streams at once (lanes by stream, where the
    /// store takes concurrent writers).
    PerStream,
    /// Every event in the order of the source, one at a time: for handlers whose effects
    /// depend on the order across streams (the webhooks fan-out numbers an endpoint's
    /// messages as they commit).
    Total,
}

/// A subscription a service needs: events from `source`, handled by `handler` once each
/// in effect, under the durable name `consumer`.
pub struct Subscribe {
    pub consumer: String,
    pub source: Source,
    pub handler: Arc<dyn Handler>,
    pub inbox: Inbox,
    pub order: Order,
}

/// What a starting service sees of its process, and where it declares its parts.
pub struct Wiring {
    pub(crate) name: &'static str,
    pub(crate) mode: Mode,
    pub(crate) config: Arc<Config>,
    pub(crate) log: EventLog,
    pub(crate) keyring: Option<Arc<Keyring>>,
    pub(crate) running: Arc<Vec<&'static str>>,
    pub(crate) routers: Arc<HashMap<&'static str, Arc<dyn Router>>>,
    pub(crate) shutdown: CancellationToken,
    pub(crate) grpc: GrpcServer,
    pub(crate) http: axum::Router,
    pub(crate) subscriptions: Vec<Subscribe>,
    pub(crate) tasks: Vec<(String, BoxFuture<'static, ()>)>,
    pub(crate) banner: Vec<String>,
}

impl Wiring {
    /// The service's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The service's own log, migrated.
    pub fn log(&self) -> &EventLog {
        &self.log
    }

    /// The process-wide shutdown token.
    pub fn shutdown(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// The keyring of a service whose [`ServiceModule::secrets`] is not `None`: always
    /// there for `Required`; for `Optional`, absent in `serve` without a key.
    pub fn keyring(&self) -> Option<Arc<Keyring>> {
        self.keyring.clone()
    }

    /// The keyring of a service that cannot run without one.
    pub fn required_keyring(&self) -> Result<Arc<Keyring>, BoxError> {
        self.keyring.clone().ok_or_else(|| {
            format!(
                "the {} service keeps secrets: its module must say Secrets::Required",
                self.name
            )
            .into()
        })
    }

    /// Where another service's gRPC API is: its configured URL
    /// (`SWITCHBOARD_<SERVICE>_URL`), or this process's own server when it runs that
    /// service; `None` when neither.
    pub fn peer_url(&self, service: &str) -> Option<String> {
        self.config.service_url(service).or_else(|| {
            self.running
                .contains(&service)
                .then(|| format!("http://{}", loopback(self.config.grpc_addr)))
        })
    }

    /// How to call another service: its URL (as [`Wiring::peer_url`]), the service token,
    /// and this service's name as the caller; `None` when it is nowhere to be reached.
    pub fn peer(&self, service: &str) -> Option<Peer> {
        self.peer_url(service).map(|url| Peer {
            url,
            token: self.config.service_token.clone(),
            caller: self.name,
        })
    }

    /// The router of a service in the composition (running here or not): how its events map
    /// to subjects.
    pub fn router_of(&self, service: &str) -> Option<Arc<dyn Router>> {
        self.routers.get(service).cloned()
    }

    /// An SSRF-guarded HTTP client: public addresses, the operator's
    /// `SWITCHBOARD_OUTBOUND_ALLOW` ranges, and `also_allow`.
    pub fn outbound(
        &self,
        options: &ClientOptions,
        also_allow: &[String],
    ) -> Result<GuardedClient, BoxError> {
        let policy = self.outbound_policy(also_allow)?;
        Ok(GuardedClient::new(policy, options)?)
    }

    /// The policy of [`Wiring::outbound`].
    pub fn outbound_policy(&self, also_allow: &[String]) -> Result<Policy, BoxError> {
        let mut allowed: Vec<String> = self
            .config
            .outbound_allow_ranges()
            .into_iter()
            .map(str::to_owned)
            .collect();
        allowed.extend(also_allow.iter().cloned());
        Policy::allowing(&allowed).map_err(|e| format!("SWITCHBOARD_OUTBOUND_ALLOW: {e}").into())
    }

    /// Serves a tonic service on the process's gRPC server, reported SERVING in health
    /// under its proto name.
    pub fn serve_grpc<S>(&mut self, service: S)
    where
        S: tower::Service<http::Request<tonic::body::Body>, Error = Infallible>
            + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Response: axum::response::IntoResponse,
        S::Future: Send + 'static,
    {
        self.grpc = std::mem::take(&mut self.grpc).add_service(S::NAME, service);
    }

    /// Serves `routes` on the process's HTTP server, beside `/metrics` and the probes.
    pub fn serve_http(&mut self, routes: axum::Router) {
        self.http = std::mem::take(&mut self.http).merge(routes);
    }

    /// Needs `subscription` run for as long as the process runs.
    pub fn subscribe(&mut self, subscription: Subscribe) {
        self.subscriptions.push(subscription);
    }

    /// Runs `task` in the background until it returns; it must return once `shutdown` is
    /// cancelled. `what` names it in logs.
    pub fn spawn(&mut self, what: &str, task: impl Future<Output = ()> + Send + 'static) {
        self.tasks
            .push((format!("{}: {what}", self.name), Box::pin(task)));
    }

    /// A line for the start-up banner (`dev` prints where things listen).
    pub fn announce(&mut self, line: impl Into<String>) {
        self.banner.push(line.into());
    }
}

/// Another service as a caller reaches it (`switchboard_clients::ClientConfig` is built
/// from it).
#[derive(Clone)]
pub struct Peer {
    /// Its gRPC URL.
    pub url: String,
    /// The service token to send.
    pub token: Option<String>,
    /// The calling service's name.
    pub caller: &'static str,
}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peer")
            .field("url", &self.url)
            .field("caller", &self.caller)
            .finish_non_exhaustive()
    }
}

/// The address to reach a listener on `addr` from this machine.
pub fn loopback(addr: std::net::SocketAddr) -> std::net::SocketAddr {
    if addr.ip().is_unspecified() {
        std::net::SocketAddr::new(std::net::IpAddr::from([127, 0, 0, 1]), addr.port())
    } else {
        addr
    }
}
