//! The mesh's sealed transport: every gossip datagram is sealed with ChaCha20-Poly1305 under the
//! cluster key, and a datagram that fails to open is dropped (and counted), never parsed.
//!
//! A datagram is `header ‖ ciphertext ‖ tag`; the header is authenticated as associated data:
//! `version (1) ‖ key id (4) ‖ sender (8) ‖ counter (8) ‖ sent at, unix ms (8) ‖ nonce (12)`.
//! Replays are refused twice over: a datagram sent more than [`MAX_AGE_MS`] away from the
//! receiver's clock is stale, and within that window each sender's counters pass a sliding
//! window (WireGuard's and IPsec's anti-replay bitmap), updated only after the seal opened, so
//! a forged datagram cannot move it.
//!
//! Rotation follows Serf's keyring: a new key is first installed beside the old one (accepted),
//! then made primary (used to seal), then the old one is removed. Keys are identified by the
//! first 4 bytes of their SHA-256, which is what `GET /api/v1/cluster` shows; a key is never
//! logged nor formatted by `Debug`.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use aws_lc_rs::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};

/// Format version of a sealed datagram.
const VERSION: u8 = 1;
/// Bytes of a cluster key.
pub const KEY_LEN: usize = 32;
/// Bytes of the header (authenticated, not encrypted).
pub const HEADER_LEN: usize = 1 + 4 + 8 + 8 + 8 + NONCE_LEN;
/// Bytes of the Poly1305 tag.
pub const TAG_LEN: usize = 16;
/// What sealing adds to a datagram; the mesh's packet size leaves room for it.
pub const OVERHEAD: usize = HEADER_LEN + TAG_LEN;
/// A datagram sent further than this from the receiver's clock is refused as stale (a replay
/// of an old capture, or a clock that needs fixing).
pub const MAX_AGE_MS: i64 = 60_000;
/// Senders whose replay window is kept at once; past it, datagrams from new senders are refused
/// until old windows age out (a bound on memory, far above any mesh's size).
pub const MAX_SENDERS: usize = 65_536;
/// Width of each sender's anti-replay window, in datagrams.
const WINDOW: u64 = 64;

/// A key's public name: the first 4 bytes of its SHA-256, in hex.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyId(pub [u8; 4]);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

/// One cluster key, ready to seal and open.
struct ClusterKey {
    id: KeyId,
    aead: LessSafeKey,
    /// Kept so the server can hand the keyring out in nodes' bundles; never logged.
    raw: [u8; KEY_LEN],
}

impl ClusterKey {
    fn new(bytes: &[u8; KEY_LEN]) -> ClusterKey {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes);
        let mut id = [0u8; 4];
        id.copy_from_slice(&digest.as_ref()[..4]);
        let unbound = UnboundKey::new(&CHACHA20_POLY1305, bytes).expect("a 32-byte key is valid");
        ClusterKey {
            id: KeyId(id),
            aead: LessSafeKey::new(unbound),
            raw: *bytes,
        }
    }
}

/// Why a keyring could not be built; the message never contains key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyringError {
    /// No key at all.
    #[error("the cluster keyring is empty")]
    Empty,
    /// A line is not 64 hex digits.
    #[error("cluster key on line {line} is not 64 hex digits (a 32-byte key)")]
    Malformed {
        /// 1-based line of the key file.
        line: usize,
    },
    /// The key file can be read by others.
    #[error("cluster key file {path} must not be readable by group or others (chmod 600)")]
    Permissions {
        /// The file.
        path: String,
    },
    /// The key file cannot be read.
    #[error("cannot read cluster key file {path}: {reason}")]
    Unreadable {
        /// The file.
        path: String,
        /// The I/O error.
        reason: String,
    },
}

/// The cluster keys: the first seals, all of them open.
pub struct Keyring {
    keys: Vec<ClusterKey>,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring")
            .field("key_ids", &self.key_ids())
            .finish()
    }
}

impl Clone for Keyring {
    fn clone(&self) -> Keyring {
        let raw: Vec<[u8; KEY_LEN]> = self.keys.iter().map(|key| key.raw).collect();
        Keyring::new(&raw).expect("a keyring is never empty")
    }
}

impl Keyring {
    /// A keyring of raw keys, the first one primary.
    pub fn new(keys: &[[u8; KEY_LEN]]) -> Result<Keyring, KeyringError> {
        if keys.is_empty() {
            return Err(KeyringError::Empty);
        }
        Ok(Keyring {
            keys: keys.iter().map(ClusterKey::new).collect(),
        })
    }

