//! `/metrics` as Prometheus scrapes it from a real server: the text parses as the exposition
//! format, and each counter the README names moves by exactly what happened.

use std::collections::BTreeMap;

use reqwest::Method;
use serde_json::json;

use crate::support::{ServerProcess, ServerSetup, call, http};

/// One sample line: `name{label="value",...} number`.
#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A scrape: the samples and the `# TYPE` of each metric family.
#[derive(Debug, Default)]
pub(crate) struct Scrape {
    samples: Vec<Sample>,
    pub(crate) types: BTreeMap<String, String>,
}

impl Scrape {
    /// The value of `name` with exactly `labels`, 0 when the series does not exist yet (a
    /// counter that never moved is not exported).
    pub(crate) fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let wanted: BTreeMap<String, String> = labels
            .iter()
            .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
            .collect();
        self.samples
            .iter()
            .find(|sample| sample.name == name && sample.labels == wanted)
            .map_or(0.0, |sample| sample.value)
    }
}

/// Parses the Prometheus text exposition format (the subset an exporter writes: `# TYPE` and
/// `# HELP` comments, samples with optional labels, no timestamps); panics naming the line that
/// does not parse.
fn parse(text: &str) -> Scrape {
    let mut scrape = Scrape::default();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let words: Vec<&str> = comment.split_whitespace().collect();
            if let ["TYPE", family, kind] = words.as_slice() {
                assert!(
                    ["counter", "gauge", "histogram", "summary", "untyped"].contains(kind),
                    "line {}: unknown metric type {kind:?}",
                    number + 1
                );
                scrape
                    .types
                    .insert((*family).to_owned(), (*kind).to_owned());
            }
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("line {}: no value: {line:?}", number + 1));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("line {}: value is not a number: {line:?}", number + 1));
        let (name, labels) = match series.split_once('{') {
            None => (series, BTreeMap::new()),
            Some((name, rest)) => {
                let inside = rest
                    .strip_suffix('}')
                    .unwrap_or_else(|| panic!("line {}: unclosed labels: {line:?}", number + 1));
                let labels = inside
                    .split(',')
                    .filter(|pair| !pair.is_empty())
                    .map(|pair| {
                        let (key, quoted) = pair.split_once('=').unwrap_or_else(|| {
                            panic!("line {}: label without '=': {line:?}", number + 1)
                        });
                        let value = quoted
                            .strip_prefix('"')
                            .and_then(|rest| rest.strip_suffix('"'))
                            .unwrap_or_else(|| {
                                panic!("line {}: unquoted label value: {line:?}", number + 1)
                            });
                        (key.to_owned(), value.to_owned())
                    })
                    .collect();
                (name, labels)
            }
        };
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "line {}: bad metric name {name:?}",
            number + 1
        );
        scrape.samples.push(Sample {
            name: name.to_owned(),
            labels,
            value,
        });
    }
    scrape
}

async fn scrape(server: &ServerProcess) -> Scrape {
    scrape_url(&format!("{}/metrics", server.url)).await
}

/// Scrapes `url` without a token, as Prometheus does (neither daemon asks for one).
pub(crate) async fn scrape_url(url: &str) -> Scrape {
    let response = http().get(url).send().await.expect("GET /metrics");
    assert_eq!(response.status(), 200);
    parse(&response.text().await.expect("metrics text"))
}

/// Issue 13: every agent serves `/metrics` too (sessions by state, degraded, heartbeat lag,
/// journal), in the same text format as the server's; both scrapes parse, and the agent's
/// session count follows a session placed through the server.
#[tokio::test]
async fn an_agent_serves_its_metrics_in_the_servers_text_format() {
    let fleet = crate::agent::Fleet::start_with_room(None, 2);
    let mut agent = crate::agent::Agent::start(&fleet, "metrics");
    fleet.wait_worker(&mut agent).await;

    let server = scrape(&fleet.server).await;
    assert!(server.value("hydra_heartbeats_total", &[]) >= 1.0);
    let metrics_url = fleet.agent_url("/metrics");
    let before = scrape_url(&metrics_url).await;
    for (name, kind) in [
        ("hydra_agent_sessions", "gauge"),
        ("hydra_agent_sessions_max", "gauge"),
        ("hydra_agent_degraded", "gauge"),
        ("hydra_agent_heartbeat_lag_seconds", "gauge"),
        ("hydra_agent_uptime_seconds", "gauge"),
    ] {
        assert_eq!(
            before.types.get(name).map(String::as_str),
            Some(kind),
            "{name}: {:?}",
            before.types
        );
    }
    assert_eq!(before.value("hydra_agent_sessions_max", &[]), 2.0);
    assert_eq!(before.value("hydra_agent_degraded", &[]), 0.0);
    assert_eq!(
        before.value("hydra_agent_sessions", &[("state", "running")]),
        0.0
    );
    // The heartbeat interval is 0.5 s: a healthy agent's lag stays far below a minute.
    let lag = before.value("hydra_agent_heartbeat_lag_seconds", &[]);
    assert!((0.0..60.0).contains(&lag), "heartbeat lag {lag}");

    fleet.create_session().await;
    let counted = crate::support::eventually(std::time::Duration::from_secs(20), async || {
        let after = scrape_url(&metrics_url).await;
        after.value("hydra_agent_sessions", &[("state", "running")]) == 1.0
            && after.value("hydra_agent_session_processes", &[]) == 1.0
    })
    .await;
    assert!(
        counted,
        "the agent's metrics never counted the running session"
    );
    drop(agent);
}

