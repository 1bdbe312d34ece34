//! Discovery over real loopback sockets: bodies are 127.0.0.x addresses that listen (reachable)
//! or not (refused) on one port, and a small axum server answers the eligible list from a
//! script and records each query string. Timeouts are covered by the core race's tests and the
//! lab (a loopback connect cannot be made to time out without a firewall).

use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{RawQuery, State};
use axum::routing::get;
use hydra_api::{CostTierWire, EligibleBody, EligibleResponse};
use tokio::net::TcpListener;

use super::*;
use crate::{ClientConfig, RetryPolicy};

#[derive(Default)]
struct Script {
    answers: Vec<EligibleResponse>,
    queries: Vec<String>,
}

/// Serves `answers` one per request (the last one repeats); answers the base URL and the record
/// of query strings.
async fn eligible_server(answers: Vec<EligibleResponse>) -> (String, Arc<Mutex<Script>>) {
    let script = Arc::new(Mutex::new(Script {
        answers,
        queries: Vec::new(),
    }));
    let app = Router::new()
        .route(
            "/api/v1/bodies/eligible",
            get(
                |State(script): State<Arc<Mutex<Script>>>, RawQuery(query): RawQuery| async move {
                    let mut script = script.lock().unwrap();
                    script.queries.push(query.unwrap_or_default());
                    let answer = if script.answers.len() > 1 {
                        script.answers.remove(0)
                    } else {
                        script.answers[0].clone()
                    };
                    axum::Json(answer)
                },
            ),
        )
        .with_state(Arc::clone(&script));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, script)
}

/// A loopback "network": a port shared by every body address, listeners on some of them.
struct Net {
    port: u16,
    _listeners: Vec<std::net::TcpListener>,
}

impl Net {
    /// Listens on `127.0.0.<n>` for every `n` in `reachable`, all on one fresh port.
    fn listening(reachable: &[u8]) -> Net {
        let first = std::net::TcpListener::bind((ip(reachable[0]), 0)).unwrap();
        let port = first.local_addr().unwrap().port();
        let mut listeners = vec![first];
        for n in &reachable[1..] {
            listeners.push(std::net::TcpListener::bind((ip(*n), port)).unwrap());
        }
        Net {
            port,
            _listeners: listeners,
        }
    }
}

fn ip(n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, n))
}

fn body(id: &str, lan: u8, wg: u8) -> EligibleBody {
    EligibleBody {
        id: id.to_owned(),
        name: id.to_owned(),
        district: "bxl1".into(),
        venue: "rupelmonde".into(),
        owner: "acme".into(),
        lan_ip: Some(ip(lan)),
        wg_ip: Some(ip(wg)),
        vram_mb: None,
        idle: true,
        cost_tier: CostTierWire::Owned,
        same_venue: true,
        rtt_ms: None,
        wg_only: false,
    }
}

fn answer(policy: &str, bodies: Vec<EligibleBody>) -> EligibleResponse {
    EligibleResponse {
        // The wire word, as the server sends it.
        policy: serde_json::from_value(serde_json::Value::from(policy)).unwrap(),
        bodies,
    }
}

async fn discoverer(
    answers: Vec<EligibleResponse>,
    net: &Net,
    mode: ProbeMode,
) -> (Discoverer, Arc<Mutex<Script>>) {
    let (url, script) = eligible_server(answers).await;
    let client = Client::new(ClientConfig::new([url]).with_retry(RetryPolicy::once())).unwrap();
    let options = DiscoveryOptions {
        port: net.port,
        ..DiscoveryOptions::default()
    }
    .with_mode(mode);
    (Discoverer::new(client, options), script)
}

/// `body transport ip` of the route, or the error.
fn render(result: &Result<Discovery, DiscoveryError>) -> String {
    match result {
        Ok(found) => {
            let tried: Vec<String> = found
                .tried
                .iter()
                .map(|probes| format!("r{} {}", probes.round, strip_port(&probes.to_string())))
                .collect();
            format!(
                "{} {} {} [{}]",
                found.route.body_id,
                found.route.transport,
                found.route.ip,
                tried.join(" | ")
            )
        }
        Err(error) => strip_port(&error.to_string()),
    }
}

/// Connect times vary; keep the words.
fn strip_port(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find("reached in ") {
        out.push_str(&rest[..at + "reached in ".len()]);
        rest = &rest[at + "reached in ".len()..];
        let digits = rest.find(' ').unwrap_or(rest.len());
        out.push('N');
        rest = &rest[digits..];
    }
    out.push_str(rest);
    out
}

