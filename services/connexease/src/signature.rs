//! Connexease webhook signatures: `X-Connexease-Webhook-Sign` carries an HMAC-SHA256 under
//! the connection's webhook secret. Connexease's developer documentation
//! (help.connexease.com/dev, "Webhooks") shows the signature base64-encoded, so that is
//! what we expect and what the simulator sends; lowercase hex is accepted as a fallback.
//! What exactly is signed is not fully documented: the raw body is assumed, and each
//! connection may say otherwise ([`crate::hooks::signed_input`]) until Connexease
//! confirms it.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE, URL_SAFE_NO_PAD};
use hmac::{Hmac, Mac};
use sha2::Sha256;

pub const HEADER: &str = "x-connexease-webhook-sign";

type HmacSha256 = Hmac<Sha256>;

/// The body's signature under `secret`, base64 as Connexease's documentation shows it.
pub fn sign(secret: &str, body: &[u8]) -> String {
    STANDARD.encode(mac(secret, body).finalize().into_bytes())
}

/// Whether `signature` is the body's signature under `secret`: base64 (standard or
/// URL-safe, padded or not) or hex, an optional `sha256=` prefix, compared in constant
/// time.
pub fn verify(secret: &str, body: &[u8], signature: &str) -> bool {
    let signature = signature.trim();
    let signature = signature.strip_prefix("sha256=").unwrap_or(signature);
    let Some(expected) = decode(signature) else {
        return false;
    };
    mac(secret, body).verify_slice(&expected).is_ok()
}

fn mac(secret: &str, body: &[u8]) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(secret.as_bytes()).expect("HMAC takes any key");
    mac.update(body);
    mac
}

/// The 32 bytes a signature spells, in base64 or (the fallback) hex.
fn decode(signature: &str) -> Option<Vec<u8>> {
    let is_digest = |bytes: &Vec<u8>| bytes.len() == 32;
    if signature.len() == 64
        && let Ok(bytes) = hex::decode(signature)
    {
        return Some(bytes);
    }
    [&STANDARD, &URL_SAFE, &URL_SAFE_NO_PAD]
        .iter()
        .find_map(|engine| engine.decode(signature).ok().filter(is_digest))
        .or_else(|| {
            base64::engine::general_purpose::STANDARD_NO_PAD
                .decode(signature)
                .ok()
                .filter(is_digest)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_verify_only_with_the_secret_and_the_same_body() {
        let signature = sign("s3cret", b"{\"id\":1}");
        assert_eq!(signature.len(), 44, "base64 of 32 bytes: {signature}");
        assert!(verify("s3cret", b"{\"id\":1}", &signature));
        assert!(!verify("other", b"{\"id\":1}", &signature));
        assert!(!verify("s3cret", b"{\"id\":2}", &signature));
        assert!(!verify("s3cret", b"{\"id\":1}", "not a signature"));
        assert!(!verify("s3cret", b"{\"id\":1}", ""));
    }

    #[test]
    fn base64_in_every_spelling_and_hex_are_accepted() {
        let body = b"{\"hook\":\"message.created\"}";
        let digest = mac("s3cret", body).finalize().into_bytes();
        for spelled in [
            STANDARD.encode(digest),
            URL_SAFE.encode(digest),
            URL_SAFE_NO_PAD.encode(digest),
            base64::engine::general_purpose::STANDARD_NO_PAD.encode(digest),
            hex::encode(digest),
            format!("sha256={}", STANDARD.encode(digest)),
            format!(" {} ", hex::encode(digest)),
        ] {
            assert!(verify("s3cret", body, &spelled), "{spelled}");
        }
        // The digest of another body, in any spelling, is refused.
        let other = mac("s3cret", b"{}").finalize().into_bytes();
        assert!(!verify("s3cret", body, &STANDARD.encode(other)));
        assert!(!verify("s3cret", body, &hex::encode(other)));
        // So is a truncated one.
        assert!(!verify("s3cret", body, &STANDARD.encode(&digest[..16])));
    }
}
