//! API keys, pure: what a key looks like, how a presented key is checked, what a key may
//! do, and the key ring of a workspace (one stream, so creating, revoking and rotating
//! keys are atomic), with `decide` and `apply`. No clock, no randomness: the handler passes
//! the time and the random bytes in.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use prost::Message as _;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use switchboard_eventlog::{EventLogError, RecordedEvent};
use switchboard_proto::gateway::v1::{ApiKey, ApiKeyCreated, ApiKeyRevoked, ApiKeyRotated};

pub use switchboard_contract::event_types::api_keys as event_types;

/// Every key starts with this, so secret scanners and people recognise one.
pub const KEY_PREFIX: &str = "sbk_live_";
/// Random bytes of a key's public lookup part (hex in the key).
pub const LOOKUP_BYTES: usize = 8;
/// Random bytes of a key's secret part (base64url in the key).
pub const SECRET_BYTES: usize = 32;
/// Bounds.
pub mod limits {
    /// Live (not revoked) keys of one workspace.
    pub const KEYS: usize = 100;
    pub const NAME_BYTES: usize = 100;
    pub const SCOPES: usize = 20;
    /// How long a rotated key keeps working, at most (7 days).
    pub const MAX_OVERLAP_SECS: u64 = 7 * 24 * 3600;
}

/// The resources a scope may name (`conversations:read`); `read`, `write` and `admin`
/// cover them all, and only `admin` covers API keys.
pub const RESOURCES: &[&str] = &[
    "conversations",
    "collections",
    "flows",
    "assistants",
    "actions",
    "webhooks",
    "insights",
];

/// The scopes a key gets when none are asked for.
pub const DEFAULT_SCOPES: &[&str] = &["read", "write"];

/// What a request does to a resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

/// A key as issued: the key itself (shown once, never stored), and what is stored.
#[derive(Clone, PartialEq, Eq)]
pub struct IssuedKey {
    pub key: String,
    pub prefix: String,
    pub hash: Vec<u8>,
}

impl std::fmt::Debug for IssuedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedKey")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// A key made of the caller's random bytes: `sbk_live_<16 hex>_<43 base64url>`.
pub fn issue(lookup: [u8; LOOKUP_BYTES], secret: [u8; SECRET_BYTES]) -> IssuedKey {
    let prefix = format!("{KEY_PREFIX}{}", hex::encode(lookup));
    let key = format!("{prefix}_{}", URL_SAFE_NO_PAD.encode(secret));
    IssuedKey {
        hash: hash(&key),
        prefix,
        key,
    }
}

/// What is stored of a key: SHA-256 of all of it. A key carries 256 random bits, so a fast
/// hash is as safe as a slow one and costs nothing per request.
pub fn hash(key: &str) -> Vec<u8> {
    Sha256::digest(key.as_bytes()).to_vec()
}

/// The public prefix of a presented key, when it has a key's shape.
pub fn prefix_of(key: &str) -> Option<&str> {
    let rest = key.strip_prefix(KEY_PREFIX)?;
    let (lookup, secret) = rest.split_once('_')?;
    let well_formed = lookup.len() == 2 * LOOKUP_BYTES
        && lookup
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        && secret.len() == 43
        && secret
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    well_formed.then(|| &key[..KEY_PREFIX.len() + lookup.len()])
}

/// Whether `key` is the key whose hash is `stored`, in time that does not depend on where
/// they differ.
pub fn verifies(stored: &[u8], key: &str) -> bool {
    bool::from(hash(key).ct_eq(stored))
}

/// Whether `scope` is one a key may have.
pub fn valid_scope(scope: &str) -> bool {
    match scope.split_once(':') {
        None => matches!(scope, "read" | "write" | "admin"),
        Some((resource, access)) => {
            RESOURCES.contains(&resource) && matches!(access, "read" | "write")
        }
    }
}

/// Whether `scopes` allow `access` to `resource`. `write` implies `read`; `admin` allows
/// everything, and is the only scope that manages API keys.
pub fn allows(scopes: &[String], resource: &str, access: Access) -> bool {
    scopes.iter().any(|scope| {
        if scope == "admin" {
            return true;
        }
        if resource == "api_keys" {
            return false;
        }
        let (res, level) = match scope.split_once(':') {
            Some((res, level)) if res == resource => (res, level),
            Some(_) => return false,
            None => (resource, scope.as_str()),
        };
        debug_assert_eq!(res, resource);
        level == "write" || (level == "read" && access == Access::Read)
    })
}

/// When a key stops working, if ever: its expiry, or its revocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyState {
    pub key: ApiKey,
    pub revoked_at: i64,
    /// The key that replaced this one, after a rotation.
    pub rotated_to: String,
}

