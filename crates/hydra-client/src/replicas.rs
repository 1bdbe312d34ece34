//! What the client knows about the replicas: their base URLs (the configured seeds, plus those
//! learned from `GET /api/v1/replicas` at run time), the cached master, which one answered reads
//! last, and when each last answered or failed.
//!
//! Plain state behind one `std::sync::Mutex`, held only to read or update a few fields, never
//! across an `.await`.

use std::collections::HashMap;
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

/// What applying a replica list changed: base URLs learned and forgotten (seeds are never
/// forgotten).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplicaChange {
    /// Replicas the client did not know and now asks too.
    pub added: Vec<String>,
    /// Learned replicas the list no longer names (or names as neither healthy nor master).
    pub removed: Vec<String>,
}

#[derive(Debug, Default, Clone)]
struct Contact {
    last_ok: Option<Instant>,
    failing_since: Option<Instant>,
}

#[derive(Debug)]
struct State {
    /// The seeds first, in configured order, then the learned replicas in listed order.
    urls: Vec<String>,
    master: Option<String>,
    preferred_read: Option<String>,
    contacts: HashMap<String, Contact>,
    /// The cluster the client belongs to, once its owner said (see `Client::set_cluster_id`).
    cluster: Option<String>,
    /// Each URL's replica id, as its `check-master` named it.
    ids: HashMap<String, String>,
}

/// The replica set: the configured seeds, the learned replicas, and knowledge about them.
#[derive(Debug)]
pub(crate) struct Replicas {
    seeds: Vec<String>,
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
        let contacts = normalised
            .iter()
            .map(|url| (url.clone(), Contact::default()))
            .collect();
        Ok(Replicas {
            seeds: normalised.clone(),
            healthy_window,
            state: Mutex::new(State {
                urls: normalised,
                master: None,
                preferred_read: None,
                contacts,
                cluster: None,
                ids: HashMap::new(),
            }),
        })
    }

    /// Every known base URL: the configured ones in configured order, then the learned ones.
    pub(crate) fn urls(&self) -> Vec<String> {
        self.lock().urls.clone()
    }

    /// Makes the set the seeds plus `listed` (normalised base URLs, in the order the control
    /// plane lists them): replicas not known yet are added, learned ones not listed any more
    /// are forgotten with what was known of them. Seeds stay whatever the list says, so a
    /// control plane that answers with a wrong list cannot make the client forget its config.
    pub(crate) fn apply_list(&self, listed: &[String]) -> ReplicaChange {
        let wanted = replica_set(&self.seeds, listed);
        let mut state = self.lock();
        let change = ReplicaChange {
            added: wanted
                .iter()
                .filter(|url| !state.urls.contains(url))
                .cloned()
                .collect(),
            removed: state
                .urls
                .iter()
                .filter(|url| !wanted.contains(url))
                .cloned()
                .collect(),
        };
        for url in &change.removed {
            state.contacts.remove(url);
            if state.preferred_read.as_deref() == Some(url.as_str()) {
                state.preferred_read = None;
            }
        }
        for url in &change.added {
            state.contacts.insert(url.clone(), Contact::default());
        }
        state.urls = wanted;
        change
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state stays consistent whatever panicked while holding it: every update is a
        // single field assignment.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The cluster replicas must belong to, if known.
    pub(crate) fn cluster(&self) -> Option<String> {
        self.lock().cluster.clone()
    }

    /// Sets the cluster replicas must belong to.
    pub(crate) fn set_cluster(&self, cluster: Option<String>) {
        self.lock().cluster = cluster;
    }

    /// Records that `url` answered as replica `id`.
    pub(crate) fn note_id(&self, url: &str, id: &str) {
        let mut state = self.lock();
        if state.ids.get(url).map(String::as_str) != Some(id) {
            state.ids.insert(url.to_owned(), id.to_owned());
        }
    }

    /// Whether a configured replica other than `url` answered as replica `id`: a list row for
    /// `id` at `url` is then the same replica under another name (an advertised IP where the
    /// configuration names a host), not one to add.
    pub(crate) fn seed_is(&self, id: &str, url: &str) -> bool {
        let state = self.lock();
        self.seeds
            .iter()
            .any(|seed| seed != url && state.ids.get(seed).map(String::as_str) == Some(id))
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
        let state = self.lock();
        let preferred = state
            .preferred_read
            .as_ref()
            .and_then(|preferred| state.urls.iter().position(|url| url == preferred))
            .unwrap_or(0);
        let mut order = Vec::with_capacity(state.urls.len());
        order.extend_from_slice(&state.urls[preferred..]);
        order.extend_from_slice(&state.urls[..preferred]);
        order
    }

    /// Records that `url` answered (any HTTP answer counts); reads start there next time.
    pub(crate) fn mark_ok(&self, url: &str, is_read: bool) {
        let mut state = self.lock();
        let Some(contact) = state.contacts.get_mut(url) else {
            return;
        };
        *contact = Contact {
            last_ok: Some(Instant::now()),
            failing_since: None,
        };
        if is_read {
            state.preferred_read = Some(url.to_owned());
        }
    }

    /// Records a transport failure of `url`.
    pub(crate) fn mark_failed(&self, url: &str) {
        let mut state = self.lock();
        if let Some(contact) = state.contacts.get_mut(url)
            && contact.failing_since.is_none()
        {
            contact.failing_since = Some(Instant::now());
        }
    }

    /// The current view of every replica.
    pub(crate) fn statuses(&self) -> Vec<ReplicaStatus> {
        let state = self.lock();
        state
            .urls
            .iter()
            .map(|url| {
                let contact = state.contacts.get(url).cloned().unwrap_or_default();
                ReplicaStatus {
                    id: replica_id(url),
                    base_url: url.clone(),
                    is_master: state.master.as_deref() == Some(url.as_str()),
                    is_healthy: contact.failing_since.is_none()
                        && contact
                            .last_ok
                            .is_some_and(|last_ok| last_ok.elapsed() < self.healthy_window),
                }
            })
            .collect()
    }
}