#[tokio::test]
async fn the_sequential_and_concurrent_walks_choose_the_same_route() {
    // 127.0.0.11/12 listen; every other address refuses.
    let net = Net::listening(&[11, 12]);
    let cases: Vec<(&str, Vec<EligibleBody>)> = vec![
        (
            "first body on LAN",
            vec![body("b1", 11, 12), body("b2", 12, 11)],
        ),
        ("LAN refused, WireGuard", vec![body("b1", 21, 12)]),
        (
            "first body dead",
            vec![body("b1", 21, 22), body("b2", 11, 12)],
        ),
        (
            "two dead, then WireGuard",
            vec![body("b1", 21, 22), body("b2", 23, 24), body("b3", 25, 12)],
        ),
    ];
    let mut rendered = String::new();
    for (name, bodies) in cases {
        let mut outcomes = Vec::new();
        for mode in [ProbeMode::Sequential, ProbeMode::Concurrent] {
            let (discoverer, _) =
                discoverer(vec![answer("quickroute", bodies.clone())], &net, mode).await;
            outcomes.push(render(&discoverer.discover("head-1").await));
        }
        assert_eq!(
            outcomes[0], outcomes[1],
            "{name}: sequential and concurrent differ"
        );
        rendered.push_str(&format!("{name}: {}\n", outcomes[0]));
    }
    expect_test::expect![[r#"
        first body on LAN: b1 lan 127.0.0.11 [r1 b1 (LAN 127.0.0.11: reached in N ms; WireGuard 127.0.0.12: not probed)]
        LAN refused, WireGuard: b1 wireguard 127.0.0.12 [r1 b1 (LAN 127.0.0.21: connection refused; WireGuard 127.0.0.12: reached in N ms)]
        first body dead: b2 lan 127.0.0.11 [r1 b1 (LAN 127.0.0.21: connection refused; WireGuard 127.0.0.22: connection refused) | r1 b2 (LAN 127.0.0.11: reached in N ms; WireGuard 127.0.0.12: not probed)]
        two dead, then WireGuard: b3 wireguard 127.0.0.12 [r1 b1 (LAN 127.0.0.21: connection refused; WireGuard 127.0.0.22: connection refused) | r1 b2 (LAN 127.0.0.23: connection refused; WireGuard 127.0.0.24: connection refused) | r1 b3 (LAN 127.0.0.25: connection refused; WireGuard 127.0.0.12: reached in N ms)]
    "#]]
    .assert_eq(&rendered);
}

#[tokio::test]
async fn all_unreachable_asks_again_naming_them_and_reports_times_next() {
    let net = Net::listening(&[11]);
    let first = answer("quickroute", vec![body("b-venue", 21, 22)]);
    let second = answer("cross_venue", vec![body("b-other", 23, 11)]);
    let (discoverer, script) = discoverer(vec![first, second], &net, ProbeMode::Concurrent).await;
    let found = discoverer.discover("head-1").await;
    expect_test::expect![[r#"b-other wireguard 127.0.0.11 [r1 b-venue (LAN 127.0.0.21: connection refused; WireGuard 127.0.0.22: connection refused) | r2 b-other (LAN 127.0.0.23: connection refused; WireGuard 127.0.0.11: reached in N ms)]"#]]
        .assert_eq(&render(&found));
    let found = found.unwrap();
    assert_eq!(found.policy, hydra_api::PolicyWire::CrossVenue);
    // The measured time goes with the next request, then is forgotten.
    let _ = discoverer.discover("head-1").await;
    let queries = script.lock().unwrap().queries.clone();
    assert_eq!(queries[0], "head_id=head-1");
    assert_eq!(queries[1], "head_id=head-1&unreachable=b-venue");
    assert_eq!(
        queries[2],
        format!(
            "head_id=head-1&measured=b-other%3Awireguard%3A{}",
            found.route.rtt_ms
        )
    );
    assert_eq!(queries.len(), 3);
    assert_eq!(discoverer.pending_measurements().len(), 1);
}

#[tokio::test]
async fn nothing_reachable_in_either_answer_names_every_body_tried() {
    let net = Net::listening(&[11]);
    let first = answer("quickroute", vec![body("b1", 21, 22)]);
    let second = answer("cross_venue", vec![body("b2", 23, 24)]);
    let (discoverer, script) = discoverer(vec![first, second], &net, ProbeMode::Concurrent).await;
    let error = discoverer.discover("head-1").await;
    expect_test::expect!["no body is reachable for head head-1: tried b1 (LAN 127.0.0.21: connection refused; WireGuard 127.0.0.22: connection refused), b2 (LAN 127.0.0.23: connection refused; WireGuard 127.0.0.24: connection refused)"]
        .assert_eq(&render(&error));
    assert!(matches!(error, Err(DiscoveryError::NoBodyReachable { .. })));
    assert_eq!(script.lock().unwrap().queries.len(), 2);
}

#[tokio::test]
async fn an_empty_list_is_no_eligible_body_without_a_second_request() {
    let net = Net::listening(&[11]);
    let (discoverer, script) =
        discoverer(vec![answer("none", vec![])], &net, ProbeMode::Concurrent).await;
    let error = discoverer.discover("head-1").await;
    expect_test::expect!["no body is eligible for head head-1 (policy none)"]
        .assert_eq(&render(&error));
    assert_eq!(script.lock().unwrap().queries.len(), 1);
}

#[tokio::test]
async fn a_server_that_does_not_answer_is_a_server_error_and_keeps_pending_times() {
    let client = Client::new(
        ClientConfig::new(["http://127.0.0.1:9".to_owned()]).with_retry(RetryPolicy::once()),
    )
    .unwrap();
    let discoverer = Discoverer::new(client, DiscoveryOptions::default());
    discoverer.report_later([Measurement {
        body_id: "b1".into(),
        transport: Transport::Lan,
        rtt_ms: 2,
    }]);
    let error = discoverer.discover("head-1").await.unwrap_err();
    assert!(matches!(error, DiscoveryError::Server(_)), "{error}");
    assert_eq!(discoverer.pending_measurements().len(), 1);
}

#[tokio::test]
async fn bodies_passed_over_are_named_unreachable_with_the_next_request_once() {
    let net = Net::listening(&[11]);
    let list = answer(
        "quickroute",
        vec![body("b-dead", 21, 22), body("b-live", 11, 12)],
    );
    let without = answer("quickroute", vec![body("b-live", 11, 12)]);
    let (discoverer, script) = discoverer(
        vec![list, without.clone(), without],
        &net,
        ProbeMode::Concurrent,
    )
    .await;
    let first = discoverer.discover("head-1").await.unwrap();
    assert_eq!(first.route.body_id, "b-live");
    assert!(
        discoverer.pending_passed_over("head-2").is_empty(),
        "another head's report"
    );
    let pending = discoverer.pending_passed_over("head-1");
    assert_eq!(
        pending
            .iter()
            .map(|report| report.body_id.as_str())
            .collect::<Vec<_>>(),
        ["b-dead"]
    );
    let second = discoverer.discover("head-1").await.unwrap();
    assert_eq!(
        second.tried.len(),
        1,
        "the second discovery probes b-live alone"
    );
    let _ = discoverer.discover("head-1").await.unwrap();
    let queries = script.lock().unwrap().queries.clone();
    assert_eq!(queries[0], "head_id=head-1");
    assert!(
        queries[1].starts_with("head_id=head-1&unreachable=b-dead&measured=b-live%3Alan%3A"),
        "{}",
        queries[1]
    );
    // Reported once: the third request names no body.
    assert!(!queries[2].contains("unreachable"), "{}", queries[2]);
}

#[tokio::test]
async fn passed_over_bodies_that_leave_nothing_are_asked_for_again_and_old_reports_dropped() {
    let net = Net::listening(&[11]);
    let (discoverer, script) = discoverer(
        vec![
            answer("none", vec![]),
            answer("quickroute", vec![body("b-back", 11, 12)]),
        ],
        &net,
        ProbeMode::Concurrent,
    )
    .await;
    let now = hydra_api::now_ms();
    discoverer.report_passed_over_later(
        "head-1",
        [
            PassedOver {
                body_id: "b-back".into(),
                at_ms: now,
            },
            PassedOver {
                body_id: "b-old".into(),
                at_ms: now - PASSED_OVER_MAX_AGE_MS - 1_000,
            },
        ],
    );
    let found = discoverer.discover("head-1").await.unwrap();
    assert_eq!(found.route.body_id, "b-back");
    let queries = script.lock().unwrap().queries.clone();
    assert_eq!(
        queries,
        ["head_id=head-1&unreachable=b-back", "head_id=head-1"],
        "an empty answer is asked again without the report; a report past the age is not sent"
    );
}

#[test]
fn a_passed_over_report_reads_back_from_its_text() {
    let report = PassedOver {
        body_id: "b-1.x".into(),
        at_ms: 1_700_000_000_123,
    };
    assert_eq!(report.to_string().parse::<PassedOver>(), Ok(report));
    assert!("b-1".parse::<PassedOver>().is_err());
    assert!("@12".parse::<PassedOver>().is_err());
    assert!("b@x".parse::<PassedOver>().is_err());
}
