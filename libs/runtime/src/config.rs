//! Process configuration: one struct, layered once at start-up.
//!
//! Values come from three layers, later ones winning: the defaults in
//! [`Config::default`], then an optional TOML file whose keys are the field names
//! (`nats_replicas = 3`), then `SWITCHBOARD_*` environment variables
//! (`SWITCHBOARD_NATS_REPLICAS=3`). The result is validated before it is returned, and
//! every error names the environment variable a user would set to fix it, together with
//! the offending value (secrets and URL passwords are redacted).

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use figment::providers::{Format, Serialized, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};
use serde::{Deserialize, Serialize};

/// Prefix of every environment variable this crate reads.
pub const ENV_PREFIX: &str = "SWITCHBOARD_";

/// Everything a Switchboard process needs to know before it starts serving.
///
/// `Debug` is implemented by hand so that logging a `Config` never prints the service
/// token, the encryption key or a password embedded in a URL.
#[derive(Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default)]
pub struct Config {
    /// `SWITCHBOARD_DATABASE_URL`: `postgres://` URL; `None` runs against embedded storage.
    pub database_url: Option<String>,
    /// `SWITCHBOARD_DATABASE_SCHEMA_PREFIX`: each service owns schema `{prefix}{service}`.
    pub database_schema_prefix: String,
    /// `SWITCHBOARD_NATS_URL`: NATS server(s); `None` runs with the embedded event bus.
    pub nats_url: Option<String>,
    /// `SWITCHBOARD_NATS_PREFIX`: prepended to every subject and stream name (test isolation).
    pub nats_prefix: String,
    /// `SWITCHBOARD_NATS_REPLICAS`: JetStream replicas for the streams we create, 1..=5.
    pub nats_replicas: usize,
    /// `SWITCHBOARD_GRPC_ADDR`: where the gRPC server listens.
    pub grpc_addr: SocketAddr,
    /// `SWITCHBOARD_HTTP_ADDR`: where the ops HTTP server (metrics, health) listens.
    pub http_addr: SocketAddr,
    /// `SWITCHBOARD_API_ADDR`: where the gateway serves the public REST API.
    pub api_addr: SocketAddr,
    /// `SWITCHBOARD_API_PUBLIC_URL`: the REST API's public base URL
    /// (`https://api.example.com`), for links in webhook bodies; unset: `dev` links to
    /// `SWITCHBOARD_API_ADDR`, `serve` gives paths relative to the API.
    pub api_public_url: Option<String>,
    /// `SWITCHBOARD_API_RATE_PER_MINUTE`: requests one API key may make a minute, counted
    /// across every gateway replica (1 to 1,000,000).
    pub api_rate_per_minute: u32,
    /// `SWITCHBOARD_DATABASE_ACQUIRE_TIMEOUT_SECS`: how long a call waits for a Postgres
    /// connection before it fails with `UNAVAILABLE` (1 to 60).
    pub database_acquire_timeout_secs: u64,
    /// `SWITCHBOARD_LEASE_TERM_SECS`: how long a role's lease (a service's relay, the
    /// webhook dispatcher, the flow timers) lasts without renewal, so how soon a standby
    /// replica takes over from a holder that died, froze or was cut off (1 to 300).
    pub lease_term_secs: u64,
    /// `SWITCHBOARD_STREAM_MAX_AGE_HOURS`: how long every JetStream stream Switchboard
    /// creates keeps a message (1 to 87600; the event log keeps everything, and a consumer
    /// that falls further behind is re-fed from it).
    pub stream_max_age_hours: u64,
    /// `SWITCHBOARD_STREAM_MAX_BYTES`: the most each stream keeps, the oldest messages
    /// going first (0, the default: no byte limit). JetStream reserves this much of the
    /// server's storage for each stream (times its replicas) when it is created.
    pub stream_max_bytes: u64,
    /// `SWITCHBOARD_DATABASE_IDLE_IN_TRANSACTION_SECS`: how long Postgres lets a transaction
    /// of ours sit idle before aborting it, which bounds how long a process frozen inside a
    /// transaction holds back the relays and a lease takeover (1 to 3600).
    pub database_idle_in_transaction_secs: u64,
    /// `SWITCHBOARD_DATA_DIR`: local state for embedded mode.
    pub data_dir: PathBuf,
    /// `SWITCHBOARD_SERVICE_TOKEN`: bearer token required on internal gRPC; `None` = no auth.
    pub service_token: Option<String>,
    /// `SWITCHBOARD_OTLP_ENDPOINT`: OTLP/gRPC collector, e.g. `http://otel-collector:4317`.
    pub otlp_endpoint: Option<String>,
    /// `SWITCHBOARD_LOG_FORMAT`: `text` for people, `json` for log collectors.
    pub log_format: LogFormat,
    /// `SWITCHBOARD_LOG_FILTER`: a `tracing_subscriber::EnvFilter` directive string.
    pub log_filter: String,
    /// `SWITCHBOARD_RELAY_POLL_MS`: how often the outbox relay polls, 1..=60000 ms.
    pub relay_poll_ms: u64,
    /// `SWITCHBOARD_SHUTDOWN_GRACE_SECS`: how long to drain in-flight work, 0..=600 s.
    pub shutdown_grace_secs: u64,
    /// `SWITCHBOARD_ENCRYPTION_KEY`: base64 of exactly 32 bytes, for secrets at rest.
    pub encryption_key: Option<String>,
    /// `SWITCHBOARD_OUTBOUND_ALLOW`: comma-separated CIDR ranges that outbound requests
    /// (actions, webhooks) may reach although they are private or loopback, e.g.
    /// `10.1.0.0/16`. Empty: public addresses only.
    pub outbound_allow: String,
    /// `SWITCHBOARD_CONVERSATIONS_URL`: the conversations service's gRPC address, for
    /// `update_conversation` actions; unset: this process's own gRPC server when it runs
    /// the conversations service.
    pub conversations_url: Option<String>,
    /// `SWITCHBOARD_QUERY_DATABASES`: the Postgres databases `database_query` actions may
    /// read, as `name=postgres://...` pairs separated by commas. Give them a read-only role.
    pub query_databases: String,
    /// `SWITCHBOARD_EXECUTION_RETENTION_DAYS`: how long executions stay in the queryable
    /// execution log, 1..=3650 days (the events stay as the audit trail).
    pub execution_retention_days: u32,
    /// `SWITCHBOARD_CONNEXEASE_URL`: the connexease service's gRPC address, for
    /// `connexease` actions; unset: this process's own gRPC server when it runs the
    /// connexease service.
    pub connexease_url: Option<String>,
    /// `SWITCHBOARD_ACTIONS_URL`: the actions service's gRPC address, for the flows
    /// service's checks of the actions a graph refers to; unset: this process's own gRPC
    /// server when it runs the actions service.
    pub actions_url: Option<String>,
    /// `SWITCHBOARD_FLOWS_URL`: the flows service's gRPC address, for `workflow` actions;
    /// unset: this process's own gRPC server when it runs the flows service.
    pub flows_url: Option<String>,
    /// `SWITCHBOARD_WEBHOOKS_URL`: the webhooks service's gRPC address, for the gateway's
    /// `/v1/webhook-endpoints`; unset: this process's own gRPC server when it runs the
    /// webhooks service.
    pub webhooks_url: Option<String>,
    /// `SWITCHBOARD_INSIGHTS_URL`: the insights service's gRPC address, for the gateway's
    /// `/v1/insights` and its conversation lists by segment or assistant; unset: this
    /// process's own gRPC server when it runs the insights service.
    pub insights_url: Option<String>,
    /// `SWITCHBOARD_INSIGHTS_FINDINGS_EVERY_SECS`: how often the insights service looks for
    /// findings in every active workspace (0: never on its own; `DetectFindings` still
    /// runs on demand).
    pub insights_findings_every_secs: u64,
    /// `SWITCHBOARD_CONNEXEASE_SIM_ADDR`: where `dev` runs the Connexease simulator.
    pub connexease_sim_addr: SocketAddr,
    /// `SWITCHBOARD_CONNEXEASE_SIM_WORKSPACE`: the workspace the simulator's webhooks are
    /// sent to in `dev` (every workspace may use the simulator; its webhooks go to one).
    pub connexease_sim_workspace: String,
    /// `SWITCHBOARD_WEBHOOK_RETRY_SCHEDULE`: the delays between webhook attempts after the
    /// first, comma-separated durations (`5s,5m,30m,2h,5h,10h,10h`), each jittered ±20%.
    pub webhook_retry_schedule: String,
    /// `SWITCHBOARD_WEBHOOK_TIMEOUT_SECS`: how long a receiver has to answer, 1..=60.
    pub webhook_timeout_secs: u64,
    /// `SWITCHBOARD_WEBHOOK_DISABLE_AFTER_HOURS`: an endpoint failing this long with no
    /// success is disabled, 1..=720.
    pub webhook_disable_after_hours: u64,
    /// `SWITCHBOARD_WEBHOOK_ALLOW_HTTP_HOSTS`: comma-separated hosts endpoints may reach
    /// over plain http (everything else must be https).
    pub webhook_allow_http_hosts: String,
}