/// The replica set after a list: every seed, in configured order, then each listed URL not
/// already in it, in listed order.
fn replica_set(seeds: &[String], listed: &[String]) -> Vec<String> {
    let mut set = seeds.to_vec();
    for url in listed {
        if !set.contains(url) {
            set.push(url.clone());
        }
    }
    set
}

impl crate::Client {
    /// Learns the replicas a `GET /api/v1/replicas` answer names healthy or master, and forgets
    /// learned ones it no longer names that way; the configured replicas always stay. A URL that
    /// cannot be reached from elsewhere (no host, `0.0.0.0`) is skipped.
    /// A row whose replica id a configured replica already answered with (under another URL:
    /// a hostname, where the replica advertises an IP) is that replica, not one more.
    pub fn apply_replica_list(&self, listed: &[hydra_api::ReplicaInfo]) -> ReplicaChange {
        let others: Vec<hydra_api::ReplicaInfo> = listed
            .iter()
            .filter(|row| {
                let url = normalise_base_url(&row.base_url).unwrap_or_default();
                !self.replicas.seed_is(&row.id, &url)
            })
            .cloned()
            .collect();
        self.replicas.apply_list(&learnable(&others))
    }
}

/// The base URLs of a `GET /api/v1/replicas` answer worth asking: rows healthy or master,
/// normalised; a URL that is not http(s) or names an unspecified host (a replica advertising
/// its `0.0.0.0` listen address) is skipped with a WARN, since no one else reaches it there.
pub(crate) fn learnable(listed: &[hydra_api::ReplicaInfo]) -> Vec<String> {
    listed
        .iter()
        .filter(|row| row.is_healthy || row.is_master)
        .filter_map(|row| {
            let reachable = normalise_base_url(&row.base_url).and_then(|url| {
                match reqwest::Url::parse(&url).ok().and_then(|parsed| {
                    parsed
                        .host_str()
                        .map(|host| host.trim_matches(['[', ']']).parse::<std::net::IpAddr>())
                }) {
                    Some(Ok(ip)) if ip.is_unspecified() => Err(ClientError::Config(format!(
                        "replica URL `{url}` names an unspecified address"
                    ))),
                    _ => Ok(url),
                }
            });
            match reachable {
                Ok(url) => Some(url),
                Err(error) => {
                    tracing::warn!(replica = %row.id, %error, "[client] not learning a listed replica");
                    None
                }
            }
        })
        .collect()
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
    fn a_list_adds_replicas_and_forgets_learned_ones_never_seeds() {
        let replicas =
            Replicas::new(&["http://a:1".into()], Duration::from_secs(120)).expect("a seed");
        let mut trace = Vec::new();
        for listed in [
            vec!["http://a:1", "http://b:2"],
            vec!["http://b:2", "http://c:3"],
            vec!["http://c:3"],
            vec![],
        ] {
            let listed: Vec<String> = listed.into_iter().map(str::to_owned).collect();
            let change = replicas.apply_list(&listed);
            trace.push(format!(
                "{listed:?} -> {:?} (added {:?}, removed {:?})",
                replicas.urls(),
                change.added,
                change.removed
            ));
        }
        expect_test::expect![[r#"
            ["http://a:1", "http://b:2"] -> ["http://a:1", "http://b:2"] (added ["http://b:2"], removed [])
            ["http://b:2", "http://c:3"] -> ["http://a:1", "http://b:2", "http://c:3"] (added ["http://c:3"], removed [])
            ["http://c:3"] -> ["http://a:1", "http://c:3"] (added [], removed ["http://b:2"])
            [] -> ["http://a:1"] (added [], removed ["http://c:3"])"#]]
        .assert_eq(&trace.join("\n"));
    }

    #[test]
    fn a_learned_replica_is_asked_and_its_health_forgotten_with_it() {
        let replicas =
            Replicas::new(&["http://a:1".into()], Duration::from_secs(120)).expect("a seed");
        replicas.apply_list(&["http://b:2".into()]);
        replicas.mark_ok("http://b:2", true);
        assert_eq!(replicas.read_order(), ["http://b:2", "http://a:1"]);
        assert!(replicas.statuses()[1].is_healthy);
        replicas.apply_list(&[]);
        assert_eq!(replicas.read_order(), ["http://a:1"]);
        replicas.mark_ok("http://b:2", true);
        assert_eq!(
            replicas.statuses().len(),
            1,
            "a forgotten replica is not marked"
        );
        replicas.apply_list(&["http://b:2".into()]);
        assert!(
            !replicas.statuses()[1].is_healthy,
            "learned again, it starts unknown"
        );
    }

    #[test]
    fn only_healthy_or_master_rows_at_reachable_urls_are_learned() {
        let row =
            |id: &str, base_url: &str, is_master: bool, is_healthy: bool| hydra_api::ReplicaInfo {
                id: id.into(),
                base_url: base_url.into(),
                is_master,
                is_healthy,
                revision: None,
                lag_ms: None,
            };
        let listed = [
            row("r1", "http://10.0.0.1:7070/", true, true),
            row("r2", "http://10.0.0.2:7070", false, true),
            row("r3", "http://10.0.0.3:7070", false, false),
            row("r4", "http://10.0.0.4:7070", true, false),
            row("r5", "http://0.0.0.0:7070", false, true),
            row("r6", "http://[::]:7070", false, true),
            row("r7", "10.0.0.7:7070", false, true),
            row("r8", "https://hydra-8.example", false, true),
        ];
        expect_test::expect![[r#"
            [
                "http://10.0.0.1:7070",
                "http://10.0.0.2:7070",
                "http://10.0.0.4:7070",
                "https://hydra-8.example",
            ]
        "#]]
        .assert_debug_eq(&learnable(&listed));
    }

    #[test]
    fn no_replica_is_a_configuration_error() {
        assert!(matches!(
            Replicas::new(&[], Duration::from_secs(1)),
            Err(ClientError::Config(_))
        ));
    }
}