impl KeyState {
    /// Whether the key is refused at `now` (revoked, or past its expiry).
    pub fn refused_at(&self, now: i64) -> bool {
        self.revoked_at != 0 || (self.key.expires_at != 0 && self.key.expires_at <= now)
    }
}

/// A workspace's keys.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KeyRing {
    pub keys: BTreeMap<String, KeyState>,
}

impl KeyRing {
    /// Keys not revoked and not expired at `now`.
    pub fn live(&self, now: i64) -> usize {
        self.keys.values().filter(|k| !k.refused_at(now)).count()
    }
}

/// One invalid field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    pub field: String,
    pub description: String,
}

/// Why a command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    #[error("invalid request: {}", .0.iter().map(|v| format!("{}: {}", v.field, v.description)).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<FieldViolation>),
    #[error("no such API key")]
    NotFound,
    #[error("the API key is revoked")]
    Revoked,
    #[error("the workspace has {0} live API keys, the most it may")]
    TooMany(usize),
    #[error("the API key was already rotated: rotate its successor, {0}")]
    Rotated(String),
}

/// What a caller asks of a workspace's key ring.
#[derive(Debug, Clone)]
pub enum Command {
    Create {
        id: String,
        name: String,
        scopes: Vec<String>,
        /// 0: never.
        expires_at: i64,
        issued: IssuedKey,
    },
    Revoke {
        id: String,
    },
    /// Replaces `id` with `successor_id` (same name, scopes and expiry); `id` keeps
    /// working for `overlap_secs`.
    Rotate {
        id: String,
        successor_id: String,
        overlap_secs: u64,
        issued: IssuedKey,
    },
}

/// An event of the key ring.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Created(ApiKeyCreated),
    Revoked(ApiKeyRevoked),
    Rotated(ApiKeyRotated),
}

impl Event {
    pub fn event_type(&self) -> &'static str {
        match self {
            Self::Created(_) => event_types::CREATED,
            Self::Revoked(_) => event_types::REVOKED,
            Self::Rotated(_) => event_types::ROTATED,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        match self {
            Self::Created(e) => e.encode_to_vec(),
            Self::Revoked(e) => e.encode_to_vec(),
            Self::Rotated(e) => e.encode_to_vec(),
        }
    }

    /// The event a stored one carries; `None` for a type this version does not know.
    pub fn decode(event: &RecordedEvent) -> Result<Option<Self>, EventLogError> {
        Ok(Some(match event.event_type.as_str() {
            event_types::CREATED => Self::Created(event.decode()?),
            event_types::REVOKED => Self::Revoked(event.decode()?),
            event_types::ROTATED => Self::Rotated(event.decode()?),
            _ => return Ok(None),
        }))
    }
}

/// Who acts, and when.
#[derive(Debug, Clone)]
pub struct Actor {
    pub workspace_id: String,
    /// `cli` or `api_key:<id>`.
    pub by: String,
    pub now: i64,
}

/// What `command` changes in `ring`.
pub fn decide(ring: &KeyRing, command: &Command, actor: &Actor) -> Result<Vec<Event>, DomainError> {
    match command {
        Command::Create {
            id,
            name,
            scopes,
            expires_at,
            issued,
        } => {
            check_new_key(name, scopes, *expires_at, actor.now)?;
            if ring.live(actor.now) >= limits::KEYS {
                return Err(DomainError::TooMany(limits::KEYS));
            }
            Ok(vec![Event::Created(ApiKeyCreated {
                key: Some(new_key(id, name, scopes, *expires_at, issued, actor, "")),
            })])
        }
        Command::Revoke { id } => {
            let key = ring.keys.get(id).ok_or(DomainError::NotFound)?;
            if key.revoked_at != 0 {
                return Ok(Vec::new());
            }
            Ok(vec![Event::Revoked(ApiKeyRevoked {
                id: id.clone(),
                revoked_at: actor.now,
                revoked_by: actor.by.clone(),
            })])
        }
        Command::Rotate {
            id,
            successor_id,
            overlap_secs,
            issued,
        } => {
            let old = ring.keys.get(id).ok_or(DomainError::NotFound)?;
            if old.refused_at(actor.now) {
                return Err(DomainError::Revoked);
            }
            if !old.rotated_to.is_empty() {
                return Err(DomainError::Rotated(old.rotated_to.clone()));
            }
            if ring.live(actor.now) >= limits::KEYS {
                return Err(DomainError::TooMany(limits::KEYS));
            }
            if *overlap_secs > limits::MAX_OVERLAP_SECS {
                return Err(DomainError::Invalid(vec![FieldViolation {
                    field: "overlap_seconds".into(),
                    description: format!("at most {} (7 days)", limits::MAX_OVERLAP_SECS),
                }]));
            }
            let overlap_ends = actor.now + (*overlap_secs as i64) * 1_000_000;
            let expires_at = match old.key.expires_at {
                0 => overlap_ends,
                at => at.min(overlap_ends),
            };
            let successor = new_key(
                successor_id,
                &old.key.name,
                &old.key.scopes,
                old.key.expires_at,
                issued,
                actor,
                id,
            );
            Ok(vec![Event::Rotated(ApiKeyRotated {
                id: id.clone(),
                successor: Some(successor),
                expires_at,
            })])
        }
    }
}