    /// Parses the key file's text: one key per line as 64 hex digits, the first primary;
    /// blank lines and `#` comments are skipped.
    pub fn parse(text: &str) -> Result<Keyring, KeyringError> {
        let mut keys = Vec::new();
        for (index, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut key = [0u8; KEY_LEN];
            hex::decode_to_slice(line, &mut key)
                .map_err(|_| KeyringError::Malformed { line: index + 1 })?;
            keys.push(key);
        }
        Keyring::new(&keys)
    }

    /// Reads `cluster.key_file`, which must be readable by its owner only (0600 or stricter).
    pub fn load(path: &Path) -> Result<Keyring, KeyringError> {
        use std::os::unix::fs::PermissionsExt;
        let shown = path.display().to_string();
        let unreadable = |error: std::io::Error| KeyringError::Unreadable {
            path: shown.clone(),
            reason: error.to_string(),
        };
        let metadata = std::fs::metadata(path).map_err(unreadable)?;
        if metadata.permissions().mode() & 0o077 != 0 {
            return Err(KeyringError::Permissions { path: shown });
        }
        let text = std::fs::read_to_string(path).map_err(unreadable)?;
        Keyring::parse(&text)
    }

    /// The keys as the key file writes them (64 hex digits each, the primary first): what the
    /// server hands a node in its bundle. A secret: never log it.
    pub fn to_hex(&self) -> Vec<String> {
        self.keys.iter().map(|key| hex::encode(key.raw)).collect()
    }

    /// A keyring from a bundle's list (as [`Keyring::to_hex`] writes it).
    pub fn from_hex(keys: &[String]) -> Result<Keyring, KeyringError> {
        let mut raw = Vec::with_capacity(keys.len());
        for (index, text) in keys.iter().enumerate() {
            let mut key = [0u8; KEY_LEN];
            hex::decode_to_slice(text.trim(), &mut key)
                .map_err(|_| KeyringError::Malformed { line: index + 1 })?;
            raw.push(key);
        }
        Keyring::new(&raw)
    }

    /// The ids of the keys in use, the primary first.
    pub fn key_ids(&self) -> Vec<KeyId> {
        self.keys.iter().map(|key| key.id).collect()
    }

    fn primary(&self) -> &ClusterKey {
        &self.keys[0]
    }

    fn find(&self, id: KeyId) -> Option<&ClusterKey> {
        self.keys.iter().find(|key| key.id == id)
    }
}

/// Why a datagram was dropped; each reason is its own counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// Shorter than a header and a tag, or of another version.
    #[error("truncated")]
    Truncated,
    /// Sealed under a key this node does not hold.
    #[error("unknown_key")]
    UnknownKey,
    /// The tag does not verify: wrong key, altered or forged.
    #[error("bad_seal")]
    BadSeal,
    /// Sent more than [`MAX_AGE_MS`] from now.
    #[error("stale")]
    Stale,
    /// This sender's counter was already seen, or is behind its window.
    #[error("replayed")]
    Replayed,
    /// Too many senders' windows are kept to start another.
    #[error("too_many_senders")]
    TooManySenders,
}

impl OpenError {
    /// The label of the dropped-datagram counter.
    pub fn reason(&self) -> &'static str {
        match self {
            OpenError::Truncated => "truncated",
            OpenError::UnknownKey => "unknown_key",
            OpenError::BadSeal => "bad_seal",
            OpenError::Stale => "stale",
            OpenError::Replayed => "replayed",
            OpenError::TooManySenders => "too_many_senders",
        }
    }
}

/// One sender's anti-replay window: the highest counter seen and a bitmap of the 64 below it.
#[derive(Debug, Clone, Copy)]
struct ReplayWindow {
    highest: u64,
    seen: u64,
    last_seen_ms: i64,
}

impl ReplayWindow {
    /// Whether `counter` is new; does not record it.
    fn is_new(&self, counter: u64) -> bool {
        if counter > self.highest {
            return true;
        }
        let behind = self.highest - counter;
        behind < WINDOW && self.seen & (1u64 << behind) == 0
    }

    fn record(&mut self, counter: u64, now_ms: i64) {
        if counter > self.highest {
            let shift = counter - self.highest;
            self.seen = if shift >= WINDOW {
                1
            } else {
                (self.seen << shift) | 1
            };
            self.highest = counter;
        } else {
            self.seen |= 1u64 << (self.highest - counter);
        }
        self.last_seen_ms = self.last_seen_ms.max(now_ms);
    }
}

