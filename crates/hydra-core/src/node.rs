//! A node of the fleet (body, worker, head or several) and the facts derived from it.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// Unix time in milliseconds; the only notion of time in the core.
pub type UnixMillis = i64;

/// What a node does in the fleet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// A GPU host running a streaming server.
    Body,
    /// A relay node running browser-stream sessions.
    Worker,
    /// A client screen that streams from one body.
    Head,
}

impl Role {
    /// Every role, in display order.
    pub const ALL: [Role; 3] = [Role::Body, Role::Worker, Role::Head];

    /// The fleet's word for the role.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Body => "body",
            Role::Worker => "worker",
            Role::Head => "head",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = UnknownWord;
    fn from_str(word: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|role| role.as_str() == word)
            .ok_or_else(|| UnknownWord::new(word, "body, worker, head"))
    }
}

/// A set of roles; small and `Copy` so it can live inside hot-path structs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct Roles {
    bits: u8,
}

impl Roles {
    /// The empty set.
    pub const NONE: Roles = Roles { bits: 0 };

    fn bit(role: Role) -> u8 {
        match role {
            Role::Body => 1,
            Role::Worker => 2,
            Role::Head => 4,
        }
    }

    /// The set with `role` added.
    pub fn with(self, role: Role) -> Roles {
        Roles {
            bits: self.bits | Roles::bit(role),
        }
    }

    /// Whether `role` is in the set.
    pub fn contains(self, role: Role) -> bool {
        self.bits & Roles::bit(role) != 0
    }

    /// Whether the set is empty.
    pub fn is_empty(self) -> bool {
        self.bits == 0
    }

    /// The roles in the set, in display order.
    pub fn iter(self) -> impl Iterator<Item = Role> {
        Role::ALL
            .into_iter()
            .filter(move |role| self.contains(*role))
    }
}

impl FromIterator<Role> for Roles {
    fn from_iter<I: IntoIterator<Item = Role>>(iter: I) -> Self {
        iter.into_iter().fold(Roles::NONE, Roles::with)
    }
}

impl fmt::Display for Roles {
    /// Comma-separated role words, as stored and as shown in tables.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let words: Vec<&str> = self.iter().map(Role::as_str).collect();
        f.write_str(&words.join(","))
    }
}

impl FromStr for Roles {
    type Err = UnknownWord;
    /// Parses the comma-separated form written by `Display`; the empty string is the empty set.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        text.split(',')
            .map(str::trim)
            .filter(|word| !word.is_empty())
            .map(Role::from_str)
            .collect()
    }
}

/// Who pays for a body, cheapest first; cross-venue ranking breaks latency ties with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum CostTier {
    /// The organisation's own hardware.
    #[default]
    Owned,
    /// Shared between organisations under an agreement.
    Shared,
    /// Rented.
    Leased,
    /// Bought per use on the marketplace.
    Marketplace,
}

impl CostTier {
    /// Every tier, cheapest first.
    pub const ALL: [CostTier; 4] = [
        CostTier::Owned,
        CostTier::Shared,
        CostTier::Leased,
        CostTier::Marketplace,
    ];

    /// The fleet's word for the tier.
    pub fn as_str(self) -> &'static str {
        match self {
            CostTier::Owned => "owned",
            CostTier::Shared => "shared",
            CostTier::Leased => "leased",
            CostTier::Marketplace => "marketplace",
        }
    }
}

impl fmt::Display for CostTier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for CostTier {
    type Err = UnknownWord;
    fn from_str(word: &str) -> Result<Self, Self::Err> {
        CostTier::ALL
            .into_iter()
            .find(|tier| tier.as_str() == word)
            .ok_or_else(|| UnknownWord::new(word, "owned, shared, leased, marketplace"))
    }
}

/// How a head reaches a body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// The venue's LAN address.
    Lan,
    /// The WireGuard overlay address.
    Wireguard,
}

impl Transport {
    /// The wire word for the transport.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Lan => "lan",
            Transport::Wireguard => "wireguard",
        }
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Transport {
    type Err = UnknownWord;
    fn from_str(word: &str) -> Result<Self, Self::Err> {
        match word {
            "lan" => Ok(Transport::Lan),
            "wireguard" => Ok(Transport::Wireguard),
            other => Err(UnknownWord::new(other, "lan, wireguard")),
        }
    }
}

/// A word that is not one of the fleet's words for the thing parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownWord {
    /// What was given.
    pub given: String,
    /// The accepted words, comma-separated.
    pub expected: &'static str,
}

impl UnknownWord {
    fn new(given: &str, expected: &'static str) -> Self {
        UnknownWord {
            given: given.to_owned(),
            expected,
        }
    }
}

impl fmt::Display for UnknownWord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown value {:?}, expected one of: {}",
            self.given, self.expected
        )
    }
}

impl std::error::Error for UnknownWord {}