fn new_key(
    id: &str,
    name: &str,
    scopes: &[String],
    expires_at: i64,
    issued: &IssuedKey,
    actor: &Actor,
    rotated_from: &str,
) -> ApiKey {
    ApiKey {
        id: id.to_owned(),
        workspace_id: actor.workspace_id.clone(),
        name: name.to_owned(),
        scopes: scopes.to_vec(),
        prefix: issued.prefix.clone(),
        secret_hash: issued.hash.clone(),
        created_at: actor.now,
        expires_at,
        created_by: actor.by.clone(),
        rotated_from: rotated_from.to_owned(),
    }
}

fn check_new_key(
    name: &str,
    scopes: &[String],
    expires_at: i64,
    now: i64,
) -> Result<(), DomainError> {
    let mut violations = Vec::new();
    let mut violation = |field: &str, description: String| {
        violations.push(FieldViolation {
            field: field.to_owned(),
            description,
        })
    };
    if name.trim().is_empty() {
        violation("name", "required".into());
    } else if name.len() > limits::NAME_BYTES {
        violation("name", format!("at most {} bytes", limits::NAME_BYTES));
    }
    if scopes.is_empty() {
        violation("scopes", "at least one scope".into());
    } else if scopes.len() > limits::SCOPES {
        violation("scopes", format!("at most {}", limits::SCOPES));
    }
    for (i, scope) in scopes.iter().enumerate() {
        if !valid_scope(scope) {
            violation(
                &format!("scopes[{i}]"),
                format!(
                    "`{scope}` is not a scope: read, write, admin, or <resource>:read|write \
                     with a resource of {}",
                    RESOURCES.join(", ")
                ),
            );
        }
    }
    if expires_at != 0 && expires_at <= now {
        violation("expires_at", "must be in the future".into());
    }
    if violations.is_empty() {
        Ok(())
    } else {
        Err(DomainError::Invalid(violations))
    }
}

