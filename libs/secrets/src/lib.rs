//! Secrets at rest: action credentials, Connexease tokens, webhook secrets and secure
//! metadata are sealed with AES-256-GCM under a key from the operator's environment, and
//! only ever opened where they are used.
//!
//! A sealed secret is bound to its owner through the associated data (for example
//! `ws_1/action/act_2/credential`), so a ciphertext copied into another workspace or
//! record does not open. It names the key that sealed it, so keys can be rotated: the
//! keyring seals with the newest key and opens with any it still holds.
//!
//! Layout: `0x01 | key id (4 bytes) | nonce (12 bytes) | ciphertext and tag`.
#![forbid(unsafe_code)]

use std::fmt;

use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use sha2::{Digest, Sha256};
pub use zeroize::Zeroizing;

const FORMAT: u8 = 1;
const KEY_ID_LEN: usize = 4;
const NONCE_LEN: usize = 12;

/// Why a secret could not be sealed or opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("SB-SEC-0001: the encryption key must be base64 of exactly 32 bytes")]
    InvalidKey,
    #[error("SB-SEC-0002: sealed with key {key_id}, which this keyring does not hold")]
    UnknownKey { key_id: String },
    #[error("SB-SEC-0003: the sealed secret is damaged, or belongs to another owner")]
    Tampered,
    #[error("SB-SEC-0004: not a sealed secret")]
    Malformed,
}

struct Key {
    id: [u8; KEY_ID_LEN],
    cipher: Aes256Gcm,
}

/// The operator's keys: the first seals, all of them open.
pub struct Keyring {
    keys: Vec<Key>,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ids: Vec<String> = self.keys.iter().map(|k| hex(&k.id)).collect();
        f.debug_struct("Keyring").field("key_ids", &ids).finish()
    }
}

impl Keyring {
    /// A keyring from base64 keys, newest first (the one that seals).
    pub fn from_base64<S: AsRef<str>>(keys: &[S]) -> Result<Self, SecretError> {
        if keys.is_empty() {
            return Err(SecretError::InvalidKey);
        }
        let keys = keys
            .iter()
            .map(|k| {
                let bytes = Zeroizing::new(
                    STANDARD
                        .decode(k.as_ref().trim())
                        .map_err(|_| SecretError::InvalidKey)?,
                );
                Self::key(&bytes)
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { keys })
    }

    fn key(bytes: &[u8]) -> Result<Key, SecretError> {
        if bytes.len() != 32 {
            return Err(SecretError::InvalidKey);
        }
        let digest = Sha256::digest(bytes);
        let mut id = [0u8; KEY_ID_LEN];
        id.copy_from_slice(&digest[..KEY_ID_LEN]);
        Ok(Key {
            id,
            cipher: Aes256Gcm::new_from_slice(bytes).map_err(|_| SecretError::InvalidKey)?,
        })
    }

    /// Seals `plaintext` for `owner` with the newest key and a fresh random nonce.
    pub fn seal(&self, plaintext: &[u8], owner: &str) -> Vec<u8> {
        let key = &self.keys[0];
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let ciphertext = key
            .cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext,
                    aad: owner.as_bytes(),
                },
            )
            .unwrap_or_default();
        let mut out = Vec::with_capacity(1 + KEY_ID_LEN + NONCE_LEN + ciphertext.len());
        out.push(FORMAT);
        out.extend_from_slice(&key.id);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ciphertext);
        out
    }

    /// Opens a secret sealed for `owner`. The plaintext is wiped from memory when dropped.
    pub fn open(&self, sealed: &[u8], owner: &str) -> Result<Zeroizing<Vec<u8>>, SecretError> {
        if sealed.len() < 1 + KEY_ID_LEN + NONCE_LEN + 16 || sealed[0] != FORMAT {
            return Err(SecretError::Malformed);
        }
        let id = &sealed[1..1 + KEY_ID_LEN];
        let nonce: [u8; NONCE_LEN] = sealed[1 + KEY_ID_LEN..1 + KEY_ID_LEN + NONCE_LEN]
            .try_into()
            .map_err(|_| SecretError::Malformed)?;
        let nonce = Nonce::from(nonce);
        let ciphertext = &sealed[1 + KEY_ID_LEN + NONCE_LEN..];
        let key = self
            .keys
            .iter()
            .find(|k| k.id == id)
            .ok_or_else(|| SecretError::UnknownKey { key_id: hex(id) })?;
        key.cipher
            .decrypt(
                &nonce,
                Payload {
                    msg: ciphertext,
                    aad: owner.as_bytes(),
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| SecretError::Tampered)
    }

    /// Whether `sealed` was sealed with an older key and should be sealed again.
    pub fn needs_rotation(&self, sealed: &[u8]) -> bool {
        sealed.get(1..1 + KEY_ID_LEN) != Some(&self.keys[0].id[..])
    }

    /// Seals a string and returns it as base64, for text columns and JSON.
    pub fn seal_text(&self, plaintext: &str, owner: &str) -> String {
        STANDARD.encode(self.seal(plaintext.as_bytes(), owner))
    }

    /// Opens a secret sealed by [`Keyring::seal_text`].
    pub fn open_text(&self, sealed: &str, owner: &str) -> Result<Secret, SecretError> {
        let bytes = STANDARD
            .decode(sealed)
            .map_err(|_| SecretError::Malformed)?;
        let plain = self.open(&bytes, owner)?;
        String::from_utf8(plain.to_vec())
            .map(Secret::new)
            .map_err(|_| SecretError::Malformed)
    }
}

