//! What the client knows about the replicas: their base URLs, the cached master, which one
//! answered reads last, and when each last answered or failed.
//!
//! Plain state behind one `std::sync::Mutex`, held only to read or update a few fields, never
//! across an `.await`.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::ClientError;

/// One replica as the client sees it (`replicas()` in the field notes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaStatus {
    /// `host:port` of the replica.
    pub id: String,
    /// Base URL, as configured (no trailing slash).
    pub base_url: String,
    /// Whether it is the cached master.
    pub is_master: bool,
    /// Whether it answered within the healthy window and has not failed since.
    pub is_healthy: bool,
}

#[derive(Debug, Default, Clone)]
struct Contact {
    last_ok: Option<Instant>,
    failing_since: Option<Instant>,
}

#[derive(Debug)]
struct State {
    master: Option<String>,
    preferred_read: usize,
    contacts: Vec<Contact>,
}

/// The replica set: fixed URLs plus mutable knowledge about them.
#[derive(Debug)]
pub(crate) struct Replicas {
    urls: Vec<String>,
    healthy_window: Duration,
    state: Mutex<State>,
}

impl Replicas {
    /// Validates and normalises the base URLs (http or https, no query, no trailing slash).
    pub(crate) fn new(urls: &[String], healthy_window: Duration) -> Result<Replicas, ClientError> {
        if urls.is_empty() {
            return Err(ClientError::Config(
                "no server URL given (at least one replica is needed)".to_owned(),
            ));
        }
        let mut normalised: Vec<String> = Vec::with_capacity(urls.len());
        for url in urls {
            let base = normalise_base_url(url)?;
            if !normalised.contains(&base) {
                normalised.push(base);
            }
        }
        let contacts = vec![Contact::default(); normalised.len()];
        Ok(Replicas {
            urls: normalised,
            healthy_window,
            state: Mutex::new(State {
                master: None,
                preferred_read: 0,
                contacts,
            }),
        })
    }

    /// Every configured base URL, in configured order.
    pub(crate) fn urls(&self) -> &[String] {
        &self.urls
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state stays consistent whatever panicked while holding it: every update is a
        // single field assignment.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The cached master, if any.
    pub(crate) fn master(&self) -> Option<String> {
        self.lock().master.clone()
    }

    /// Caches `url` as the master.
    pub(crate) fn set_master(&self, url: String) {
        let mut state = self.lock();
        match state.master.as_deref() {
            Some(previous) if previous != url => {
                tracing::info!(%previous, master = %url, "[client] master changed");
            }
            Some(_) => {}
            None => tracing::debug!(master = %url, "[client] master found"),
        }
        state.master = Some(url);
    }

    /// Clears the cached master; the next write discovers it again.
    pub(crate) fn forget_master(&self) {
        self.lock().master = None;
    }

    /// Clears the cached master only if it is still `url` (another task may have found a new
    /// one meanwhile).
    pub(crate) fn forget_master_if(&self, url: &str) {
        let mut state = self.lock();
        if state.master.as_deref() == Some(url) {
            tracing::warn!(master = %url, "[client] master failed, forgetting it");
            state.master = None;
        }
    }

    /// The order to try reads in: the replica that answered last, then the others.
    pub(crate) fn read_order(&self) -> Vec<String> {
        let preferred = self.lock().preferred_read % self.urls.len();
        let mut order = Vec::with_capacity(self.urls.len());
        order.extend_from_slice(&self.urls[preferred..]);
        order.extend_from_slice(&self.urls[..preferred]);
        order
    }

    /// Records that `url` answered (any HTTP answer counts); reads start there next time.
    pub(crate) fn mark_ok(&self, url: &str, is_read: bool) {
        let Some(index) = self.urls.iter().position(|known| known == url) else {
            return;
        };
        let mut state = self.lock();
        state.contacts[index] = Contact {
            last_ok: Some(Instant::now()),
            failing_since: None,
        };
        if is_read {
            state.preferred_read = index;
        }
    }

    /// Records a transport failure of `url`.
    pub(crate) fn mark_failed(&self, url: &str) {
        let Some(index) = self.urls.iter().position(|known| known == url) else {
            return;
        };
        let mut state = self.lock();
        let contact = &mut state.contacts[index];
        if contact.failing_since.is_none() {
            contact.failing_since = Some(Instant::now());
        }
    }

    /// The current view of every replica.
    pub(crate) fn statuses(&self) -> Vec<ReplicaStatus> {
        let state = self.lock();
        self.urls
            .iter()
            .zip(&state.contacts)
            .map(|(url, contact)| ReplicaStatus {
                id: replica_id(url),
                base_url: url.clone(),
                is_master: state.master.as_deref() == Some(url.as_str()),
                is_healthy: contact.failing_since.is_none()
                    && contact
                        .last_ok
                        .is_some_and(|last_ok| last_ok.elapsed() < self.healthy_window),
            })
            .collect()
    }
}

/// `http://host:port/` -> `http://host:port`; rejects what is not an http(s) base URL.
pub(crate) fn normalise_base_url(url: &str) -> Result<String, ClientError> {
    let trimmed = url.trim();
    if !trimmed.is_empty() && !trimmed.contains("://") {
        return Err(ClientError::Config(format!(
            "server URL `{trimmed}` must start with http:// or https:// (e.g. http://{trimmed})"
        )));
    }
    let parsed = reqwest::Url::parse(trimmed).map_err(|error| {
        ClientError::Config(format!(
            "server URL `{trimmed}` is not a URL ({error}); expected e.g. http://127.0.0.1:7070"
        ))
    })?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(ClientError::Config(format!(
            "server URL `{trimmed}` must start with http:// or https://"
        )));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(ClientError::Config(format!(
            "server URL `{trimmed}` has no host"
        )));
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(ClientError::Config(format!(
            "server URL `{trimmed}` must not have a query or fragment"
        )));
    }
    Ok(parsed.as_str().trim_end_matches('/').to_owned())
}

