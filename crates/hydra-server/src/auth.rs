//! Bearer tokens: generation, hashing, constant-time checks.
//!
//! Tokens are never stored or logged in the clear: the server keeps SHA-256 digests and compares
//! digests in constant time (`hydra_proxy::token`, shared with the agent).

use axum::http::HeaderMap;
use rand::RngCore;

use crate::error::ApiError;

pub use hydra_proxy::token::digests_equal;

/// The SHA-256 digest of a token, hex-encoded, as stored.
pub fn hash_token(token: &str) -> String {
    hydra_proxy::token::digest_hex(token)
}

/// A new random token with a readable prefix (`hya_` admin, `hyn_` node): 256 bits of entropy.
pub fn generate_token(prefix: &str) -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("{prefix}{}", hex::encode(bytes))
}

/// The bearer token of a request, or 401.
pub fn bearer(headers: &HeaderMap) -> Result<&str, ApiError> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)
        .ok_or_else(|| ApiError::unauthorized("missing Authorization: Bearer <token> header"))?;
    let text = value
        .to_str()
        .map_err(|_| ApiError::unauthorized("Authorization header is not text"))?;
    text.strip_prefix("Bearer ")
        .map(str::trim)
        .filter(|token| !token.is_empty())
        .ok_or_else(|| ApiError::unauthorized("Authorization header must be: Bearer <token>"))
}

/// Who a request is from, once its token is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// The admin token.
    Admin,
    /// A node's own token.
    Node(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_prefixed_and_hash_stably() {
        let a = generate_token("hyn_");
        let b = generate_token("hyn_");
        assert_ne!(a, b);
        assert!(a.starts_with("hyn_") && a.len() == 4 + 64);
        // FIPS 180-2's test vector: the stored digest is plain SHA-256, hex-encoded.
        assert_eq!(
            hash_token("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_ne!(hash_token(&a), hash_token(&b));
        assert!(digests_equal(&hash_token(&a), &hash_token(&a.clone())));
        assert!(!digests_equal(&hash_token(&a), &hash_token(&b)));
        assert!(!digests_equal("abc", "abcd"));
    }
}