#[test]
fn the_parser_reads_the_exposition_format_and_refuses_junk() {
    let scrape = parse(
        "# HELP x_total Things.\n# TYPE x_total counter\nx_total 3\n\
         y{policy=\"quickroute\",z=\"a\"} 2.5\n",
    );
    assert_eq!(scrape.types["x_total"], "counter");
    assert_eq!(scrape.value("x_total", &[]), 3.0);
    assert_eq!(
        scrape.value("y", &[("policy", "quickroute"), ("z", "a")]),
        2.5
    );
    assert_eq!(scrape.value("y", &[("policy", "quickroute")]), 0.0);
    assert!(std::panic::catch_unwind(|| parse("x_total three\n")).is_err());
    assert!(std::panic::catch_unwind(|| parse("x{a=1} 3\n")).is_err());
}

#[tokio::test]
async fn counters_move_by_what_happened() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = ServerProcess::start(&ServerSetup::sqlite(dir.path()));
    let before = scrape(&server).await;

    let enrol = |body: serde_json::Value| {
        let url = server.api("/nodes");
        async move {
            let (status, answer) = call(Method::POST, &url, Some(body)).await;
            assert_eq!(status, 201, "{answer}");
        }
    };
    enrol(
        json!({"id": "b-1", "roles": ["body"], "district": "bxl1", "venue": "v1", "owner": "acme"}),
    )
    .await;
    enrol(
        json!({"id": "h-1", "roles": ["head"], "district": "bxl1", "venue": "v1", "owner": "acme"}),
    )
    .await;
    enrol(
        json!({"id": "h-2", "roles": ["head"], "district": "ams1", "venue": "v9", "owner": "acme"}),
    )
    .await;
    for _ in 0..3 {
        let (status, answer) = call(
            Method::POST,
            &server.api("/nodes/b-1/heartbeat"),
            Some(json!({"idle": true})),
        )
        .await;
        assert_eq!(status, 200, "{answer}");
    }
    for (head, times) in [("h-1", 2), ("h-2", 1)] {
        for _ in 0..times {
            let url = server.api(&format!("/bodies/eligible?head_id={head}"));
            let (status, answer) = call(Method::GET, &url, None).await;
            assert_eq!(status, 200, "{answer}");
        }
    }

    let after = scrape(&server).await;
    let moved = |name: &str, labels: &[(&str, &str)]| {
        after.value(name, labels) - before.value(name, labels)
    };
    assert_eq!(moved("hydra_enrolments_total", &[]), 3.0);
    assert_eq!(moved("hydra_heartbeats_total", &[]), 3.0);
    assert_eq!(
        moved("hydra_eligible_requests_total", &[("policy", "quickroute")]),
        2.0
    );
    assert_eq!(
        moved("hydra_eligible_requests_total", &[("policy", "none")]),
        1.0
    );
    assert_eq!(
        moved(
            "hydra_eligible_requests_total",
            &[("policy", "cross_venue")]
        ),
        0.0
    );
    assert_eq!(after.types["hydra_enrolments_total"], "counter");
    // The fleet's gauges are read from the view when scraped: b-1 heartbeats, the heads never.
    assert_eq!(after.value("hydra_nodes", &[("status", "online")]), 1.0);
    assert_eq!(after.value("hydra_nodes", &[("status", "offline")]), 2.0);
    assert_eq!(
        after.value("hydra_nodes", &[("status", "unreachable")]),
        0.0
    );
    assert_eq!(after.types["hydra_nodes"], "gauge");
    // A head's report of a body it could not reach is counted.
    let url = server.api("/bodies/eligible?head_id=h-2&unreachable=b-1");
    let (status, answer) = call(Method::GET, &url, None).await;
    assert_eq!(status, 200, "{answer}");
    let reported = scrape(&server).await;
    assert_eq!(
        reported.value(
            "hydra_head_probe_reports_total",
            &[("outcome", "unreachable")]
        ) - after.value(
            "hydra_head_probe_reports_total",
            &[("outcome", "unreachable")]
        ),
        1.0
    );
    // Every heartbeat went through the group-commit writer: its batch sizes count them all.
    assert_eq!(
        after.types["hydra_group_commit_batch_size"], "summary",
        "{:?}",
        after.types
    );
    assert_eq!(
        moved(
            "hydra_group_commit_batch_size_sum",
            &[("writer", "heartbeats")]
        ),
        3.0
    );
}