/// How log lines are written to stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines (the default).
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Why configuration could not be loaded; the message is meant for the operator.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A value is present but not acceptable. Fix the named variable (or the same key,
    /// lowercased and without the prefix, in the configuration file).
    #[error("{variable}={value}: {reason}")]
    Invalid {
        /// Environment variable name, e.g. `SWITCHBOARD_NATS_REPLICAS`.
        variable: String,
        /// The rejected value, redacted when it is a secret.
        value: String,
        /// What an acceptable value looks like.
        reason: String,
    },
    /// The configuration file given on the command line could not be read or parsed.
    #[error("configuration file {}: {reason}", path.display())]
    File {
        /// The file that was asked for.
        path: PathBuf,
        /// What went wrong reading or parsing it.
        reason: String,
    },
    /// A figment error that is not tied to one key (should not happen with our providers).
    #[error("configuration: {0}")]
    Load(#[source] Box<figment::Error>),
}

impl Default for Config {
    fn default() -> Self {
        Config {
            database_url: None,
            database_schema_prefix: String::new(),
            nats_url: None,
            nats_prefix: String::new(),
            nats_replicas: 1,
            grpc_addr: SocketAddr::from(([127, 0, 0, 1], 50051)),
            http_addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            api_addr: SocketAddr::from(([127, 0, 0, 1], 8000)),
            api_public_url: None,
            api_rate_per_minute: 600,
            database_acquire_timeout_secs: 5,
            lease_term_secs: 5,
            stream_max_age_hours: 168,
            stream_max_bytes: 0,
            database_idle_in_transaction_secs: 600,
            data_dir: PathBuf::from("./.switchboard"),
            service_token: None,
            otlp_endpoint: None,
            log_format: LogFormat::Text,
            log_filter: "info".to_owned(),
            relay_poll_ms: 100,
            shutdown_grace_secs: 20,
            encryption_key: None,
            outbound_allow: String::new(),
            conversations_url: None,
            query_databases: String::new(),
            execution_retention_days: 30,
            connexease_url: None,
            actions_url: None,
            flows_url: None,
            webhooks_url: None,
            insights_url: None,
            insights_findings_every_secs: 3600,
            connexease_sim_addr: SocketAddr::from(([127, 0, 0, 1], 8090)),
            connexease_sim_workspace: "ws_dev".to_owned(),
            webhook_retry_schedule: "5s,5m,30m,2h,5h,10h,10h".to_owned(),
            webhook_timeout_secs: 15,
            webhook_disable_after_hours: 120,
            webhook_allow_http_hosts: String::new(),
        }
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redacted = |secret: &Option<String>| secret.as_ref().map(|_| "<redacted>");
        f.debug_struct("Config")
            .field(
                "database_url",
                &self.database_url.as_deref().map(redact_url),
            )
            .field("database_schema_prefix", &self.database_schema_prefix)
            .field("nats_url", &self.nats_url.as_deref().map(redact_url))
            .field("nats_prefix", &self.nats_prefix)
            .field("nats_replicas", &self.nats_replicas)
            .field("grpc_addr", &self.grpc_addr)
            .field("http_addr", &self.http_addr)
            .field("data_dir", &self.data_dir)
            .field("service_token", &redacted(&self.service_token))
            .field("otlp_endpoint", &self.otlp_endpoint)
            .field("log_format", &self.log_format)
            .field("log_filter", &self.log_filter)
            .field("relay_poll_ms", &self.relay_poll_ms)
            .field("shutdown_grace_secs", &self.shutdown_grace_secs)
            .field("encryption_key", &redacted(&self.encryption_key))
            .field("outbound_allow", &self.outbound_allow)
            .field("conversations_url", &self.conversations_url)
            .field(
                "query_databases",
                &(!self.query_databases.is_empty()).then_some("<redacted>"),
            )
            .field("execution_retention_days", &self.execution_retention_days)
            .field("connexease_url", &self.connexease_url)
            .field("actions_url", &self.actions_url)
            .field("flows_url", &self.flows_url)
            .field("webhooks_url", &self.webhooks_url)
            .field("insights_url", &self.insights_url)
            .field(
                "insights_findings_every_secs",
                &self.insights_findings_every_secs,
            )
            .field("connexease_sim_addr", &self.connexease_sim_addr)
            .field("api_addr", &self.api_addr)
            .field("api_public_url", &self.api_public_url)
            .field("api_rate_per_minute", &self.api_rate_per_minute)
            .field(
                "database_acquire_timeout_secs",
                &self.database_acquire_timeout_secs,
            )
            .field("lease_term_secs", &self.lease_term_secs)
            .field("stream_max_age_hours", &self.stream_max_age_hours)
            .field("stream_max_bytes", &self.stream_max_bytes)
            .field(
                "database_idle_in_transaction_secs",
                &self.database_idle_in_transaction_secs,
            )
            .field("connexease_sim_workspace", &self.connexease_sim_workspace)
            .field("webhook_retry_schedule", &self.webhook_retry_schedule)
            .field("webhook_timeout_secs", &self.webhook_timeout_secs)
            .field(
                "webhook_disable_after_hours",
                &self.webhook_disable_after_hours,
            )
            .field("webhook_allow_http_hosts", &self.webhook_allow_http_hosts)
            .finish()
    }
}

impl Config {
    /// How much every stream Switchboard creates keeps.
    pub fn stream_retention(&self) -> switchboard_eventlog::Retention {
        switchboard_eventlog::Retention {
            max_age: std::time::Duration::from_secs(self.stream_max_age_hours * 3600),
            max_bytes: i64::try_from(self.stream_max_bytes).unwrap_or(i64::MAX),
            max_messages: 0,
        }
    }

    /// Defaults, then the optional TOML file, then `SWITCHBOARD_*` environment variables.
    ///
    /// The result is already validated. A file that was named but does not exist is an
    /// error (a typo in a path should not silently fall back to defaults).
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        let mut env = Vec::new();
        for (key, value) in std::env::vars_os() {
            let key = key.to_string_lossy().into_owned();
            if !key.starts_with(ENV_PREFIX) {
                continue;
            }
            match value.into_string() {
                Ok(value) => env.push((key, value)),
                Err(raw) => {
                    return Err(ConfigError::Invalid {
                        variable: key,
                        value: raw.to_string_lossy().into_owned(),
                        reason: "must be valid UTF-8".to_owned(),
                    });
                }
            }
        }
        Self::load_from(file, env)
    }

    /// Same as [`Config::load`], but reads variables from `env` instead of the process
    /// environment, so tests can run in parallel without touching global state.
    ///
    /// Pairs whose name does not start with `SWITCHBOARD_` are ignored, as are unknown
    /// `SWITCHBOARD_*` names. An empty value for an optional setting means "unset".
    pub fn load_from(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            if !path.is_file() {
                return Err(ConfigError::File {
                    path: path.to_owned(),
                    reason: "no such file".to_owned(),
                });
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        figment = figment.merge(PrefixedEnv::new(env));

        let mut config: Config = figment
            .extract_lossy()
            .map_err(|error| ConfigError::from_figment(error, &figment, file))?;
        config.normalize();
        config.validate()?;
        Ok(config)
    }

    /// Checks every value that serde alone cannot: ranges, URL schemes, identifier
    /// characters, key length. Returns the first problem found.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(url) = &self.database_url
            && !(url.starts_with("postgres://") || url.starts_with("postgresql://"))
        {
            return Err(invalid(
                "database_url",
                redact_url(url),
                "must start with postgres:// or postgresql://",
            ));
        }
        let prefix = &self.database_schema_prefix;
        if prefix.len() > 40
            || prefix.starts_with(|c: char| c.is_ascii_digit())
            || !prefix
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        {
            return Err(invalid(
                "database_schema_prefix",
                prefix,
                "must be at most 40 characters of a-z, 0-9 and _, not starting with a digit",
            ));
        }
        if let Some(urls) = &self.nats_url {
            for url in urls.split(',').map(str::trim) {
                if let Err(reason) = check_nats_url(url) {
                    return Err(invalid("nats_url", redact_url(urls), reason));
                }
            }
        }
        if self.nats_prefix.len() > 64
            || !self
                .nats_prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(invalid(
                "nats_prefix",
                &self.nats_prefix,
                "must be at most 64 characters of A-Z, a-z, 0-9, _ and - \
                 (it is used in both subjects and stream names)",
            ));
        }
        if !(1..=5).contains(&self.nats_replicas) {
            return Err(invalid(
                "nats_replicas",
                self.nats_replicas,
                "must be between 1 and 5",
            ));
        }
        if self.grpc_addr == self.http_addr && self.grpc_addr.port() != 0 {
            return Err(invalid(
                "http_addr",
                self.http_addr,
                "must differ from SWITCHBOARD_GRPC_ADDR",
            ));
        }
        if self.api_addr.port() != 0
            && (self.api_addr == self.grpc_addr || self.api_addr == self.http_addr)
        {
            return Err(invalid(
                "api_addr",
                self.api_addr,
                "must differ from SWITCHBOARD_GRPC_ADDR and SWITCHBOARD_HTTP_ADDR",
            ));
        }
        if !(1..=1_000_000).contains(&self.api_rate_per_minute) {
            return Err(invalid(
                "api_rate_per_minute",
                self.api_rate_per_minute,
                "must be between 1 and 1000000",
            ));
        }
        if !(1..=60).contains(&self.database_acquire_timeout_secs) {
            return Err(invalid(
                "database_acquire_timeout_secs",
                self.database_acquire_timeout_secs,
                "must be between 1 and 60",
            ));
        }
        if !(1..=87_600).contains(&self.stream_max_age_hours) {
            return Err(invalid(
                "stream_max_age_hours",
                self.stream_max_age_hours,
                "must be between 1 and 87600",
            ));
        }
        if self.stream_max_bytes > i64::MAX as u64 {
            return Err(invalid(
                "stream_max_bytes",
                self.stream_max_bytes,
                "must fit in a signed 64-bit integer",
            ));
        }
        if !(1..=300).contains(&self.lease_term_secs) {
            return Err(invalid(
                "lease_term_secs",
                self.lease_term_secs,
                "must be between 1 and 300",
            ));
        }
        if !(1..=3600).contains(&self.database_idle_in_transaction_secs) {
            return Err(invalid(
                "database_idle_in_transaction_secs",
                self.database_idle_in_transaction_secs,
                "must be between 1 and 3600",
            ));
        }
        if self.data_dir.as_os_str().is_empty() {
            return Err(invalid("data_dir", "", "must not be empty"));
        }
        if let Some(token) = &self.service_token
            && !token.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(invalid(
                "service_token",
                "<redacted>",
                "must contain only printable ASCII without spaces",
            ));
        }
        if let Some(endpoint) = &self.otlp_endpoint
            && !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
        {
            return Err(invalid(
                "otlp_endpoint",
                redact_url(endpoint),
                "must start with http:// or https:// (OTLP over gRPC, usually port 4317)",
            ));
        }
        if self.log_filter.trim().is_empty() {
            return Err(invalid("log_filter", &self.log_filter, "must not be empty"));
        }
        if let Err(error) = tracing_subscriber::EnvFilter::try_new(&self.log_filter) {
            return Err(invalid(
                "log_filter",
                &self.log_filter,
                format!("not a valid tracing filter: {error}"),
            ));
        }
        if !(1..=60_000).contains(&self.relay_poll_ms) {
            return Err(invalid(
                "relay_poll_ms",
                self.relay_poll_ms,
                "must be between 1 and 60000",
            ));
        }
        if self.shutdown_grace_secs > 600 {
            return Err(invalid(
                "shutdown_grace_secs",
                self.shutdown_grace_secs,
                "must be between 0 and 600",
            ));
        }
        for range in self.outbound_allow_ranges() {
            let parsed = range
                .parse::<ipnet::IpNet>()
                .map(|_| ())
                .or_else(|_| range.parse::<std::net::IpAddr>().map(|_| ()));
            if parsed.is_err() {
                return Err(invalid(
                    "outbound_allow",
                    &self.outbound_allow,
                    format!("`{range}` is not an IP range in CIDR notation (e.g. 10.1.0.0/16)"),
                ));
            }
        }
        if let Some(url) = &self.conversations_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(invalid(
                "conversations_url",
                redact_url(url),
                "must start with http:// or https:// (the gRPC address)",
            ));
        }
        for (key, url) in [
            ("connexease_url", &self.connexease_url),
            ("actions_url", &self.actions_url),
            ("flows_url", &self.flows_url),
        ] {
            if let Some(url) = url
                && !(url.starts_with("http://") || url.starts_with("https://"))
            {
                return Err(invalid(
                    key,
                    redact_url(url),
                    "must start with http:// or https:// (the gRPC address)",
                ));
            }
        }
        if !self.connexease_sim_workspace.starts_with("ws_") {
            return Err(invalid(
                "connexease_sim_workspace",
                &self.connexease_sim_workspace,
                "a workspace id (`ws_...`)",
            ));
        }
        if let Err(reason) = self.webhook_retry_delays() {
            return Err(invalid(
                "webhook_retry_schedule",
                &self.webhook_retry_schedule,
                reason,
            ));
        }
        if !(1..=60).contains(&self.webhook_timeout_secs) {
            return Err(invalid(
                "webhook_timeout_secs",
                self.webhook_timeout_secs,
                "must be between 1 and 60",
            ));
        }
        if !(1..=720).contains(&self.webhook_disable_after_hours) {
            return Err(invalid(
                "webhook_disable_after_hours",
                self.webhook_disable_after_hours,
                "must be between 1 and 720",
            ));
        }
        if !(1..=3650).contains(&self.execution_retention_days) {
            return Err(invalid(
                "execution_retention_days",
                self.execution_retention_days,
                "must be between 1 and 3650",
            ));
        }
        if let Some(key) = &self.encryption_key {
            match base64::engine::general_purpose::STANDARD.decode(key.trim()) {
                Ok(bytes) if bytes.len() == 32 => {}
                Ok(bytes) => {
                    return Err(invalid(
                        "encryption_key",
                        "<redacted>",
                        format!("must be base64 of exactly 32 bytes, got {}", bytes.len()),
                    ));
                }
                Err(_) => {
                    return Err(invalid(
                        "encryption_key",
                        "<redacted>",
                        "must be standard base64 (of exactly 32 bytes)",
                    ));
                }
            }
        }
        Ok(())
    }

    /// The delays of `webhook_retry_schedule`: 1 to 20 of them, each at most a day.
    pub fn webhook_retry_delays(&self) -> Result<Vec<std::time::Duration>, String> {
        let delays = self
            .webhook_retry_schedule
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                humantime::parse_duration(s)
                    .map_err(|e| format!("`{s}` is not a duration like 5s, 5m or 2h: {e}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if delays.is_empty() || delays.len() > 20 {
            return Err("must list 1 to 20 delays, e.g. 5s,5m,30m,2h".into());
        }
        if delays
            .iter()
            .any(|d| *d > std::time::Duration::from_secs(86_400))
        {
            return Err("each delay must be at most 24h".into());
        }
        Ok(delays)
    }

    /// The hosts of `webhook_allow_http_hosts`.
    pub fn webhook_http_hosts(&self) -> Vec<String> {
        self.webhook_allow_http_hosts
            .split(',')
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .map(str::to_owned)
            .collect()
    }

    /// The configured gRPC address of `service` (`SWITCHBOARD_<SERVICE>_URL`), if any.
    pub fn service_url(&self, service: &str) -> Option<String> {
        use switchboard_contract::services as s;
        match service {
            s::CONVERSATIONS => self.conversations_url.clone(),
            s::CONNEXEASE => self.connexease_url.clone(),
            s::ACTIONS => self.actions_url.clone(),
            s::FLOWS => self.flows_url.clone(),
            s::WEBHOOKS => self.webhooks_url.clone(),
            s::INSIGHTS => self.insights_url.clone(),
            _ => None,
        }
    }

    /// The ranges of `outbound_allow`, one per comma-separated entry.
    pub fn outbound_allow_ranges(&self) -> Vec<&str> {
        self.outbound_allow
            .split(',')
            .map(str::trim)
            .filter(|r| !r.is_empty())
            .collect()
    }

    /// Treats empty optional strings as unset, so `SWITCHBOARD_OTLP_ENDPOINT=` can turn
    /// off a value that the configuration file set.
    fn normalize(&mut self) {
        for value in [
            &mut self.database_url,
            &mut self.nats_url,
            &mut self.service_token,
            &mut self.otlp_endpoint,
            &mut self.encryption_key,
            &mut self.conversations_url,
            &mut self.connexease_url,
            &mut self.actions_url,
            &mut self.flows_url,
            &mut self.webhooks_url,
            &mut self.insights_url,
            &mut self.api_public_url,
        ] {
            if value.as_deref().is_some_and(|v| v.trim().is_empty()) {
                *value = None;
            }
        }
    }
}

