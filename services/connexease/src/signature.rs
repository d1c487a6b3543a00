//! Connexease webhook signatures: `X-Connexease-Webhook-Sign` carries the lowercase hex
//! HMAC-SHA256 of the raw request body under the connection's webhook secret.

use hmac::{Hmac, Mac};
use sha2::Sha256;

pub const HEADER: &str = "x-connexease-webhook-sign";

/// How far a webhook's `created_at` may be from now before it is refused as stale (or as
/// from the future): replayed deliveries older than this are not trusted.
pub const TOLERANCE_SECS: i64 = 5 * 60;

type HmacSha256 = Hmac<Sha256>;

pub fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac = HmacSha256::new_from_slice(secret.as_bytes()).expect("HMAC takes any key");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// Whether `signature` is the body's signature under `secret`, compared in constant time.
pub fn verify(secret: &str, body: &[u8], signature: &str) -> bool {
    let Ok(expected) = hex::decode(signature.trim()) else {
        return false;
    };
    let mut mac = HmacSha256::new_from_slice(secret.as_bytes()).expect("HMAC takes any key");
    mac.update(body);
    mac.verify_slice(&expected).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_verify_only_with_the_secret_and_the_same_body() {
        let signature = sign("s3cret", b"{\"id\":1}");
        assert_eq!(signature.len(), 64);
        assert!(verify("s3cret", b"{\"id\":1}", &signature));
        assert!(!verify("other", b"{\"id\":1}", &signature));
        assert!(!verify("s3cret", b"{\"id\":2}", &signature));
        assert!(!verify("s3cret", b"{\"id\":1}", "not hex"));
        assert!(!verify("s3cret", b"{\"id\":1}", ""));
    }
}