/// Whether a node counts as alive, derived from its last heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeStatus {
    /// Last heartbeat younger than the heartbeat timeout.
    Online,
    /// No heartbeat yet, or the last one is too old.
    Offline,
    /// The peer mesh declared it down and no heartbeat arrived since (issue 11).
    Unreachable,
}

impl NodeStatus {
    /// The wire word for the status.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeStatus::Online => "online",
            NodeStatus::Offline => "offline",
            NodeStatus::Unreachable => "unreachable",
        }
    }
}

/// An enrolled machine and everything the control plane knows of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// Stable identifier (`node-` + 8 hex when generated).
    pub id: String,
    /// Human name; defaults to the id.
    pub name: String,
    /// What the node does.
    pub roles: Roles,
    /// Region; every selection stays inside one.
    pub district: String,
    /// Site inside the district.
    pub venue: String,
    /// Owning organisation.
    pub owner: String,
    /// Other organisations that may use this node.
    pub allowed_orgs: Vec<String>,
    /// Address on the venue LAN.
    pub lan_ip: Option<IpAddr>,
    /// Address on the WireGuard overlay.
    pub wg_ip: Option<IpAddr>,
    /// GPU memory, when known.
    pub vram_mb: Option<u64>,
    /// Who pays for it.
    pub cost_tier: CostTier,
    /// Drained nodes stay enrolled but take no new work.
    pub drained: bool,
    /// Whether the body reported itself idle in its last heartbeat.
    pub idle: bool,
    /// Sessions the node reported in its last heartbeat.
    pub active_sessions: u32,
    /// Time of the last heartbeat, if any.
    pub last_heartbeat: Option<UnixMillis>,
    /// Time of enrolment.
    pub enrolled_at: UnixMillis,
    /// When the peer mesh declared it down (the view's alone, never stored): it counts until a
    /// heartbeat newer than it arrives.
    pub unreachable_since: Option<UnixMillis>,
}

impl Node {
    /// A node with only the fields that have no default set; for tests and enrolment.
    pub fn new(id: impl Into<String>, roles: Roles) -> Node {
        let id = id.into();
        Node {
            name: id.clone(),
            id,
            roles,
            district: String::new(),
            venue: String::new(),
            owner: String::new(),
            allowed_orgs: Vec::new(),
            lan_ip: None,
            wg_ip: None,
            vram_mb: None,
            cost_tier: CostTier::Owned,
            drained: false,
            idle: false,
            active_sessions: 0,
            last_heartbeat: None,
            enrolled_at: 0,
            unreachable_since: None,
        }
    }

    /// Online while the last heartbeat is younger than `heartbeat_timeout_ms`, unless the mesh
    /// declared it down after that heartbeat (then unreachable).
    pub fn status(&self, now: UnixMillis, heartbeat_timeout_ms: i64) -> NodeStatus {
        match self.last_heartbeat {
            Some(at) if now.saturating_sub(at) < heartbeat_timeout_ms => {
                if self.unreachable_since.is_some_and(|since| since >= at) {
                    NodeStatus::Unreachable
                } else {
                    NodeStatus::Online
                }
            }
            _ => NodeStatus::Offline,
        }
    }

    /// The last heartbeat that still counts for health: none while the mesh's mark is newer,
    /// so placement, which judges workers by heartbeat age, skips an unreachable worker too.
    pub fn counted_heartbeat(&self) -> Option<UnixMillis> {
        match (self.last_heartbeat, self.unreachable_since) {
            (Some(at), Some(since)) if since >= at => None,
            (at, _) => at,
        }
    }

    /// Whether `org` may use this node: it owns it or is listed in `allowed_orgs`.
    pub fn usable_by(&self, org: &str) -> bool {
        self.owner == org || self.allowed_orgs.iter().any(|allowed| allowed == org)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_round_trip_through_text() {
        for text in ["", "body", "body,head", "body,worker,head"] {
            let roles: Roles = text.parse().unwrap();
            assert_eq!(roles.to_string(), text);
        }
        assert_eq!(
            "head, body".parse::<Roles>().unwrap().to_string(),
            "body,head"
        );
        let err = "body,gpu".parse::<Roles>().unwrap_err();
        assert_eq!(err.given, "gpu");
    }

    #[test]
    fn cost_tiers_order_cheapest_first() {
        let mut tiers = vec![
            CostTier::Marketplace,
            CostTier::Owned,
            CostTier::Leased,
            CostTier::Shared,
        ];
        tiers.sort();
        assert_eq!(tiers, CostTier::ALL.to_vec());
        assert!("free".parse::<CostTier>().is_err());
    }

    #[test]
    fn status_follows_heartbeat_age() {
        let mut node = Node::new("b", Roles::NONE.with(Role::Body));
        assert_eq!(node.status(1_000, 60_000), NodeStatus::Offline);
        node.last_heartbeat = Some(1_000);
        assert_eq!(node.status(1_000, 60_000), NodeStatus::Online);
        assert_eq!(node.status(60_999, 60_000), NodeStatus::Online);
        assert_eq!(node.status(61_000, 60_000), NodeStatus::Offline);
    }
}
