//! The host: runs service modules in one process, the same way in `dev` and in `serve`.
//!
//! For each module it opens and migrates the log, loads the keyring the module asks for,
//! lets the module declare its parts ([`ServiceModule::start`]), then runs them all: one gRPC
//! server and one HTTP server for every module, a relay per module publishing its log to
//! JetStream (`serve`), each subscription as a durable JetStream consumer (`serve`) or a
//! tail of the producer's log (`dev`), and every background task, all stopped by one
//! cancellation token.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use switchboard_contract::subjects;
use switchboard_eventlog::backfill::Backfill;
use switchboard_eventlog::{
    EventLog, Handler, JetStreamSubscription, LogTailSubscription, RecordedEvent, Relay,
    RelayConfig, Router, StoreConfig, StreamSpec, Subscription, SubscriptionConfig, ensure_stream,
};
use switchboard_secrets::Keyring;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::service::{
    BoxError, Inbox, Mode, Order, Publication, Secrets, ServiceModule, Source, Subscribe, Wiring,
    open_log,
};
use crate::{Config, GrpcServer, http, metrics};

/// Why the host could not run.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("unknown service `{name}`; available: {available}")]
    UnknownService { name: String, available: String },
    #[error("{what}: {source}")]
    Failed {
        what: String,
        #[source]
        source: BoxError,
    },
}

fn failed<E: Into<BoxError>>(what: impl Into<String>) -> impl FnOnce(E) -> HostError {
    let what = what.into();
    move |e| HostError::Failed {
        what,
        source: e.into(),
    }
}

/// The composition: every service the binary knows, in start order.
#[derive(Clone)]
pub struct Host {
    modules: Vec<Arc<dyn ServiceModule>>,
}

/// A started service: its log, and what it publishes.
struct Started {
    module: Arc<dyn ServiceModule>,
    log: EventLog,
}

impl Host {
    pub fn new(modules: Vec<Arc<dyn ServiceModule>>) -> Self {
        Self { modules }
    }

