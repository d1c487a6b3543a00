//! Service names. A service's Postgres schema, SQLite file, relay and `--services` entry
//! are all named after it.

pub const CONVERSATIONS: &str = "conversations";
pub const ACTIONS: &str = "actions";
pub const CONNEXEASE: &str = "connexease";
pub const WEBHOOKS: &str = "webhooks";
pub const FLOWS: &str = "flows";
pub const GATEWAY: &str = "gateway";
pub const INSIGHTS: &str = "insights";
