//! The checks a worker's report passes before the server believes it (issue 7 item 4): its
//! `agent_url` is parsed as a URL and must point at one of the node's enrolled addresses (or a
//! host the operator allowed), and its capacity is capped by the server's
//! `max_sessions_per_worker`. A report that fails is refused whole, so that worker never enters
//! the directory and is never sent a session (nor the Sunshine credentials that come with one).

use std::net::IpAddr;

use hydra_api::WorkerReport;
use hydra_core::trust::{agent_host_allowed, capped_max_sessions};

use crate::error::ApiError;

/// Longest accepted `agent_url`.
const MAX_URL: usize = 2_048;

/// What the server takes from a report that passed the checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedReport {
    /// `scheme://host:port`, nothing else.
    pub agent_url: String,
    /// The reported capacity, capped.
    pub max_sessions: u32,
    /// The reported capacity when it was above the cap.
    pub clamped_from: Option<u32>,
}

/// Checks `report` of worker `id`, enrolled with the addresses `enrolled`, against the server's
/// `cap` and `allowlist` (`agent_url_hosts`).
pub fn check_report(
    id: &str,
    report: &WorkerReport,
    enrolled: &[IpAddr],
    cap: u32,
    allowlist: &[String],
) -> Result<TrustedReport, ApiError> {
    let (host, agent_url) = parse_agent_url(&report.agent_url)?;
    if !agent_host_allowed(&host, enrolled, allowlist) {
        return Err(ApiError::invalid(format!(
            "agent_url host {host} is not an enrolled address of node {id:?} (lan_ip, wg_ip) \
             nor in the server's agent_url_hosts"
        )));
    }
    if report.agent_key.len() < 16 || report.agent_key.len() > 256 {
        return Err(ApiError::invalid("agent_key must be 16 to 256 characters"));
    }
    let (max_sessions, clamped) = capped_max_sessions(report.max_sessions, cap);
    Ok(TrustedReport {
        agent_url,
        max_sessions,
        clamped_from: clamped.then_some(report.max_sessions),
    })
}

/// Applies the checks to the reports loaded from the store at start (stored before these
/// checks existed, or before the operator changed the cap or the allowlist): a report whose
/// host is no longer allowed is dropped (that worker is placed again after its next report,
/// which is checked), a capacity above the cap is clamped. Answers how many were dropped.
pub fn recheck_stored(
    registry: &crate::registry::Registry,
    directory: &crate::workers::WorkerDirectory,
    cap: u32,
    allowlist: &[String],
) -> usize {
    let mut dropped = 0;
    for (id, mut info) in directory.all() {
        let enrolled: Vec<IpAddr> = registry
            .get(&id)
            .map(|node| node.lan_ip.into_iter().chain(node.wg_ip).collect())
            .unwrap_or_default();
        let allowed = parse_agent_url(&info.agent_url)
            .is_ok_and(|(host, _)| agent_host_allowed(&host, &enrolled, allowlist));
        if !allowed {
            tracing::warn!(worker_id = %id, agent_url = %info.agent_url, "[controller] stored worker report names a host that is not allowed; ignored until the worker reports again");
            directory.remove(&id);
            dropped += 1;
        } else if info.max_sessions > cap {
            info.max_sessions = cap;
            directory.put(&id, info);
        }
    }
    dropped
}

