//! Bearer tokens in comparison: the SHA-256 digest a token is kept as and a constant-time check.
//! The one home for the server's admin and node tokens and the agent's session-API tokens, so a
//! token is never compared in the clear or with an early exit.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The SHA-256 digest of a token, hex-encoded (what the server stores).
pub fn digest_hex(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Whether two digests are equal, in time independent of where they differ.
pub fn digests_equal(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// Whether `token`'s digest is one of `accepted`; every candidate is compared, so the time
/// says nothing about which matched.
pub fn matches_any(token: &str, accepted: &[String]) -> bool {
    let given = digest_hex(token);
    accepted.iter().fold(false, |matched, candidate| {
        digests_equal(candidate, &given) | matched
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_compare_and_match() {
        let accepted = vec![digest_hex("hyk_agent"), digest_hex("operator")];
        assert!(matches_any("hyk_agent", &accepted));
        assert!(matches_any("operator", &accepted));
        assert!(!matches_any("nope", &accepted));
        assert!(!matches_any("nope", &[]));
        assert_eq!(
            digest_hex("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(digests_equal(&digest_hex("a"), &digest_hex("a")));
        assert!(!digests_equal("abc", "abcd"));
    }
}