/// Folds one event into the ring.
pub fn apply(ring: &mut KeyRing, event: &Event) {
    match event {
        Event::Created(created) => {
            if let Some(key) = &created.key {
                ring.keys.insert(
                    key.id.clone(),
                    KeyState {
                        key: key.clone(),
                        revoked_at: 0,
                        rotated_to: String::new(),
                    },
                );
            }
        }
        Event::Revoked(revoked) => {
            if let Some(key) = ring.keys.get_mut(&revoked.id) {
                key.revoked_at = revoked.revoked_at;
            }
        }
        Event::Rotated(rotated) => {
            let successor = rotated.successor.clone().unwrap_or_default();
            if let Some(old) = ring.keys.get_mut(&rotated.id) {
                old.key.expires_at = rotated.expires_at;
                old.rotated_to = successor.id.clone();
            }
            ring.keys.insert(
                successor.id.clone(),
                KeyState {
                    key: successor,
                    revoked_at: 0,
                    rotated_to: String::new(),
                },
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn actor(now: i64) -> Actor {
        Actor {
            workspace_id: "ws_1".into(),
            by: "cli".into(),
            now,
        }
    }

    fn create(id: &str, scopes: &[&str]) -> Command {
        Command::Create {
            id: id.into(),
            name: "reporting".into(),
            scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
            expires_at: 0,
            issued: issue([1; LOOKUP_BYTES], [2; SECRET_BYTES]),
        }
    }

    fn ring_after(commands: &[Command], now: i64) -> KeyRing {
        let mut ring = KeyRing::default();
        for command in commands {
            for event in decide(&ring, command, &actor(now)).unwrap() {
                apply(&mut ring, &event);
            }
        }
        ring
    }

    #[test]
    fn a_key_has_our_shape_and_only_its_hash_verifies_it() {
        let issued = issue([0xab; LOOKUP_BYTES], [7; SECRET_BYTES]);
        assert!(issued.key.starts_with("sbk_live_abababababababab_"));
        assert_eq!(issued.key.len(), KEY_PREFIX.len() + 16 + 1 + 43);
        assert_eq!(prefix_of(&issued.key), Some(issued.prefix.as_str()));
        assert!(verifies(&issued.hash, &issued.key));
        let mut other = issued.key.clone();
        other.pop();
        other.push('x');
        assert!(!verifies(&issued.hash, &other));
        assert!(!format!("{issued:?}").contains(&issued.key));
        for bad in [
            "",
            "sbk_live_",
            "sk_live_abababababababab_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
            "sbk_live_ABABABABABABABAB_BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc",
            "sbk_live_abababababababab_short",
        ] {
            assert_eq!(prefix_of(bad), None, "{bad}");
        }
    }

    #[test]
    fn scopes_grant_what_they_say_and_only_admin_manages_keys() {
        let s = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert!(allows(&s(&["read"]), "conversations", Access::Read));
        assert!(!allows(&s(&["read"]), "conversations", Access::Write));
        assert!(allows(&s(&["write"]), "flows", Access::Read));
        assert!(allows(
            &s(&["collections:write"]),
            "collections",
            Access::Write
        ));
        assert!(!allows(&s(&["collections:write"]), "flows", Access::Read));
        assert!(allows(&s(&["flows:read"]), "flows", Access::Read));
        assert!(!allows(&s(&["flows:read"]), "flows", Access::Write));
        assert!(!allows(&s(&["read", "write"]), "api_keys", Access::Read));
        assert!(allows(&s(&["admin"]), "api_keys", Access::Write));
        assert!(valid_scope("insights:read"));
        assert!(!valid_scope("api_keys:read"));
        assert!(!valid_scope("superuser"));
    }

    #[test]
    fn creating_checks_every_field_and_the_workspace_limit() {
        let bad = Command::Create {
            id: "key_1".into(),
            name: " ".into(),
            scopes: vec!["read".into(), "everything".into()],
            expires_at: 5,
            issued: issue([1; LOOKUP_BYTES], [2; SECRET_BYTES]),
        };
        let Err(DomainError::Invalid(violations)) = decide(&KeyRing::default(), &bad, &actor(10))
        else {
            panic!("accepted");
        };
        let fields: Vec<_> = violations.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(fields, ["name", "scopes[1]", "expires_at"]);

        let many: Vec<_> = (0..limits::KEYS)
            .map(|i| create(&format!("key_{i}"), &["read"]))
            .collect();
        let ring = ring_after(&many, 10);
        assert_eq!(
            decide(&ring, &create("key_x", &["read"]), &actor(10)),
            Err(DomainError::TooMany(limits::KEYS))
        );
    }

    #[test]
    fn revoking_is_final_and_idempotent() {
        let ring = ring_after(&[create("key_1", &["read"])], 10);
        let events = decide(&ring, &Command::Revoke { id: "key_1".into() }, &actor(20)).unwrap();
        let mut ring = ring;
        apply(&mut ring, &events[0]);
        assert!(ring.keys["key_1"].refused_at(20));
        assert!(
            decide(&ring, &Command::Revoke { id: "key_1".into() }, &actor(30))
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            decide(&ring, &Command::Revoke { id: "key_2".into() }, &actor(30)),
            Err(DomainError::NotFound)
        );
    }

    #[test]
    fn rotation_keeps_the_old_key_for_the_overlap_only() {
        let mut ring = ring_after(&[create("key_1", &["write"])], 0);
        let rotate = Command::Rotate {
            id: "key_1".into(),
            successor_id: "key_2".into(),
            overlap_secs: 60,
            issued: issue([3; LOOKUP_BYTES], [4; SECRET_BYTES]),
        };
        for event in decide(&ring, &rotate, &actor(1_000_000)).unwrap() {
            apply(&mut ring, &event);
        }
        let old = &ring.keys["key_1"];
        let new = &ring.keys["key_2"];
        assert_eq!(old.rotated_to, "key_2");
        assert_eq!(new.key.rotated_from, "key_1");
        assert_eq!(new.key.scopes, ["write"]);
        assert!(!old.refused_at(60_000_000));
        assert!(old.refused_at(61_000_000));
        assert!(!new.refused_at(61_000_000));
        assert_eq!(
            decide(&ring, &rotate, &actor(30_000_000)),
            Err(DomainError::Rotated("key_2".into())),
            "rotating twice would cut the successor's life to the first overlap"
        );
        assert_eq!(
            decide(&ring, &rotate, &actor(62_000_000)),
            Err(DomainError::Revoked)
        );
    }
}