/// The environment variable that sets configuration key `key`.
pub fn env_var_name(key: &str) -> String {
    format!("{ENV_PREFIX}{}", key.to_ascii_uppercase())
}

fn invalid(key: &str, value: impl fmt::Display, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        variable: env_var_name(key),
        value: value.to_string(),
        reason: reason.into(),
    }
}

fn check_nats_url(url: &str) -> Result<(), &'static str> {
    if url.is_empty() || url.contains(char::is_whitespace) {
        return Err("must be a comma-separated list of nats://host:port URLs");
    }
    if let Some((scheme, _)) = url.split_once("://")
        && !matches!(scheme, "nats" | "tls" | "ws" | "wss")
    {
        return Err("scheme must be nats://, tls://, ws:// or wss://");
    }
    Ok(())
}

/// Replaces the password in `scheme://user:password@host` so errors and logs can show
/// which URL was meant without leaking credentials.
fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url.to_owned();
    };
    let user = rest[..at].split(':').next().unwrap_or_default();
    format!("{scheme}://{user}:***{}", &rest[at..])
}

impl ConfigError {
    /// Turns a figment error into one naming the environment variable and its value.
    fn from_figment(error: figment::Error, figment: &Figment, file: Option<&Path>) -> Self {
        if error.path.is_empty() {
            // Not tied to a key: with our providers that means the TOML did not parse.
            return match file {
                Some(path) => ConfigError::File {
                    path: path.to_owned(),
                    reason: error.kind.to_string(),
                },
                None => ConfigError::Load(Box::new(error)),
            };
        }
        let key = error.path.join("_");
        let value = figment
            .find_value(&error.path.join("."))
            .map(|value| render_value(&key, &value))
            .unwrap_or_default();
        let mut reason = error.kind.to_string();
        if let Some(path) = error
            .metadata
            .as_ref()
            .and_then(|md| md.source.as_ref())
            .and_then(|source| source.file_path())
        {
            reason.push_str(&format!(" (set in {})", path.display()));
        }
        ConfigError::Invalid {
            variable: env_var_name(&key),
            value,
            reason,
        }
    }
}