    /// Every service's name, in composition order.
    pub fn names(&self) -> Vec<&'static str> {
        self.modules.iter().map(|m| m.name()).collect()
    }

    /// Every module.
    pub fn modules(&self) -> &[Arc<dyn ServiceModule>] {
        &self.modules
    }

    /// The module named `name`.
    pub fn module(&self, name: &str) -> Result<Arc<dyn ServiceModule>, HostError> {
        let name = name.trim();
        self.modules
            .iter()
            .find(|m| m.name() == name)
            .cloned()
            .ok_or_else(|| HostError::UnknownService {
                name: name.to_owned(),
                available: self.names().join(", "),
            })
    }

    /// Where `service`'s log lives under `config`: Postgres when a database URL is set,
    /// otherwise a SQLite file in the data directory.
    pub fn store_config(config: &Config, service: &str) -> StoreConfig {
        match &config.database_url {
            Some(url) => StoreConfig::Postgres {
                url: url.clone(),
                schema: format!("{}{service}", config.database_schema_prefix),
            },
            None => StoreConfig::Sqlite {
                path: config.data_dir.join(format!("{service}.db")),
            },
        }
    }

    /// Opens a service's log (with its read models) and applies its migrations.
    pub async fn open(
        &self,
        config: &Config,
        module: &dyn ServiceModule,
    ) -> Result<EventLog, HostError> {
        let name = module.name();
        switchboard_eventlog::set_acquire_timeout(Duration::from_secs(
            config.database_acquire_timeout_secs,
        ));
        switchboard_eventlog::set_idle_in_transaction_timeout(Duration::from_secs(
            config.database_idle_in_transaction_secs,
        ));
        let log = open_log(module, &Self::store_config(config, name))
            .await
            .map_err(failed(format!("opening the {name} event log")))?
            .with_lease_term(Duration::from_secs(config.lease_term_secs));
        log.migrate()
            .await
            .map_err(failed(format!("migrating the {name} event log")))?;
        Ok(log)
    }

    /// Runs `services` until `shutdown` is cancelled (or a server fails). `js` is the
    /// JetStream context of `serve`; `dev` has none. `header` is printed before the
    /// services' own lines and where everything listens.
    pub async fn run(
        &self,
        config: Config,
        mode: Mode,
        services: &[Arc<dyn ServiceModule>],
        js: Option<jetstream::Context>,
        header: &[String],
        shutdown: CancellationToken,
    ) -> Result<(), HostError> {
        let config = Arc::new(config);
        let running: Arc<Vec<&'static str>> = Arc::new(services.iter().map(|m| m.name()).collect());
        let routers: Arc<HashMap<&'static str, Arc<dyn Router>>> = Arc::new(
            self.modules
                .iter()
                .filter_map(|m| Some((m.name(), m.publication()?.router)))
                .collect(),
        );
        let mut grpc = GrpcServer::new()
            .with_descriptor(switchboard_proto::FILE_DESCRIPTOR_SET)
            .with_service_token(config.service_token.clone())
            .with_shutdown_grace(Duration::from_secs(config.shutdown_grace_secs));
        let mut routes = axum::Router::new();
        let mut banner: Vec<String> = header.to_vec();
        let mut started = Vec::new();
        let mut subscriptions = Vec::new();
        let mut tasks = JoinSet::new();

        for module in services {
            let name = module.name();
            let log = self.open(&config, module.as_ref()).await?;
            let mut wiring = Wiring {
                name,
                mode,
                config: config.clone(),
                log: log.clone(),
                keyring: keyring(&config, name, module.secrets(), mode)?,
                running: running.clone(),
                routers: routers.clone(),
                shutdown: shutdown.clone(),
                grpc,
                http: routes,
                subscriptions: Vec::new(),
                tasks: Vec::new(),
                banner: Vec::new(),
            };
            module
                .start(&mut wiring)
                .await
                .map_err(failed(format!("starting the {name} service")))?;
            grpc = wiring.grpc;
            routes = wiring.http;
            banner.append(&mut wiring.banner);
            subscriptions.extend(
                wiring
                    .subscriptions
                    .into_iter()
                    .map(|s| (name, log.clone(), s)),
            );
            for (what, task) in wiring.tasks {
                tasks.spawn(async move {
                    task.await;
                    tracing::debug!(task = %what, "background task finished");
                });
            }
            started.push(Started {
                module: module.clone(),
                log,
            });
        }

        if let Some(js) = &js {
            for service in &started {
                if let Some(publication) = service.module.publication() {
                    tasks.spawn(relay(
                        &config,
                        js.clone(),
                        service,
                        publication,
                        shutdown.clone(),
                    ));
                }
            }
        }
        for (owner, log, subscription) in subscriptions {
            let task = self
                .subscription(
                    &config,
                    owner,
                    log,
                    subscription,
                    &started,
                    js.as_ref(),
                    &shutdown,
                )
                .await?;
            if let Some(task) = task {
                tasks.spawn(task);
            }
        }

        let grpc_listener = TcpListener::bind(config.grpc_addr)
            .await
            .map_err(failed(format!(
                "binding gRPC to {} (SWITCHBOARD_GRPC_ADDR)",
                config.grpc_addr
            )))?;
        let http_listener = TcpListener::bind(config.http_addr)
            .await
            .map_err(failed(format!(
                "binding HTTP to {} (SWITCHBOARD_HTTP_ADDR)",
                config.http_addr
            )))?;
        for line in banner {
            println!("{line}");
        }
        println!("  services        {}", running.join(", "));
        if let Ok(addr) = grpc_listener.local_addr() {
            println!("  gRPC            {addr} (health, reflection)");
        }
        if let Ok(addr) = http_listener.local_addr() {
            println!("  HTTP            http://{addr} (/metrics, /healthz, /readyz)");
        }
        println!("ready; ctrl-c stops");
        info!(services = ?running, "switchboard started");

        let ops = http::ops_router_with(metrics::prometheus(), readiness(&started, js.as_ref()))
            .merge(routes);
        // The drain is counted from when the stop was asked for: the servers' drain and
        // the background work's share it.
        let stopping = {
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                shutdown.cancelled().await;
                std::time::Instant::now()
            })
        };
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
        // Background work (relays, dispatchers, subscriptions) finishes what it has in hand,
        // for as long as the drain allows; what is still running then is cut (all of it
        // resumes from the log on the next start).
        let grace = Duration::from_secs(config.shutdown_grace_secs);
        let since_stop = stopping.await.map(|at| at.elapsed()).unwrap_or_default();
        let drained = tokio::time::timeout(grace.saturating_sub(since_stop), async {
            while let Some(finished) = tasks.join_next().await {
                if let Err(e) = finished {
                    warn!(error = %e, "a background task failed");
                }
            }
        })
        .await;
        if drained.is_err() {
            warn!(
                tasks = tasks.len(),
                grace_secs = grace.as_secs(),
                "background tasks still running after the drain; stopping them"
            );
            tasks.abort_all();
            while tasks.join_next().await.is_some() {}
        }
        grpc_result.map_err(failed("gRPC server"))?;
        http_result.map_err(failed("HTTP server"))?;
        info!("switchboard stopped cleanly");
        Ok(())
    }

    /// Where a consumer of `producer`'s `subject` is re-fed from when its stream lost what
    /// it had not acknowledged: the producer's log (its schema in the shared database,
    /// opened only then), through the producer's router. `None` for a producer that
    /// publishes nothing.
    fn backfill(
        &self,
        config: &Config,
        producer: &'static str,
        subject: &'static str,
    ) -> Result<Option<Backfill>, HostError> {
        let module = self.module(producer)?;
        let Some(publication) = module.publication() else {
            return Ok(None);
        };
        let filter = subject_filter(publication.router, subject);
        let store = Self::store_config(config, producer);
        Ok(Some(Backfill {
            open: Arc::new(move || {
                let (module, store) = (module.clone(), store.clone());
                Box::pin(async move { open_log(module.as_ref(), &store).await })
            }),
            filter,
        }))
    }

    /// The task that runs one subscription, or `None` when its producer runs neither here
    /// nor behind NATS (`dev` without the producer).
    #[allow(clippy::too_many_arguments)]
    async fn subscription(
        &self,
        config: &Config,
        owner: &'static str,
        log: EventLog,
        subscription: Subscribe,
        started: &[Started],
        js: Option<&jetstream::Context>,
        shutdown: &CancellationToken,
    ) -> Result<Option<futures::future::BoxFuture<'static, ()>>, HostError> {
        let Subscribe {
            consumer,
            source,
            handler,
            inbox,
            order,
        } = subscription;
        let inbox = match inbox {
            Inbox::Dedicated if !log.takes_concurrent_writers() => {
                let inbox = EventLog::open(&StoreConfig::Sqlite {
                    path: config.data_dir.join(format!("{owner}-inbox.db")),
                })
                .await
                .map_err(failed(format!("opening the {owner} inbox")))?;
                inbox
                    .migrate()
                    .await
                    .map_err(failed(format!("migrating the {owner} inbox")))?;
                inbox
            }
            _ => log.clone(),
        };
        let lanes = match order {
            Order::PerStream => lanes_for(&inbox),
            Order::Total => 1,
        };
        let settings = SubscriptionConfig::new(consumer.clone(), inbox.clone()).with_lanes(lanes);
        let shutdown = shutdown.clone();
        Ok(match (source, js) {
            (Source::OwnLog(filter), _) => Some(tail(log, filter, settings, handler, shutdown)),
            (Source::Stream { stream, subject }, Some(js)) => Some(Box::pin(consume_stream(
                js.clone(),
                StreamSpec::of(&stream, config.nats_replicas)
                    .with_retention(config.stream_retention()),
                config.nats_prefix.clone(),
                subject,
                settings,
                handler,
                self.backfill(config, stream.producer, subject)?,
                shutdown,
            ))),
            (Source::Stream { stream, subject }, None) => {
                let Some(producer) = started.iter().find(|s| s.module.name() == stream.producer)
                else {
                    warn!(
                        consumer = %consumer,
                        producer = stream.producer,
                        "the producer does not run in this process; the subscription waits"
                    );
                    return Ok(None);
                };
                let Some(publication) = producer.module.publication() else {
                    warn!(
                        consumer = %consumer,
                        producer = stream.producer,
                        "the producer publishes nothing; the subscription waits"
                    );
                    return Ok(None);
                };
                let filter = subject_filter(publication.router, subject);
                Some(tail(
                    producer.log.clone(),
                    filter,
                    settings,
                    handler,
                    shutdown,
                ))
            }
        })
    }
}