/// `host:port` of a base URL, for display.
fn replica_id(base_url: &str) -> String {
    match reqwest::Url::parse(base_url) {
        Ok(url) => match (url.host_str(), url.port_or_known_default()) {
            (Some(host), Some(port)) => format!("{host}:{port}"),
            (Some(host), None) => host.to_owned(),
            _ => base_url.to_owned(),
        },
        Err(_) => base_url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_and_rejects_base_urls() {
        let cases = [
            "http://127.0.0.1:7070",
            "http://127.0.0.1:7070/",
            " https://hydra.example:8443/prefix/ ",
            "127.0.0.1:7070",
            "ftp://x",
            "http://h:1/?a=b",
            "",
        ];
        let actual: Vec<String> = cases
            .iter()
            .map(|case| match normalise_base_url(case) {
                Ok(url) => format!("{case:?} -> {url}"),
                Err(error) => format!("{case:?} -> error: {error}"),
            })
            .collect();
        expect_test::expect![[r#"
            "http://127.0.0.1:7070" -> http://127.0.0.1:7070
            "http://127.0.0.1:7070/" -> http://127.0.0.1:7070
            " https://hydra.example:8443/prefix/ " -> https://hydra.example:8443/prefix
            "127.0.0.1:7070" -> error: invalid client configuration: server URL `127.0.0.1:7070` must start with http:// or https:// (e.g. http://127.0.0.1:7070)
            "ftp://x" -> error: invalid client configuration: server URL `ftp://x` must start with http:// or https://
            "http://h:1/?a=b" -> error: invalid client configuration: server URL `http://h:1/?a=b` must not have a query or fragment
            "" -> error: invalid client configuration: server URL `` is not a URL (relative URL without a base); expected e.g. http://127.0.0.1:7070"#]]
        .assert_eq(&actual.join("\n"));
    }

    #[test]
    fn reads_start_at_the_replica_that_answered_last() {
        let replicas = Replicas::new(
            &[
                "http://a:1".into(),
                "http://b:2".into(),
                "http://c:3".into(),
            ],
            Duration::from_secs(120),
        )
        .unwrap();
        assert_eq!(
            replicas.read_order(),
            ["http://a:1", "http://b:2", "http://c:3"]
        );
        replicas.mark_ok("http://b:2", false);
        assert_eq!(replicas.read_order()[0], "http://a:1");
        replicas.mark_ok("http://c:3", true);
        assert_eq!(
            replicas.read_order(),
            ["http://c:3", "http://a:1", "http://b:2"]
        );
    }

    #[test]
    fn health_and_master_show_in_statuses() {
        let replicas = Replicas::new(
            &[
                "http://a:1/".into(),
                "http://b:2".into(),
                "http://a:1".into(),
            ],
            Duration::from_secs(120),
        )
        .unwrap();
        replicas.mark_ok("http://a:1", true);
        replicas.mark_ok("http://b:2", true);
        replicas.mark_failed("http://b:2");
        replicas.set_master("http://a:1".into());
        let statuses = replicas.statuses();
        assert_eq!(
            statuses,
            [
                ReplicaStatus {
                    id: "a:1".into(),
                    base_url: "http://a:1".into(),
                    is_master: true,
                    is_healthy: true
                },
                ReplicaStatus {
                    id: "b:2".into(),
                    base_url: "http://b:2".into(),
                    is_master: false,
                    is_healthy: false
                }
            ]
        );
        replicas.forget_master_if("http://b:2");
        assert_eq!(replicas.master().as_deref(), Some("http://a:1"));
        replicas.forget_master_if("http://a:1");
        assert_eq!(replicas.master(), None);
    }

    #[test]
    fn no_replica_is_a_configuration_error() {
        assert!(matches!(
            Replicas::new(&[], Duration::from_secs(1)),
            Err(ClientError::Config(_))
        ));
    }
}