fn render_value(key: &str, value: &Value) -> String {
    if matches!(key, "service_token" | "encryption_key" | "query_databases") {
        return "<redacted>".to_owned();
    }
    match value {
        Value::String(_, s) => redact_url(s),
        Value::Char(_, c) => c.to_string(),
        Value::Bool(_, b) => b.to_string(),
        Value::Num(..) => value
            .to_i128()
            .map(|n| n.to_string())
            .or_else(|| value.to_f64().map(|n| n.to_string()))
            .unwrap_or_default(),
        Value::Empty(..) => String::new(),
        Value::Dict(..) | Value::Array(..) => format!("{value:?}"),
    }
}

/// A figment provider over an explicit list of `SWITCHBOARD_*` pairs.
///
/// figment's own `Env` only reads the process environment; this one takes the pairs as
/// input so [`Config::load_from`] is testable. Values stay strings: extraction is lossy,
/// so `"3"` still becomes a number where a number is expected, while a numeric-looking
/// token stays a string where a string is expected.
struct PrefixedEnv {
    /// Lowercased key without the prefix, to the raw value.
    vars: BTreeMap<String, String>,
}

impl PrefixedEnv {
    fn new(env: impl IntoIterator<Item = (String, String)>) -> Self {
        let vars = env
            .into_iter()
            .filter_map(|(key, value)| {
                let key = key.strip_prefix(ENV_PREFIX)?.to_ascii_lowercase();
                (!key.is_empty()).then_some((key, value))
            })
            .collect();
        PrefixedEnv { vars }
    }
}