/// Seals outgoing datagrams and opens incoming ones for one node. The sender id is drawn at
/// start, so a restarted node's counters begin a fresh window instead of looking replayed.
pub struct Sealer {
    keyring: Keyring,
    sender: u64,
    counter: u64,
    windows: HashMap<u64, ReplayWindow>,
    random: SystemRandom,
}

impl fmt::Debug for Sealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sealer")
            .field("keyring", &self.keyring)
            .field("sender", &self.sender)
            .finish_non_exhaustive()
    }
}

impl Sealer {
    /// A sealer with a random sender id.
    pub fn new(keyring: Keyring) -> Sealer {
        let random = SystemRandom::new();
        let mut sender = [0u8; 8];
        random.fill(&mut sender).expect("system randomness");
        Sealer {
            keyring,
            sender: u64::from_le_bytes(sender),
            counter: 0,
            windows: HashMap::new(),
            random,
        }
    }

    /// The keyring in use.
    pub fn keyring(&self) -> &Keyring {
        &self.keyring
    }

    /// Replaces the keyring (rotation); replay windows are kept.
    pub fn set_keyring(&mut self, keyring: Keyring) {
        self.keyring = keyring;
    }

    /// Seals `payload` under the primary key, stamped with `now_ms`.
    pub fn seal(&mut self, payload: &[u8], now_ms: i64) -> Vec<u8> {
        self.counter += 1;
        let mut nonce = [0u8; NONCE_LEN];
        self.random.fill(&mut nonce).expect("system randomness");
        let key = self.keyring.primary();
        let mut datagram = Vec::with_capacity(OVERHEAD + payload.len());
        datagram.push(VERSION);
        datagram.extend_from_slice(&key.id.0);
        datagram.extend_from_slice(&self.sender.to_le_bytes());
        datagram.extend_from_slice(&self.counter.to_le_bytes());
        datagram.extend_from_slice(&now_ms.to_le_bytes());
        datagram.extend_from_slice(&nonce);
        debug_assert_eq!(datagram.len(), HEADER_LEN);
        let mut body = payload.to_vec();
        let tag = key
            .aead
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&datagram[..]),
                &mut body,
            )
            .expect("sealing a datagram cannot fail");
        datagram.extend_from_slice(&body);
        datagram.extend_from_slice(tag.as_ref());
        datagram
    }

    /// Opens a datagram received at `now_ms`: checks its seal, its age and its sender's replay
    /// window, and only then hands back the payload.
    pub fn open(&mut self, datagram: &[u8], now_ms: i64) -> Result<Vec<u8>, OpenError> {
        if datagram.len() < OVERHEAD || datagram[0] != VERSION {
            return Err(OpenError::Truncated);
        }
        let field = |from: usize| -> [u8; 8] {
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(&datagram[from..from + 8]);
            bytes
        };
        let key_id = KeyId([datagram[1], datagram[2], datagram[3], datagram[4]]);
        let sender = u64::from_le_bytes(field(5));
        let counter = u64::from_le_bytes(field(13));
        let sent_at = i64::from_le_bytes(field(21));
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&datagram[29..HEADER_LEN]);
        let key = self.keyring.find(key_id).ok_or(OpenError::UnknownKey)?;
        let mut body = datagram[HEADER_LEN..].to_vec();
        let plaintext_len = key
            .aead
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&datagram[..HEADER_LEN]),
                &mut body,
            )
            .map_err(|_| OpenError::BadSeal)?
            .len();
        body.truncate(plaintext_len);
        if now_ms.abs_diff(sent_at) > MAX_AGE_MS.unsigned_abs() {
            return Err(OpenError::Stale);
        }
        self.accept_counter(sender, counter, now_ms)?;
        Ok(body)
    }

    fn accept_counter(&mut self, sender: u64, counter: u64, now_ms: i64) -> Result<(), OpenError> {
        if let Some(window) = self.windows.get_mut(&sender) {
            if !window.is_new(counter) {
                return Err(OpenError::Replayed);
            }
            window.record(counter, now_ms);
            return Ok(());
        }
        if self.windows.len() >= MAX_SENDERS {
            // A window older than MAX_AGE_MS guards nothing: its datagrams are stale anyway.
            self.windows
                .retain(|_, window| now_ms - window.last_seen_ms <= MAX_AGE_MS);
            if self.windows.len() >= MAX_SENDERS {
                return Err(OpenError::TooManySenders);
            }
        }
        let mut window = ReplayWindow {
            highest: 0,
            seen: 0,
            last_seen_ms: now_ms,
        };
        window.record(counter, now_ms);
        self.windows.insert(sender, window);
        Ok(())
    }
}

#[cfg(test)]
mod tests;