/// Which events of a log a tail hands on (the same shape as a re-feed's filter).
type Filter = switchboard_eventlog::backfill::EventFilter;

/// The events of a producer's log its `router` publishes on a subject `subject` matches:
/// what a consumer of that subject gets.
fn subject_filter(router: Arc<dyn Router>, subject: &'static str) -> Filter {
    Arc::new(move |e: &RecordedEvent| {
        router
            .subject(e)
            .is_some_and(|s| subjects::matches(subject, &s))
    })
}

/// A subscription tailing `source`'s log.
fn tail(
    source: EventLog,
    filter: Filter,
    settings: SubscriptionConfig,
    handler: Arc<dyn Handler>,
    shutdown: CancellationToken,
) -> futures::future::BoxFuture<'static, ()> {
    let consumer = settings.consumer.clone();
    let subscription = Box::new(LogTailSubscription::new(source, filter, settings));
    Box::pin(async move {
        if let Err(e) = subscription.run(handler, shutdown).await {
            warn!(consumer = %consumer, error = %e, "a subscription stopped");
        }
    })
}

/// Publishes one service's log to its stream, creating the stream first (retrying while
/// NATS is unreachable).
fn relay(
    config: &Config,
    js: jetstream::Context,
    service: &Started,
    publication: Publication,
    shutdown: CancellationToken,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let spec = StreamSpec::of(&publication.stream, config.nats_replicas)
        .with_retention(config.stream_retention());
    let prefix = config.nats_prefix.clone();
    let relay = Relay::new(
        service.log.clone(),
        js.clone(),
        publication.router,
        RelayConfig {
            service: service.module.name().to_owned(),
            prefix: prefix.clone(),
            batch_size: 256,
            poll_interval: Duration::from_millis(config.relay_poll_ms),
        },
    );
    async move {
        let mut delay = Duration::from_millis(200);
        loop {
            match ensure_stream(&js, &prefix, &spec).await {
                Ok(_) => break,
                Err(e) => {
                    warn!(stream = %spec.name, error = %e, "cannot create stream yet; retrying")
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(Duration::from_secs(5));
        }
        relay.run(shutdown).await;
    }
}

/// What `/readyz` checks: every service's store answers a trivial query within two
/// seconds, and NATS (in `serve`) is connected.
fn readiness(started: &[Started], js: Option<&jetstream::Context>) -> http::Readiness {
    let logs: Vec<(&'static str, EventLog)> = started
        .iter()
        .map(|s| (s.module.name(), s.log.clone()))
        .collect();
    let nats = js.map(|js| js.client());
    Arc::new(move || {
        let logs = logs.clone();
        let nats = nats.clone();
        Box::pin(async move {
            let mut problems = Vec::new();
            for (name, log) in &logs {
                if let Err(e) = log.ping(Duration::from_secs(2)).await {
                    problems.push(format!("the {name} store is unreachable ({e})"));
                }
            }
            if let Some(nats) = nats
                && nats.connection_state() != async_nats::connection::State::Connected
            {
                problems.push("NATS is not connected".to_owned());
            }
            if problems.is_empty() {
                Ok(())
            } else {
                Err(problems.join("; "))
            }
        })
    })
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

/// A durable consumer of one stream's `subject`. The stream is Switchboard's, so the
/// consumer creates it (as its producer would: the same subjects, replicas and retention)
/// when its producer has not yet, and reads from the start; only NATS being out of reach
/// makes it wait and try again. A consumer that its stream left behind is re-fed from the
/// producer's log (`backfill`).
#[allow(clippy::too_many_arguments)]
async fn consume_stream(
    js: jetstream::Context,
    spec: StreamSpec,
    prefix: String,
    subject: &'static str,
    config: SubscriptionConfig,
    handler: Arc<dyn Handler>,
    backfill: Option<Backfill>,
    shutdown: CancellationToken,
) {
    let stream = spec.prefixed_name(&prefix);
    while !shutdown.is_cancelled() {
        let outcome = match ensure_stream(&js, &prefix, &spec).await {
            Ok(_) => {
                let mut subscription = JetStreamSubscription::new(
                    js.clone(),
                    stream.clone(),
                    &prefix,
                    subject,
                    config.clone(),
                );
                if let Some(backfill) = &backfill {
                    subscription = subscription.with_backfill(backfill.clone());
                }
                let subscription = Box::new(subscription);
                subscription.run(handler.clone(), shutdown.clone()).await
            }
            Err(e) => Err(e),
        };
        match outcome {
            Ok(()) if shutdown.is_cancelled() => return,
            // The consumer went away (deleted, or its stream recreated): subscribe again.
            Ok(()) => warn!(stream = %stream, "the consumer ended; subscribing again"),
            Err(e) => warn!(stream = %stream, error = %e, "cannot consume; retrying"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    }
}

/// The keyring a service gets: `SWITCHBOARD_ENCRYPTION_KEY` when set; otherwise in `dev` a
/// key generated once into the data directory, and in `serve` none (an error for a service
/// that requires one).
fn keyring(
    config: &Config,
    service: &str,
    secrets: Secrets,
    mode: Mode,
) -> Result<Option<Arc<Keyring>>, HostError> {
    let key = match (secrets, &config.encryption_key, mode) {
        (Secrets::None, _, _) => return Ok(None),
        (_, Some(key), _) => key.clone(),
        (_, None, Mode::Dev) => dev_key(&config.data_dir)?,
        (Secrets::Optional, None, Mode::Serve) => return Ok(None),
        (Secrets::Required, None, Mode::Serve) => {
            return Err(HostError::Failed {
                what: format!("SWITCHBOARD_ENCRYPTION_KEY is required by the {service} service"),
                source: "set it to base64 of 32 random bytes (e.g. `openssl rand -base64 32`)"
                    .into(),
            });
        }
    };
    let keyring = Keyring::from_base64(&[key]).map_err(failed("SWITCHBOARD_ENCRYPTION_KEY"))?;
    Ok(Some(Arc::new(keyring)))
}

/// The development key in `<data dir>/encryption.key`, created on first use (mode 0600).
fn dev_key(data_dir: &std::path::Path) -> Result<String, HostError> {
    use base64::Engine as _;
    use std::io::Write as _;
    let path = data_dir.join("encryption.key");
    if let Ok(key) = std::fs::read_to_string(&path) {
        return Ok(key.trim().to_owned());
    }
    std::fs::create_dir_all(data_dir)
        .map_err(failed(format!("creating {}", data_dir.display())))?;
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
        .map_err(failed(format!(
            "writing the development key to {}",
            path.display()
        )))?;
    Ok(key)
}