impl Provider for PrefixedEnv {
    fn metadata(&self) -> Metadata {
        Metadata::named(format!("`{ENV_PREFIX}` environment variable(s)"))
            .interpolater(|_: &Profile, keys: &[&str]| env_var_name(&keys.join("_")))
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        let dict: Dict = self
            .vars
            .iter()
            .map(|(key, value)| (key.clone(), Value::from(value.clone())))
            .collect();
        Ok(Profile::Default.collect(dict))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    /// A TOML file in the temp directory, removed on drop.
    struct TempToml(PathBuf);

    impl TempToml {
        fn new(name: &str, contents: &str) -> Self {
            let path = std::env::temp_dir().join(format!(
                "switchboard-runtime-{}-{name}.toml",
                std::process::id()
            ));
            std::fs::write(&path, contents).expect("write temp config");
            TempToml(path)
        }
    }

    impl Drop for TempToml {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn invalid_variable(error: ConfigError) -> (String, String, String) {
        match error {
            ConfigError::Invalid {
                variable,
                value,
                reason,
            } => (variable, value, reason),
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn defaults_without_file_or_env() {
        let config = Config::load_from(None, Vec::new()).expect("defaults are valid");
        assert_eq!(config, Config::default());
        assert_eq!(config.grpc_addr, "127.0.0.1:50051".parse().unwrap());
        assert_eq!(config.http_addr, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(config.nats_replicas, 1);
        assert_eq!(config.relay_poll_ms, 100);
        assert_eq!(config.shutdown_grace_secs, 20);
        assert_eq!(config.log_format, LogFormat::Text);
        assert_eq!(config.log_filter, "info");
        assert_eq!(config.data_dir, PathBuf::from("./.switchboard"));
        assert_eq!(config.database_url, None);
    }

    #[test]
    fn webhook_settings_are_checked() {
        let config = Config::load_from(
            None,
            env(&[
                ("SWITCHBOARD_WEBHOOK_RETRY_SCHEDULE", "250ms, 5s,5m,2h"),
                (
                    "SWITCHBOARD_WEBHOOK_ALLOW_HTTP_HOSTS",
                    "hooks.internal, 10.0.0.5",
                ),
            ]),
        )
        .unwrap();
        assert_eq!(
            config.webhook_retry_delays().unwrap(),
            [
                std::time::Duration::from_millis(250),
                std::time::Duration::from_secs(5),
                std::time::Duration::from_secs(300),
                std::time::Duration::from_secs(7200)
            ]
        );
        assert_eq!(config.webhook_http_hosts(), ["hooks.internal", "10.0.0.5"]);
        for (variable, value) in [
            ("SWITCHBOARD_WEBHOOK_RETRY_SCHEDULE", "5 parsecs"),
            ("SWITCHBOARD_WEBHOOK_RETRY_SCHEDULE", "48h"),
            ("SWITCHBOARD_WEBHOOK_TIMEOUT_SECS", "0"),
            ("SWITCHBOARD_WEBHOOK_DISABLE_AFTER_HOURS", "10000"),
        ] {
            let (named, _, _) =
                invalid_variable(Config::load_from(None, env(&[(variable, value)])).unwrap_err());
            assert_eq!(named, variable);
        }
    }

    #[test]
    fn env_overrides_defaults() {
        let key = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
        let config = Config::load_from(
            None,
            env(&[
                ("SWITCHBOARD_DATABASE_URL", "postgres://sb:pw@localhost/sb"),
                ("SWITCHBOARD_DATABASE_SCHEMA_PREFIX", "t_42_"),
                ("SWITCHBOARD_NATS_URL", "nats://localhost:4222"),
                ("SWITCHBOARD_NATS_PREFIX", "T-42_"),
                ("SWITCHBOARD_NATS_REPLICAS", "3"),
                ("SWITCHBOARD_GRPC_ADDR", "0.0.0.0:6000"),
                ("SWITCHBOARD_HTTP_ADDR", "0.0.0.0:6001"),
                ("SWITCHBOARD_SERVICE_TOKEN", "12345"),
                ("SWITCHBOARD_LOG_FORMAT", "json"),
                ("SWITCHBOARD_LOG_FILTER", "debug,hyper=warn"),
                ("SWITCHBOARD_RELAY_POLL_MS", "250"),
                ("SWITCHBOARD_SHUTDOWN_GRACE_SECS", "0"),
                ("SWITCHBOARD_ENCRYPTION_KEY", &key),
                ("SWITCHBOARD_OTLP_ENDPOINT", ""),
                ("SWITCHBOARD_SOMETHING_ELSE", "ignored"),
                ("OTHER_NATS_REPLICAS", "9"),
            ]),
        )
        .expect("valid env");
        assert_eq!(
            config.database_url.as_deref(),
            Some("postgres://sb:pw@localhost/sb")
        );
        assert_eq!(config.database_schema_prefix, "t_42_");
        assert_eq!(config.nats_url.as_deref(), Some("nats://localhost:4222"));
        assert_eq!(config.nats_prefix, "T-42_");
        assert_eq!(config.nats_replicas, 3);
        assert_eq!(config.grpc_addr, "0.0.0.0:6000".parse().unwrap());
        assert_eq!(config.http_addr, "0.0.0.0:6001".parse().unwrap());
        // Numeric-looking strings stay strings where a string is expected.
        assert_eq!(config.service_token.as_deref(), Some("12345"));
        assert_eq!(config.log_format, LogFormat::Json);
        assert_eq!(config.log_filter, "debug,hyper=warn");
        assert_eq!(config.relay_poll_ms, 250);
        assert_eq!(config.shutdown_grace_secs, 0);
        assert_eq!(config.encryption_key.as_deref(), Some(key.as_str()));
        assert_eq!(config.otlp_endpoint, None);
    }

    #[test]
    fn file_then_env_precedence() {
        let file = TempToml::new(
            "precedence",
            r#"
                nats_replicas = 2
                relay_poll_ms = 500
                log_format = "json"
                otlp_endpoint = "http://collector:4317"
            "#,
        );
        let config = Config::load_from(
            Some(&file.0),
            env(&[
                ("SWITCHBOARD_RELAY_POLL_MS", "50"),
                ("SWITCHBOARD_OTLP_ENDPOINT", ""),
            ]),
        )
        .expect("valid layers");
        // From the file, not overridden.
        assert_eq!(config.nats_replicas, 2);
        assert_eq!(config.log_format, LogFormat::Json);
        // The environment wins over the file.
        assert_eq!(config.relay_poll_ms, 50);
        // An empty variable unsets what the file set.
        assert_eq!(config.otlp_endpoint, None);
        // Untouched by both: default.
        assert_eq!(config.shutdown_grace_secs, 20);
    }

    #[test]
    fn missing_file_is_an_error() {
        let path = std::env::temp_dir().join("switchboard-runtime-does-not-exist.toml");
        let error = Config::load_from(Some(&path), Vec::new()).unwrap_err();
        assert!(matches!(error, ConfigError::File { .. }), "{error:?}");
    }

    #[test]
    fn unparsable_file_names_the_file() {
        let file = TempToml::new("broken", "nats_replicas = [");
        let error = Config::load_from(Some(&file.0), Vec::new()).unwrap_err();
        let message = error.to_string();
        assert!(matches!(error, ConfigError::File { .. }), "{message}");
        assert!(message.contains("broken"), "{message}");
    }

    #[test]
    fn out_of_range_value_names_variable_and_value() {
        let error =
            Config::load_from(None, env(&[("SWITCHBOARD_NATS_REPLICAS", "9")])).unwrap_err();
        assert_eq!(
            error.to_string(),
            "SWITCHBOARD_NATS_REPLICAS=9: must be between 1 and 5"
        );
    }

    #[test]
    fn wrong_type_names_variable_and_value() {
        let error =
            Config::load_from(None, env(&[("SWITCHBOARD_NATS_REPLICAS", "three")])).unwrap_err();
        let (variable, value, _) = invalid_variable(error);
        assert_eq!(variable, "SWITCHBOARD_NATS_REPLICAS");
        assert_eq!(value, "three");
    }

    #[test]
    fn unparsable_address_names_variable_and_value() {
        let error =
            Config::load_from(None, env(&[("SWITCHBOARD_GRPC_ADDR", "localhost:x")])).unwrap_err();
        let message = error.to_string();
        assert!(
            message.starts_with("SWITCHBOARD_GRPC_ADDR=localhost:x: "),
            "{message}"
        );
    }

    #[test]
    fn wrong_type_in_file_names_variable_and_file() {
        let file = TempToml::new("badtype", "relay_poll_ms = \"soon\"");
        let error = Config::load_from(Some(&file.0), Vec::new()).unwrap_err();
        let message = error.to_string();
        assert!(
            message.starts_with("SWITCHBOARD_RELAY_POLL_MS=soon: "),
            "{message}"
        );
        assert!(message.contains("badtype"), "{message}");
    }

    #[test]
    fn bad_database_url_is_rejected_without_leaking_password() {
        let error = Config::load_from(
            None,
            env(&[("SWITCHBOARD_DATABASE_URL", "mysql://root:hunter2@db/sb")]),
        )
        .unwrap_err();
        let message = error.to_string();
        assert_eq!(
            message,
            "SWITCHBOARD_DATABASE_URL=mysql://root:***@db/sb: \
             must start with postgres:// or postgresql://"
        );
    }

    #[test]
    fn unknown_log_format_names_variable() {
        let error = Config::load_from(None, env(&[("SWITCHBOARD_LOG_FORMAT", "xml")])).unwrap_err();
        let (variable, value, reason) = invalid_variable(error);
        assert_eq!(variable, "SWITCHBOARD_LOG_FORMAT");
        assert_eq!(value, "xml");
        assert!(reason.contains("text"), "{reason}");
    }

    #[test]
    fn encryption_key_must_be_32_bytes_and_is_redacted() {
        let short = base64::engine::general_purpose::STANDARD.encode([1u8; 16]);
        let error =
            Config::load_from(None, env(&[("SWITCHBOARD_ENCRYPTION_KEY", &short)])).unwrap_err();
        let message = error.to_string();
        assert!(
            message.starts_with("SWITCHBOARD_ENCRYPTION_KEY=<redacted>: "),
            "{message}"
        );
        assert!(!message.contains(&short), "{message}");

        let error = Config::load_from(None, env(&[("SWITCHBOARD_ENCRYPTION_KEY", "not base64!")]))
            .unwrap_err();
        assert!(error.to_string().contains("base64"), "{error}");
    }

    #[test]
    fn other_ranges_are_checked() {
        for (variable, value) in [
            ("SWITCHBOARD_RELAY_POLL_MS", "0"),
            ("SWITCHBOARD_RELAY_POLL_MS", "60001"),
            ("SWITCHBOARD_SHUTDOWN_GRACE_SECS", "601"),
            ("SWITCHBOARD_NATS_REPLICAS", "0"),
            ("SWITCHBOARD_NATS_PREFIX", "a.b"),
            ("SWITCHBOARD_DATABASE_SCHEMA_PREFIX", "Tenant"),
            ("SWITCHBOARD_NATS_URL", "http://nats:4222"),
            ("SWITCHBOARD_OTLP_ENDPOINT", "otel:4317"),
            ("SWITCHBOARD_LOG_FILTER", "=[{"),
            ("SWITCHBOARD_HTTP_ADDR", "127.0.0.1:50051"),
        ] {
            let error = Config::load_from(None, env(&[(variable, value)]))
                .expect_err(&format!("{variable}={value} should be rejected"));
            let (got, got_value, _) = invalid_variable(error);
            assert_eq!(got, variable);
            assert_eq!(got_value, value);
        }
    }

    #[test]
    fn debug_redacts_secrets() {
        let config = Config {
            database_url: Some("postgres://sb:hunter2@db/sb".to_owned()),
            service_token: Some("tok-secret".to_owned()),
            ..Config::default()
        };
        let debug = format!("{config:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(!debug.contains("tok-secret"), "{debug}");
        assert!(debug.contains("postgres://sb:***@db/sb"), "{debug}");
    }

    #[test]
    fn redact_url_handles_urls_without_credentials() {
        assert_eq!(redact_url("postgres://db/sb"), "postgres://db/sb");
        assert_eq!(redact_url("nats://u@h:4222"), "nats://u:***@h:4222");
        assert_eq!(redact_url("not a url"), "not a url");
    }

    #[test]
    fn outbound_allow_ranges_are_checked() {
        let var = |v: &str| vec![("SWITCHBOARD_OUTBOUND_ALLOW".to_owned(), v.to_owned())];
        let err = Config::load_from(None, var("10.0.0.0/8, nope")).unwrap_err();
        assert!(
            err.to_string().contains("SWITCHBOARD_OUTBOUND_ALLOW"),
            "{err}"
        );
        let ok = Config::load_from(None, var("10.0.0.0/8, ::1")).unwrap();
        assert_eq!(ok.outbound_allow_ranges(), vec!["10.0.0.0/8", "::1"]);
    }
}
