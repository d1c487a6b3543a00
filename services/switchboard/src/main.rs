//! `switchboard`: the one binary of the cluster. It parses the command line, loads the
//! configuration (defaults, optional file, `SWITCHBOARD_*` environment) and starts what it
//! is asked for.
#![forbid(unsafe_code)]

mod api_keys;
mod cluster;
mod events;

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use switchboard_runtime::Config;

use crate::cluster::ServiceName;

#[derive(Parser)]
#[command(
    name = "switchboard",
    version,
    about = "The backend for conversational AI agents that act."
)]
struct Cli {
    /// Optional TOML configuration file; `SWITCHBOARD_*` environment variables override it.
    #[arg(long, global = true, env = "SWITCHBOARD_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run every service in one process on SQLite logs in a data directory. Needs no other
    /// program: no Postgres, no NATS.
    Dev {
        /// Where the SQLite logs live (default ./.switchboard).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// gRPC address of every service (default 127.0.0.1:50051).
        #[arg(long)]
        grpc_addr: Option<SocketAddr>,
        /// HTTP address: REST API, /metrics and /healthz (default 127.0.0.1:8080).
        #[arg(long)]
        http_addr: Option<SocketAddr>,
    },
    /// Run the named services against Postgres (SWITCHBOARD_DATABASE_URL) and NATS
    /// (SWITCHBOARD_NATS_URL), applying their migrations first.
    Serve {
        /// Comma-separated services to run, e.g. `conversations`.
        #[arg(long, value_delimiter = ',', required = true)]
        services: Vec<ServiceName>,
        /// Serve gRPC without a service token. Only on a network where nothing else can
        /// reach the port: the API trusts the workspace named in each request.
        #[arg(long)]
        allow_unauthenticated: bool,
    },
    /// Apply the database migrations of the named services (default: all) and exit.
    Migrate {
        #[arg(long, value_delimiter = ',')]
        services: Vec<ServiceName>,
    },
    /// Run the Connexease simulator alone: the endpoint set of services/connexease/README.md
    /// with in-memory state, its errors, and signed webhooks.
    ConnexeaseSim {
        #[arg(long, default_value = "127.0.0.1:8090")]
        listen: SocketAddr,
        /// The access token it accepts.
        #[arg(long, default_value = "cx_sim_token")]
        token: String,
        /// The secret its webhooks are signed with.
        #[arg(long, default_value = "cx_sim_webhook_secret")]
        webhook_secret: String,
        /// Where it sends webhooks, e.g. http://127.0.0.1:8080/connexease/webhooks/ws_dev.
        #[arg(long)]
        webhook_url: Option<String>,
        /// Requests a second before it answers 429 with Retry-After.
        #[arg(long, default_value_t = 80)]
        rate: u32,
    },
    /// Read or rebuild from a service's event log.
    Events {
        #[command(subcommand)]
        command: EventsCommand,
    },
    /// Create, list and revoke a workspace's API keys for the REST API, in the gateway's
    /// log: a `dev` data directory (also while `dev` runs) or SWITCHBOARD_DATABASE_URL.
    ApiKeys {
        #[command(subcommand)]
        command: ApiKeysCommand,
        /// The data directory of a `dev` cluster (default ./.switchboard).
        #[arg(long, global = true)]
        data_dir: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum ApiKeysCommand {
    /// Create a key; it is printed once, alone on the last line.
    Create {
        #[arg(long)]
        workspace: String,
        /// What the key is for.
        #[arg(long)]
        name: String,
        /// A scope: read, write, admin, or <resource>:read|write. Repeat for several;
        /// default read and write.
        #[arg(long = "scope")]
        scopes: Vec<String>,
        /// When it stops working, e.g. `90d` (never when absent).
        #[arg(long, value_parser = humantime::parse_duration)]
        expires_in: Option<std::time::Duration>,
    },
    /// List a workspace's keys.
    List {
        #[arg(long)]
        workspace: String,
    },
    /// Revoke a key: refused from now on.
    Revoke {
        /// The key's id, `key_...`.
        id: String,
        #[arg(long)]
        workspace: String,
    },
}

#[derive(Subcommand)]
enum EventsCommand {
    /// Print a service's events as JSON lines, in log order.
    Tail {
        #[arg(long, default_value = "conversations")]
        service: ServiceName,
        /// Start after this global position (0: from the beginning).
        #[arg(long, default_value_t = 0)]
        after: i64,
        /// Stop after this many events (0: no limit).
        #[arg(long, default_value_t = 0)]
        limit: u64,
        /// Keep waiting for new events.
        #[arg(long)]
        follow: bool,
    },
    /// Drop a service's read models and fold them again from position 0, showing progress.
    /// Writers wait while it runs.
    Rebuild {
        #[arg(long, default_value = "conversations")]
        service: ServiceName,
        /// Confirm: the read models are replaced.
        #[arg(long)]
        yes: bool,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let mut config = Config::load(cli.config.as_deref()).context("configuration")?;
    match cli.command {
        Command::Dev {
            data_dir,
            grpc_addr,
            http_addr,
        } => {
            if let Some(dir) = data_dir {
                config.data_dir = dir;
            }
            if let Some(addr) = grpc_addr {
                config.grpc_addr = addr;
            }
            if let Some(addr) = http_addr {
                config.http_addr = addr;
            }
            cluster::dev(config).await
        }
        Command::Serve {
            services,
            allow_unauthenticated,
        } => cluster::serve(config, services, allow_unauthenticated).await,
        Command::Migrate { services } => cluster::migrate(config, services).await,
        Command::ConnexeaseSim {
            listen,
            token,
            webhook_secret,
            webhook_url,
            rate,
        } => {
            let sim = switchboard_connexease::sim::SimConfig {
                token,
                webhook_secret,
                webhook_url,
                rate_per_second: rate,
                ..Default::default()
            };
            connexease_sim(listen, sim).await
        }
        Command::ApiKeys { command, data_dir } => {
            if let Some(dir) = data_dir {
                config.data_dir = dir;
            }
            match command {
                ApiKeysCommand::Create {
                    workspace,
                    name,
                    scopes,
                    expires_in,
                } => api_keys::create(config, &workspace, &name, &scopes, expires_in).await,
                ApiKeysCommand::List { workspace } => api_keys::list(config, &workspace).await,
                ApiKeysCommand::Revoke { id, workspace } => {
                    api_keys::revoke(config, &workspace, &id).await
                }
            }
        }
        Command::Events { command } => match command {
            EventsCommand::Tail {
                service,
                after,
                limit,
                follow,
            } => events::tail(config, service, after, limit, follow).await,
            EventsCommand::Rebuild { service, yes } => {
                anyhow::ensure!(
                    yes,
                    "rebuild replaces the read models of {service}: pass --yes to confirm"
                );
                events::rebuild(config, service).await
            }
        },
    }
}

/// `switchboard connexease-sim`: the simulator alone, until ctrl-c.
pub async fn connexease_sim(
    addr: std::net::SocketAddr,
    sim: switchboard_connexease::sim::SimConfig,
) -> anyhow::Result<()> {
    let shutdown = switchboard_runtime::shutdown::signal_token();
    let listener = tokio::net::TcpListener::bind(addr)
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