/// Parses an agent URL: `http` or `https`, a host, a port, and no user, path, query or
/// fragment. Answers the bare host (an IP without brackets, or a lowercase name) and the URL
/// rebuilt as `scheme://host:port`.
pub fn parse_agent_url(text: &str) -> Result<(String, String), ApiError> {
    if text.len() > MAX_URL {
        return Err(ApiError::invalid(format!(
            "agent_url is longer than {MAX_URL} characters"
        )));
    }
    // The URL parser would silently strip leading and trailing control characters.
    if let Some(character) = hydra_core::text::first_refused(text, hydra_core::text::TextKind::Word)
    {
        return Err(ApiError::invalid(format!(
            "agent_url contains a control character (U+{:04X})",
            u32::from(character)
        )));
    }
    let url = reqwest::Url::parse(text)
        .map_err(|error| ApiError::invalid(format!("agent_url is not a URL: {error}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(ApiError::invalid(
            "agent_url must start with http:// or https://",
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(ApiError::invalid(
            "agent_url must not carry a user or password",
        ));
    }
    if !matches!(url.path(), "" | "/") || url.query().is_some() || url.fragment().is_some() {
        return Err(ApiError::invalid(
            "agent_url must be scheme://host:port with no path, query or fragment",
        ));
    }
    // The URL parser has normalised the host already (IPv4 forms, lowercase names, IPv6 in
    // brackets).
    let shown = url
        .host_str()
        .filter(|host| !host.is_empty())
        .ok_or_else(|| ApiError::invalid("agent_url has no host"))?
        .to_ascii_lowercase();
    let host = shown
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = url
        .port_or_known_default()
        .ok_or_else(|| ApiError::invalid("agent_url has no port"))?;
    Ok((host, format!("{}://{shown}:{port}", url.scheme())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_urls_are_parsed_and_rebuilt_or_refused_naming_the_field() {
        let cases = [
            "http://10.1.0.5:7071",
            "http://10.1.0.5:7071/",
            "https://Worker-1.Example",
            "http://[fd00::5]:7071",
            "http://x\u{0}",
            "ftp://10.1.0.5:21",
            "http://user:secret@10.1.0.5:7071",
            "http://10.1.0.5:7071/api",
            "http://10.1.0.5:7071?next=1",
            "http://10.1.0.5:7071#frag",
            "10.1.0.5:7071",
            "http://",
            "http://10.1.0.5:99999",
        ];
        let out: Vec<String> = cases
            .iter()
            .map(|case| match parse_agent_url(case) {
                Ok((host, url)) => format!("{case} -> {host} {url}"),
                Err(error) => format!("{case} -> 400 {}", error.message),
            })
            .collect();
        assert_eq!(
            out,
            [
                "http://10.1.0.5:7071 -> 10.1.0.5 http://10.1.0.5:7071",
                "http://10.1.0.5:7071/ -> 10.1.0.5 http://10.1.0.5:7071",
                "https://Worker-1.Example -> worker-1.example https://worker-1.example:443",
                "http://[fd00::5]:7071 -> fd00::5 http://[fd00::5]:7071",
                "http://x\u{0} -> 400 agent_url contains a control character (U+0000)",
                "ftp://10.1.0.5:21 -> 400 agent_url must start with http:// or https://",
                "http://user:secret@10.1.0.5:7071 -> 400 agent_url must not carry a user or password",
                "http://10.1.0.5:7071/api -> 400 agent_url must be scheme://host:port with no path, query or fragment",
                "http://10.1.0.5:7071?next=1 -> 400 agent_url must be scheme://host:port with no path, query or fragment",
                "http://10.1.0.5:7071#frag -> 400 agent_url must be scheme://host:port with no path, query or fragment",
                "10.1.0.5:7071 -> 400 agent_url is not a URL: relative URL without a base",
                "http:// -> 400 agent_url is not a URL: empty host",
                "http://10.1.0.5:99999 -> 400 agent_url is not a URL: invalid port number",
            ]
        );
    }

    #[test]
    fn a_report_must_name_an_enrolled_host_and_is_capped() {
        let report = |agent_url: &str, max_sessions: u32| WorkerReport {
            agent_url: agent_url.into(),
            agent_key: "k".repeat(32),
            max_sessions,
            sessions: Vec::new(),
            sequence: None,
            start_timeout_ms: None,
        };
        let enrolled: [IpAddr; 1] = ["10.1.0.5".parse().unwrap()];
        let trusted = check_report(
            "w1",
            &report("http://10.1.0.5:7071", u32::MAX),
            &enrolled,
            64,
            &[],
        )
        .unwrap();
        assert_eq!(
            (trusted.max_sessions, trusted.clamped_from),
            (64, Some(u32::MAX))
        );
        let refused =
            check_report("w1", &report("http://10.9.9.9:7071", 4), &enrolled, 64, &[]).unwrap_err();
        assert!(
            refused.message.contains("agent_url host 10.9.9.9")
                && refused.message.contains("\"w1\""),
            "{}",
            refused.message
        );
        let allowed = check_report(
            "w1",
            &report("http://127.0.0.1:7071", 4),
            &enrolled,
            64,
            &["127.0.0.1".to_owned()],
        )
        .unwrap();
        assert_eq!((allowed.max_sessions, allowed.clamped_from), (4, None));
    }
}