/// A secret in memory: its `Debug` and `Display` never show it, serializing it writes the
/// redaction mark, and it is wiped when dropped. Call [`Secret::expose`] where it is used.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Zeroizing<String>);

/// What a secret looks like in logs, events, traces and API answers.
pub const REDACTED: &str = "[redacted]";

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(Zeroizing::new(value.into()))
    }

    /// The value itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl serde::Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(REDACTED)
    }
}

/// Replaces every occurrence of each secret in `text` with the redaction mark: for
/// response bodies, error messages and logs that may echo a credential back.
pub fn redact(text: &str, secrets: &[&Secret]) -> String {
    let mut out = text.to_owned();
    for secret in secrets {
        // Very short values would redact half the text; they are refused as credentials
        // elsewhere, and here they are left alone.
        if secret.expose().len() >= 4 {
            out = out.replace(secret.expose(), REDACTED);
        }
    }
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> String {
        STANDARD.encode([byte; 32])
    }

    #[test]
    fn seals_and_opens_for_the_same_owner_only() {
        let ring = Keyring::from_base64(&[key(1)]).unwrap();
        let sealed = ring.seal(b"sk_live_123", "ws_1/action/act_1/credential");
        assert!(
            !sealed.windows(11).any(|w| w == b"sk_live_123"),
            "ciphertext hides it"
        );
        assert_eq!(
            &*ring.open(&sealed, "ws_1/action/act_1/credential").unwrap(),
            b"sk_live_123"
        );
        assert_eq!(
            ring.open(&sealed, "ws_2/action/act_1/credential"),
            Err(SecretError::Tampered)
        );
        let mut flipped = sealed.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert_eq!(
            ring.open(&flipped, "ws_1/action/act_1/credential"),
            Err(SecretError::Tampered)
        );
        assert_eq!(ring.open(b"plain", "x"), Err(SecretError::Malformed));
        assert_ne!(
            ring.seal(b"same", "o"),
            ring.seal(b"same", "o"),
            "fresh nonce each time"
        );
    }

    #[test]
    fn keys_rotate() {
        let old = Keyring::from_base64(&[key(1)]).unwrap();
        let sealed = old.seal(b"token", "owner");
        let rotated = Keyring::from_base64(&[key(2), key(1)]).unwrap();
        assert_eq!(&*rotated.open(&sealed, "owner").unwrap(), b"token");
        assert!(rotated.needs_rotation(&sealed));
        assert!(!rotated.needs_rotation(&rotated.seal(b"token", "owner")));
        let new_only = Keyring::from_base64(&[key(2)]).unwrap();
        assert!(matches!(
            new_only.open(&sealed, "owner"),
            Err(SecretError::UnknownKey { .. })
        ));
    }

    #[test]
    fn bad_keys_are_refused() {
        assert_eq!(
            Keyring::from_base64(&["c2hvcnQ="]).unwrap_err(),
            SecretError::InvalidKey
        );
        assert_eq!(
            Keyring::from_base64(&["not base64!"]).unwrap_err(),
            SecretError::InvalidKey
        );
        assert_eq!(
            Keyring::from_base64::<&str>(&[]).unwrap_err(),
            SecretError::InvalidKey
        );
    }

    #[test]
    fn secrets_never_print() {
        let ring = Keyring::from_base64(&[key(3)]).unwrap();
        let secret = ring
            .open_text(&ring.seal_text("hunter2-password", "o"), "o")
            .unwrap();
        assert_eq!(secret.expose(), "hunter2-password");
        assert_eq!(format!("{secret} {secret:?}"), "[redacted] [redacted]");
        assert_eq!(serde_json::to_string(&secret).unwrap(), "\"[redacted]\"");
        assert!(!format!("{ring:?}").contains(&key(3)));
        assert_eq!(
            redact("auth failed for hunter2-password!", &[&secret]),
            "auth failed for [redacted]!"
        );
    }
}
