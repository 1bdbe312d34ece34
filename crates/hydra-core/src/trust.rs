//! What the server believes of a worker's report about itself: its capacity is capped by the
//! server, and the address it gives for its agent must be one the node was enrolled with (or one
//! the operator allowed), so a node token cannot point the server (and the browsers it proxies,
//! and the Sunshine credentials it forwards) at an arbitrary host.

use std::net::IpAddr;

/// The reported capacity as the server uses it: at most `cap`. Answers the capacity and whether
/// the report was above the cap (a clamp, not a refusal: the worker's live sessions stay known).
pub fn capped_max_sessions(reported: u32, cap: u32) -> (u32, bool) {
    (reported.min(cap), reported > cap)
}

/// Whether an agent URL's `host` (an IP address without brackets, or a DNS name) may be used
/// for a node enrolled with `enrolled` addresses (its `lan_ip` and `wg_ip`): it must be one of
/// them, or be named by an `allowlist` entry (an IP address, or a name compared without case).
pub fn agent_host_allowed(host: &str, enrolled: &[IpAddr], allowlist: &[String]) -> bool {
    match host.parse::<IpAddr>() {
        Ok(ip) => {
            enrolled.contains(&ip)
                || allowlist
                    .iter()
                    .any(|entry| entry.trim().parse::<IpAddr>() == Ok(ip))
        }
        Err(_) => allowlist
            .iter()
            .any(|entry| entry.trim().eq_ignore_ascii_case(host)),
    }
}

#[cfg(test)]
mod tests;
