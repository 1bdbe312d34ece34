//! Health, master discovery and time formatting.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `GET /api/v1/health` of the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// `ok` when the store answers, else `degraded`.
    pub status: String,
    /// Build version.
    pub version: String,
    /// `sqlite` or `postgres`.
    pub storage: String,
    /// The change-feed revision this replica's views reached (reads with `min_revision` up to
    /// it answer at once).
    #[serde(default)]
    pub revision: i64,
    /// How long the views are known to be behind the store, in ms (0: caught up).
    #[serde(default)]
    pub lag_ms: u64,
}

/// The answer header carrying the change-feed revision a client can pass back as
/// [`MIN_REVISION_PARAM`]: after a write, at least that write's revision.
pub const REVISION_HEADER: &str = "x-hydra-revision";

/// The query parameter of any request that makes the replica wait (up to 2 s) until its views
/// reached that revision, else answer 503 naming its lag.
pub const MIN_REVISION_PARAM: &str = "min_revision";

/// The answer header naming the change feed (one per database) its [`REVISION_HEADER`] counts
/// in: revisions of independent servers are not comparable.
pub const FEED_HEADER: &str = "x-hydra-feed";

/// The query parameter that says which feed a [`MIN_REVISION_PARAM`] counts in: a replica of
/// another feed (another database) ignores the `min_revision`.
pub const MIN_REVISION_FEED_PARAM: &str = "min_revision_feed";

/// `GET /api/v1/check-master`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CheckMaster {
    /// Whether the replica answering holds the master lease.
    pub is_master: bool,
    /// Base URL of the master, when known.
    pub master_url: Option<String>,
    /// Replica id of the master, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub master_id: Option<String>,
    /// The master lease's term (grows on every takeover); `None` for a single replica on
    /// SQLite, which holds no lease.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub term: Option<i64>,
    /// The cluster this replica belongs to: the store's id, made once per database, the same on
    /// every replica of one store (the change feed's id, also sent as `X-Hydra-Feed`). An agent
    /// follows only replicas of the cluster it learned first. `None` from older servers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_id: Option<String>,
    /// The answering replica's own id (`--replica-id`), so a client that was given it under
    /// another URL (a hostname, where it advertises an IP) lists it once. `None` from older
    /// servers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica_id: Option<String>,
}

/// One replica in `GET /api/v1/replicas`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ReplicaInfo {
    /// The replica id (`--replica-id`).
    pub id: String,
    /// Its advertised base URL (`--advertise-url`).
    pub base_url: String,
    /// Whether it holds the master lease.
    pub is_master: bool,
    /// Whether its heartbeat row is younger than twice its interval.
    pub is_healthy: bool,
    /// The revision its view reached (the change feed); given for the replica that answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<u64>,
    /// How far its view lags the newest revision, in ms; given for the replica that answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_ms: Option<u64>,
}

/// Now as unix milliseconds: the one clock reading every crate stamps wire times with
/// (`hydra-core` takes time as an argument and never reads it).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or_default()
}

/// Formats unix milliseconds as RFC 3339 UTC with millisecond precision.
pub fn rfc3339(unix_ms: i64) -> String {
    let instant = if unix_ms >= 0 {
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(unix_ms.unsigned_abs())
    } else {
        std::time::UNIX_EPOCH - std::time::Duration::from_millis(unix_ms.unsigned_abs())
    };
    humantime::format_rfc3339_millis(instant).to_string()
}

#[cfg(test)]
mod tests {
    use super::rfc3339;

    #[test]
    fn formats_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_795_392_000_123), "2026-11-23T00:00:00.123Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }
}
