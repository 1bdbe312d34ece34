//! Sealing of the secrets the server must keep readable: a worker agent's per-start key.
//!
//! Node and admin tokens are stored as SHA-256 digests because the server only ever checks them.
//! An agent key is the opposite: the server presents it to the agent, so a digest would be
//! useless. It is stored sealed instead: AES-256-GCM-SIV (aws-lc-rs, already built for rustls)
//! under a key derived with HKDF-SHA256 from the admin token, with the worker id as associated
//! data. A copy of the database alone (a backup, a PostgreSQL dump, a read-only role) therefore
//! yields no key that opens an agent; the server, which holds the admin token, can open it at
//! start. When the admin token changes, stored keys no longer open: those workers are placed
//! again after their next report, as before this store existed.

use aws_lc_rs::aead::{AES_256_GCM_SIV, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::hkdf::{HKDF_SHA256, Salt};
use rand::RngCore;

/// Domain separation of the derived key (changing it makes every stored key unreadable).
const SALT: &[u8] = b"hydra/agent-key-seal";
/// Prefix of the sealed text, naming the format.
const FORMAT: &str = "v1.";

/// Seals and opens agent keys; derived from the admin token.
pub struct Sealer {
    key: LessSafeKey,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("Sealer")
    }
}

/// Why a sealed value cannot be opened (no detail: it would help nobody but a forger).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the sealed value cannot be opened with this server's admin token")]
pub struct Unopenable;

impl Sealer {
    /// The sealer of a server whose admin token is `admin_token`.
    pub fn from_admin_token(admin_token: &str) -> Sealer {
        let pseudo_random = Salt::new(HKDF_SHA256, SALT).extract(admin_token.as_bytes());
        let okm = pseudo_random
            .expand(&[b"agent_key"], &AES_256_GCM_SIV)
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        Sealer {
            key: LessSafeKey::new(UnboundKey::from(okm)),
        }
    }

    /// `secret` sealed and bound to `owner` (it opens only with the same owner): `v1.` then
    /// the hex of the random nonce, the ciphertext and the tag.
    pub fn seal(&self, owner: &str, secret: &str) -> String {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        let mut sealed = secret.as_bytes().to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(owner.as_bytes()),
                &mut sealed,
            )
            .expect("a short secret fits in one AES-GCM-SIV message");
        format!("{FORMAT}{}{}", hex::encode(nonce), hex::encode(sealed))
    }

    /// The secret inside `sealed`, if it was sealed for `owner` with this key.
    pub fn open(&self, owner: &str, sealed: &str) -> Result<String, Unopenable> {
        let bytes = sealed
            .strip_prefix(FORMAT)
            .and_then(|text| hex::decode(text).ok())
            .ok_or(Unopenable)?;
        if bytes.len() < NONCE_LEN {
            return Err(Unopenable);
        }
        let (nonce, rest) = bytes.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| Unopenable)?;
        let mut in_out = rest.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(owner.as_bytes()), &mut in_out)
            .map_err(|_| Unopenable)?;
        String::from_utf8(plain.to_vec()).map_err(|_| Unopenable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_key_opens_only_with_the_same_admin_token_and_owner() {
        let sealer = Sealer::from_admin_token("hya_admin");
        let sealed = sealer.seal("w-1", "hyk_0123456789abcdef");
        assert!(sealed.starts_with("v1."));
        assert!(!sealed.contains("0123456789abcdef"), "{sealed}");
        assert_eq!(
            sealer.open("w-1", &sealed).as_deref(),
            Ok("hyk_0123456789abcdef")
        );
        assert_eq!(
            sealer.open("w-2", &sealed),
            Err(Unopenable),
            "bound to its worker"
        );
        let other = Sealer::from_admin_token("hya_other");
        assert_eq!(
            other.open("w-1", &sealed),
            Err(Unopenable),
            "bound to the admin token"
        );
        assert_ne!(
            sealed,
            sealer.seal("w-1", "hyk_0123456789abcdef"),
            "fresh nonce each time"
        );
    }

    #[test]
    fn damaged_or_foreign_text_does_not_open() {
        let sealer = Sealer::from_admin_token("hya_admin");
        let sealed = sealer.seal("w-1", "hyk_key");
        let mut flipped = sealed.clone().into_bytes();
        let last = flipped.len() - 1;
        flipped[last] = if flipped[last] == b'0' { b'1' } else { b'0' };
        let flipped = String::from_utf8(flipped).unwrap();
        for text in [
            "",
            "v1.",
            "v1.zz",
            "hyk_key",
            &sealed[..sealed.len() - 2],
            &flipped,
        ] {
            assert_eq!(sealer.open("w-1", text), Err(Unopenable), "{text:?}");
        }
    }
}
